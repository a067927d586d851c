"""The Triton kernels behind kernels.py (see there): imported on first use, so Triton's
interpreter (TRITON_INTERPRET=1) is chosen by the environment at that moment, not at the
import of the store."""

import triton
import triton.language as tl


@triton.jit
def _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K: tl.constexpr, j: tl.constexpr,
                  pool_ptr, W: tl.constexpr, BW: tl.constexpr, OFF: tl.constexpr,
                  D: tl.constexpr):
    a = tl.load(addr_ptr + src * K + j, mask=rmask, other=-1)
    cols = tl.arange(0, BW)
    m = rmask[:, None] & (cols < W)[None, :]
    v = tl.load(pool_ptr + (a + 1)[:, None] * W + cols[None, :],
                mask=m & (a >= 0)[:, None], other=0.0)
    tl.store(out_ptr + rows[:, None] * D + OFF + cols[None, :], v, mask=m)

@triton.jit
def gather_kernel(out_ptr, addr_ptr, inv_ptr, N, p0, p1, p2, p3, p4, p5, p6, p7,
                   K: tl.constexpr, D: tl.constexpr, HAS_INV: tl.constexpr,
                   W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, W3: tl.constexpr,
                   W4: tl.constexpr, W5: tl.constexpr, W6: tl.constexpr, W7: tl.constexpr,
                   B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr,
                   B4: tl.constexpr, B5: tl.constexpr, B6: tl.constexpr, B7: tl.constexpr,
                   O0: tl.constexpr, O1: tl.constexpr, O2: tl.constexpr, O3: tl.constexpr,
                   O4: tl.constexpr, O5: tl.constexpr, O6: tl.constexpr, O7: tl.constexpr,
                   BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    if HAS_INV:
        src = tl.load(inv_ptr + rows, mask=rmask, other=0)
    else:
        src = rows.to(tl.int64)
    _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 0, p0, W0, B0, O0, D)
    if K > 1:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 1, p1, W1, B1, O1, D)
    if K > 2:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 2, p2, W2, B2, O2, D)
    if K > 3:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 3, p3, W3, B3, O3, D)
    if K > 4:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 4, p4, W4, B4, O4, D)
    if K > 5:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 5, p5, W5, B5, O5, D)
    if K > 6:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 6, p6, W6, B6, O6, D)
    if K > 7:
        _gather_chunk(out_ptr, addr_ptr, src, rows, rmask, K, 7, p7, W7, B7, O7, D)

@triton.jit
def _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K: tl.constexpr,
                   j: tl.constexpr, val_ptr, st_ptr, W: tl.constexpr, BW: tl.constexpr,
                   OFF: tl.constexpr, D: tl.constexpr, ROWWISE: tl.constexpr,
                   NORMS: tl.constexpr):
    cols = tl.arange(0, BW)
    cmask = (cols < W)[None, :]
    g = tl.load(grad_ptr + rows[:, None] * D + OFF + cols[None, :],
                mask=rmask[:, None] & cmask, other=0.0)
    g2 = g * g
    if NORMS:
        tl.store(norms_ptr + rows * K + j, tl.sqrt(tl.sum(g2, axis=1)), mask=rmask)
    a = tl.load(addr_ptr + rows * K + j, mask=rmask, other=-1)
    live = rmask & (a >= 0)
    r = a + 1
    m = live[:, None] & cmask
    step = g * (-lr)
    if ROWWISE:
        s = tl.load(st_ptr + r, mask=live, other=0.0) + tl.sum(g2, axis=1) / W
        tl.store(st_ptr + r, s, mask=live)
        upd = step / (tl.sqrt(s) + eps)[:, None]
    else:
        s = tl.load(st_ptr + r[:, None] * W + cols[None, :], mask=m, other=0.0) + g2
        tl.store(st_ptr + r[:, None] * W + cols[None, :], s, mask=m)
        upd = step / (tl.sqrt(s) + eps)
    v = tl.load(val_ptr + r[:, None] * W + cols[None, :], mask=m, other=0.0)
    tl.store(val_ptr + r[:, None] * W + cols[None, :], v + upd, mask=m)

@triton.jit
def adagrad_kernel(grad_ptr, addr_ptr, norms_ptr, N, lr, eps,
                    v0, v1, v2, v3, v4, v5, v6, v7, s0, s1, s2, s3, s4, s5, s6, s7,
                    K: tl.constexpr, D: tl.constexpr, ROWWISE: tl.constexpr,
                    NORMS: tl.constexpr,
                    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, W3: tl.constexpr,
                    W4: tl.constexpr, W5: tl.constexpr, W6: tl.constexpr, W7: tl.constexpr,
                    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr,
                    B4: tl.constexpr, B5: tl.constexpr, B6: tl.constexpr, B7: tl.constexpr,
                    O0: tl.constexpr, O1: tl.constexpr, O2: tl.constexpr, O3: tl.constexpr,
                    O4: tl.constexpr, O5: tl.constexpr, O6: tl.constexpr, O7: tl.constexpr,
                    BLOCK: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    rmask = rows < N
    _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 0, v0, s0, W0,
                   B0, O0, D, ROWWISE, NORMS)
    if K > 1:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 1, v1, s1,
                       W1, B1, O1, D, ROWWISE, NORMS)
    if K > 2:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 2, v2, s2,
                       W2, B2, O2, D, ROWWISE, NORMS)
    if K > 3:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 3, v3, s3,
                       W3, B3, O3, D, ROWWISE, NORMS)
    if K > 4:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 4, v4, s4,
                       W4, B4, O4, D, ROWWISE, NORMS)
    if K > 5:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 5, v5, s5,
                       W5, B5, O5, D, ROWWISE, NORMS)
    if K > 6:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 6, v6, s6,
                       W6, B6, O6, D, ROWWISE, NORMS)
    if K > 7:
        _adagrad_chunk(grad_ptr, addr_ptr, norms_ptr, rows, rmask, lr, eps, K, 7, v7, s7,
                       W7, B7, O7, D, ROWWISE, NORMS)


@triton.jit
def _srl(x, s: tl.constexpr):
    """Logical right shift of int64 bits (>> is arithmetic on signed integers)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


@triton.jit
def probe_kernel(table_ptr, keys_ptr, fields_ptr, qf_ptr, qk_ptr, out_ptr, N, tmask,
                 GOLDEN: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
                 BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    k = tl.load(qk_ptr + i, mask=m, other=0)
    f = tl.load(qf_ptr + i, mask=m, other=0).to(tl.int64)
    x = k ^ ((f + 1) * GOLDEN)  # device_index.mix64_t, bit for bit
    x = (x ^ _srl(x, 30)) * C1
    x = (x ^ _srl(x, 27)) * C2
    x = x ^ _srl(x, 31)
    pos = x & tmask
    res = tl.full([BLOCK], -1, tl.int64)
    active = m
    while tl.max(active.to(tl.int32), axis=0) > 0:  # linear probing until a hit or EMPTY
        v = tl.load(table_ptr + pos, mask=active, other=-1).to(tl.int64)
        safe = tl.maximum(v, 0)
        kk = tl.load(keys_ptr + safe, mask=active & (v >= 0), other=0)
        ff = tl.load(fields_ptr + safe, mask=active & (v >= 0), other=0).to(tl.int64)
        hit = active & (v >= 0) & (kk == k) & (ff == f)
        res = tl.where(hit, v, res)
        active = active & ~hit & (v != -1)
        pos = (pos + 1) & tmask
    tl.store(out_ptr + i, res, mask=m)
