"""Fused Triton kernels for the chunk store's hot loops on a GPU (StoreConfig.kernels =
"triton"): the index's probe, the chunked gather and the chunked Adagrad update.

In torch ops a FIITED step reads K pools with K gathers, a concatenation and one more gather
to expand unique entries to the batch's rows, and updates them with ~13 ops a pool (masked
Adagrad) plus 3 for the chunk norms the utilities need: launches that a GPU step waits on
(bench/gpu_store.py --only launches counts them). Here each is one kernel:

    gather(pools, addr, inverse)        out[n] = concat_j pool_j[addr[inverse[n], j]], one
                                        launch for all K pools; address -1 reads zeros
    probe(index, fields, keys)          the hash index's lookup: hash and linear probing
                                        until a hit or an EMPTY cell, no round trips
    adagrad(pools, grad, addr, lr, eps, norms=True)
                                        per unique entry u and chunk j: ||grad[u, chunk j]||
                                        into norms[u, j], and where addr[u, j] >= 0 Adagrad
                                        (full or row-wise, as the pool's optimizer) on its
                                        chunk, as ChunkPool.adagrad_step_masked computes it

Entries in one call are distinct, so no two programs touch one chunk: no atomics. A kernel
takes up to MAX_CHUNKS pools (their pointers as separate arguments, unused ones repeat pool
0) and each chunk width as a compile-time constant; the kernels themselves are in
kernels_triton.py, imported at the first call. Triton's interpreter (TRITON_INTERPRET=1)
runs these on the CPU, which is how the tests check them against the torch path; `available`
says whether they can run on a device.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from storage.splitmix import SIGNED_CONSTANTS

MAX_CHUNKS = 8
BLOCK_ROWS = 64


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(device: torch.device) -> bool:
    """Whether the kernels can run for tensors on `device`: triton installed, and a CUDA
    device or Triton's interpreter (TRITON_INTERPRET=1, CPU tensors)."""
    if not _has_triton():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreted())


def require(device: torch.device) -> bool:
    """True, or ValueError saying why the kernels cannot run on `device`."""
    if not _has_triton():
        raise ValueError("kernels=triton needs the triton package (pip install triton)")
    if not available(device):
        raise ValueError("kernels=triton runs on a CUDA device (or on the CPU under "
                         f"TRITON_INTERPRET=1), not on {device.type}")
    return True


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _layout(widths: tuple[int, ...]) -> dict[str, int]:
    """The kernels' compile-time constants: W (width), B (its power-of-two block) and O
    (offset in D) of each chunk position; positions past K repeat chunk 0's."""
    if not 1 <= len(widths) <= MAX_CHUNKS:
        raise ValueError(f"the fused kernels take 1..{MAX_CHUNKS} chunks, got {len(widths)}")
    consts: dict[str, int] = {}
    offset = 0
    for j in range(MAX_CHUNKS):
        w = widths[j] if j < len(widths) else widths[0]
        consts[f"W{j}"], consts[f"B{j}"] = w, _next_pow2(w)
        consts[f"O{j}"] = offset if j < len(widths) else 0
        offset += w if j < len(widths) else 0
    return consts


def _padded(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return ts + [ts[0]] * (MAX_CHUNKS - len(ts))


def gather(pools: list[Any], addr: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:
    """float32[N, D]: row n holds entry inverse[n]'s chunks (entry n's without `inverse`),
    chunk j read from pools[j] at address addr[., j] (-1: zeros). addr int64[U, K]."""
    widths = tuple(p.chunk_dim for p in pools)
    D = sum(widths)
    addr = addr.contiguous()
    n = addr.shape[0] if inverse is None else inverse.numel()
    out = torch.empty(n, D, dtype=torch.float32, device=addr.device)
    if n == 0:
        return out
    inv = addr if inverse is None else inverse.contiguous()
    values = _padded([p.values for p in pools])
    from storage.vhpi import kernels_triton as tk

    tk.gather_kernel[(-(-n // BLOCK_ROWS),)](
        out, addr, inv, n, *values, K=len(pools), D=D, HAS_INV=inverse is not None,
        BLOCK=BLOCK_ROWS, **_layout(widths))
    return out


def adagrad(pools: list[Any], grad: torch.Tensor, addr: torch.Tensor, lr: float, eps: float,
            norms: bool) -> torch.Tensor | None:
    """Adagrad on every live chunk of U distinct entries (grad float32[U, D], addr
    int64[U, K]) and, with `norms`, the L2 norm of each chunk's gradient: float32[U, K]."""
    widths = tuple(p.chunk_dim for p in pools)
    U, K = addr.shape
    out = torch.empty(U, K, dtype=torch.float32, device=addr.device) if norms else None
    if U == 0:
        return out
    grad, addr = grad.contiguous(), addr.contiguous()
    vals = _padded([p.values for p in pools])
    states = _padded([p.state for p in pools])
    from storage.vhpi import kernels_triton as tk

    tk.adagrad_kernel[(-(-U // BLOCK_ROWS),)](
        grad, addr, out if out is not None else grad, U, float(lr), float(eps), *vals, *states,
        K=K, D=sum(widths), ROWWISE=pools[0].optimizer == "rowwise_adagrad", NORMS=norms,
        BLOCK=BLOCK_ROWS, **_layout(widths))
    return out


def probe(index: Any, fields: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """DeviceHashIndex.lookup in one launch (the hash and every probe round): int16[N] fields,
    int64[N] keys -> int64[N] entry slots, -1 where absent."""
    from storage.vhpi import kernels_triton as tk

    golden, c1, c2 = SIGNED_CONSTANTS
    n = keys.numel()
    out = torch.empty(n, dtype=torch.int64, device=keys.device)
    if n:
        tk.probe_kernel[(-(-n // 256),)](
            index.table, index.keys, index.fields, fields.contiguous(), keys.contiguous(), out,
            n, index.table.numel() - 1, GOLDEN=golden, C1=c1, C2=c2, BLOCK=256)
    return out
