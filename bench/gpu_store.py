"""The chunk store on a GPU against torch's sparse nn.Embedding, side by side in one run.

    PYTHONPATH=$PWD python bench/gpu_store.py [--steps 60] [--vocab 1000000] [--batch 8192]

Same model (DLRM: 13 dense features, F = 26 fields, D = 64), same optimizer (full Adagrad on
the embeddings, as torch.optim.Adagrad does on sparse gradients; Adam on the network), same
batches (Zipf-like IDs, `vocab` a field, generated on the GPU). Rows:

- torch: nn.Embedding(F x vocab, 64, sparse=True) + torch.optim.Adagrad: the anchor;
- fixed:64 on the chunk store (K = 1, no budget), fiited:budget=0.25 (widths 4-4-8-16-32),
  and with Triton where it runs: fiited's gather and Adagrad as fused kernels (kernels=triton).

For each: samples/s of the whole training step, of the embedding layer alone (lookup,
backward through a near-free model, update), bytes held, and the embedding layer's share of
the HBM bandwidth, counted as torch's fixed-64 layer moves it (26 rows x 256 B read, the
gradient written and read, Adagrad state read and written: ~26 KB a sample). Then a per-phase
breakdown of one FIITED step, and the hash index's lookups/s: numpy on the host vs torch on
the GPU. Policies take turns, round by round; the best round of each is reported.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from models.networks import build_model
from models.policies.registry import parse_policy
from storage.batch import DatasetSchema
from storage.vhpi import kernels
from storage.vhpi.device_index import DeviceHashIndex, splitmix64_t
from storage.vhpi.hash_index import HashIndex

HBM_BYTES_S = 4.8e12
DENSE = 13
FIITED = "fiited:budget=0.25,optimizer=adagrad,max_bytes=none"
DEVICE = "cuda"  # --device cpu: a smoke test of this script on a machine without a GPU


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_batches(n: int, batch: int, fields: int, vocab: int, seed: int = 0):
    """Zipf-like (log-uniform rank, ~Zipf(1)) IDs, hashed to spread int64 keys; dense
    features and labels. All on the GPU."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    out = []
    for _ in range(n):
        u = torch.rand(batch, fields, device=DEVICE, generator=gen)
        rank = torch.exp(u * np.log(vocab + 1.0)).long() - 1  # 0..vocab-1, P(r) ~ 1/(r+1)
        ids = splitmix64_t(rank.clamp(max=vocab - 1))
        dense = torch.rand(batch, DENSE, device=DEVICE, generator=gen)
        labels = (torch.rand(batch, device=DEVICE, generator=gen) < 0.25).float()
        out.append((rank.clamp(max=vocab - 1), ids, dense, labels))
    return out


class SumModel(torch.nn.Module):
    """Near-free: the table shows the embedding layer's own cost."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out = torch.nn.Linear(dim, 1)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(emb.sum(dim=1)).squeeze(1)


class TorchSparse:
    """The anchor: one nn.Embedding(F x vocab, D, sparse=True), torch.optim.Adagrad."""

    def __init__(self, fields: int, vocab: int, dim: int) -> None:
        self.vocab, self.fields = vocab, fields
        self.table = torch.nn.Embedding(fields * vocab, dim, sparse=True, device=DEVICE)
        torch.nn.init.normal_(self.table.weight, 0.0, 0.01)
        self.opt = torch.optim.Adagrad(self.table.parameters(), lr=0.05)
        self.offsets = torch.arange(fields, device=DEVICE) * vocab

    def lookup(self, rank: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.table(rank + self.offsets)

    def apply(self) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def nbytes(self) -> int:
        state = self.opt.state[self.table.weight]
        return self.table.weight.nbytes + sum(
            t.nbytes for t in state.values() if isinstance(t, torch.Tensor))


class StorePolicy:
    def __init__(self, spec: str, fields: int) -> None:
        self.policy = parse_policy(spec, fields, seed=0, device=DEVICE)

    def lookup(self, rank: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.policy.lookup(ids, train=True)

    def apply(self) -> None:
        self.policy.apply_gradients()

    def nbytes(self) -> int:
        return self.policy.memory().total_bytes


def run_pass(emb_layer, model, opt, batches) -> float:
    """samples/s of one pass: lookup, forward, backward, dense step, embedding update."""
    sync()
    t = time.perf_counter()
    for rank, ids, dense, labels in batches:
        emb = emb_layer.lookup(rank, ids)
        loss = F.binary_cross_entropy_with_logits(model(emb, dense), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        emb_layer.apply()
    sync()
    return len(batches) * batches[0][0].shape[0] / (time.perf_counter() - t)


def speed_table(args, schema, batches, warm) -> None:
    # max_bytes=none: no entry limit, as the torch table holds every ID
    specs = ["torch", "fixed:64,optimizer=adagrad,max_bytes=none",
             FIITED]
    if kernels.available(torch.device(DEVICE)):  # the fused Triton kernels beside torch ops
        specs.append(FIITED + ",kernels=triton")
    for model_name in ("dlrm", "none"):
        rows = []
        for spec in specs:
            layer = (TorchSparse(args.fields, args.vocab, 64) if spec == "torch"
                     else StorePolicy(spec, args.fields))
            model = (SumModel(64) if model_name == "none"
                     else build_model("dlrm", schema, 64, seed=0)).to(DEVICE)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            t = time.perf_counter()
            run_pass(layer, model, opt, warm)  # inserts the vocabulary, grows the tables
            print(f"  [{model_name}] {spec}: warm-up pass {time.perf_counter() - t:.1f}s",
                  flush=True)
            rows.append([spec, layer, model, opt, []])
        for _ in range(args.rounds):
            for r in rows:
                r[4].append(run_pass(r[1], r[2], r[3], batches))
        base = max(rows[0][4])
        fixed_bytes = rows[1][1].nbytes()
        title = "whole step (DLRM)" if model_name == "dlrm" else "embedding layer alone"
        print(f"\n{title}: F={args.fields}, D=64, {args.vocab:,} IDs a field, batch "
              f"{args.batch}, best of {args.rounds} interleaved passes of {len(batches)} steps")
        print(f"{'policy':40s} {'samples/s':>12s} {'vs torch':>9s} {'bytes held':>12s} "
              f"{'vs fixed:64':>11s} {'HBM share':>9s}")
        for spec, layer, _, _, rates in rows:
            best = max(rates)
            hbm = best * args.fields * 1024 / HBM_BYTES_S  # ~1 KB a row: see docstring
            print(f"{spec:40s} {best:12,.0f} {best / base:8.2f}x {layer.nbytes() / 1e6:10,.0f}MB "
                  f"{layer.nbytes() / fixed_bytes:10.2f}x {hbm:8.1%}", flush=True)
        for r in rows:
            r[1] = r[2] = r[3] = None
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def phase_breakdown(args, batches, warm) -> None:
    """Where a FIITED step's time goes (each phase synchronised, so slightly pessimistic)."""
    pol = parse_policy(FIITED + f",kernels={args.kernels}", args.fields, seed=0,
                       device=DEVICE)
    model = SumModel(64).to(DEVICE)
    for _rank, ids, _, labels in warm:
        emb = pol.lookup(ids, train=True)
        F.binary_cross_entropy_with_logits(model(emb), labels).backward()
        pol.apply_gradients()
    store = pol.store
    phases = {"index lookup": 0.0, "lookup (all)": 0.0, "backward": 0.0,
              "apply_gradients": 0.0}
    for _rank, ids, _, labels in batches:
        sync()
        t0 = time.perf_counter()
        fields = torch.arange(args.fields, dtype=torch.int16, device=DEVICE).expand_as(ids)
        store.index.lookup(fields.reshape(-1), ids.reshape(-1))
        sync()
        t1 = time.perf_counter()
        emb = pol.lookup(ids, train=True)
        sync()
        t2 = time.perf_counter()
        F.binary_cross_entropy_with_logits(model(emb), labels).backward()
        sync()
        t3 = time.perf_counter()
        pol.apply_gradients()
        sync()
        t4 = time.perf_counter()
        for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[k] += dt
    n = len(batches)
    print("\nFIITED step, per phase (ms a step; index lookup timed apart, also inside lookup):")
    for k, v in phases.items():
        print(f"  {k:24s} {1e3 * v / n:8.2f}")
    m = store.memory()
    print(f"  live IDs {m['live_ids']:,}, live chunks {m['live_chunks']:,}, "
          f"prunes {store.prunes}")


def sync_profile(args, batches, warm) -> None:
    """Which lines of the store make the host wait for the GPU (torch's sync debug mode: one
    warning per synchronising call, counted by the calling line), and the top ops by time."""
    import collections
    import warnings

    pol = parse_policy(FIITED + f",kernels={args.kernels}", args.fields, seed=0,
                       device=DEVICE)
    model = SumModel(64).to(DEVICE)

    def step(ids, labels):
        emb = pol.lookup(ids, train=True)
        F.binary_cross_entropy_with_logits(model(emb), labels).backward()
        pol.apply_gradients()

    for _rank, ids, _, labels in warm:
        step(ids, labels)
    sync()
    where: collections.Counter[str] = collections.Counter()
    if DEVICE == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _rank, ids, _, labels in batches:
            step(ids, labels)
        sync()
    if DEVICE == "cuda":
        torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            folder, name = w.filename.rsplit("/", 2)[-2:]
            where[f"{folder}/{name}:{w.lineno}"] += 1
    n = len(batches)
    print(f"\nFIITED step: host syncs a step, by calling line ({sum(where.values()) / n:.1f} "
          "a step in all)")
    for line, k in where.most_common(40):
        print(f"  {k / n:6.2f}  {line}")
    acts = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _rank, ids, _, labels in batches:
            step(ids, labels)
        sync()
    key = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def launch_profile(args, batches, warm) -> None:
    """Kernel launches (on the CPU: aten ops) of a FIITED step with a DLRM, by part of the step:
    each part is a store method wrapped in a profiler scope; a launch counts for the innermost
    scope around it."""
    import collections
    import functools

    schema = DatasetSchema("bench", fields=tuple(f"C{i}" for i in range(args.fields)),
                           dense=tuple(f"I{i}" for i in range(DENSE)))
    pol = parse_policy(FIITED + f",kernels={args.kernels}", args.fields, seed=0,
                       device=DEVICE)
    model = build_model("dlrm", schema, 64, seed=0).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    st = pol.store
    parts = [(st.index, "get_or_insert"), (st, "enforce_entry_limit"), (st, "_admit"),
             (st.entries, "addresses"), (st, "gather"), (st.entries, "stored_utilities"),
             (st.entries, "store_utilities"), (st, "maintain"), (st, "prune_regrow"),
             (st, "_over_budget"), *[(p, "adagrad_step_masked") for p in st.pools],
             *[(p, "adagrad_step") for p in st.pools]]
    for obj, name in parts:
        fn = getattr(obj, name)

        def scoped(*a, _fn=fn, _label=f"part:{name}", **k):
            with torch.profiler.record_function(_label):
                return _fn(*a, **k)
        setattr(obj, name, functools.wraps(fn)(scoped))

    def step(_rank, ids, dense, labels):
        with torch.profiler.record_function("part:lookup (rest)"):
            emb = pol.lookup(ids, train=True)
        with torch.profiler.record_function("part:model fwd+bwd+opt"):
            loss = F.binary_cross_entropy_with_logits(model(emb, dense), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.profiler.record_function("part:apply_gradients (rest)"):
            pol.apply_gradients()

    for b in warm:
        step(*b)
    sync()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for b in batches:
            step(*b)
        sync()
    launch = "LaunchKernel" if DEVICE == "cuda" else "aten::"
    counts: collections.Counter[str] = collections.Counter()

    def walk(ev, scope: str) -> None:
        for c in ev.cpu_children:
            if c.name.startswith("part:"):
                walk(c, c.name[5:])
            elif launch in c.name and (DEVICE == "cuda" or not ev.name.startswith("aten::")):
                counts[scope] += 1
            else:
                walk(c, scope)

    for ev in prof.events():
        if ev.cpu_parent is None:
            walk(ev, ev.name[5:] if ev.name.startswith("part:") else "outside")
    n = len(batches)
    print(f"\nFIITED step with a DLRM: {'kernel launches' if DEVICE == 'cuda' else 'aten ops'} "
          f"a step by part ({sum(counts.values()) / n:.0f} in all)")
    for k, v in counts.most_common():
        print(f"  {v / n:8.1f}  {k}")


def index_table(args) -> None:
    rng = np.random.default_rng(0)
    n = args.index_keys
    keys = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    fields = rng.integers(0, 26, size=n).astype(np.int16)
    host = HashIndex()
    host.get_or_insert(fields, keys)
    dev = DeviceHashIndex(device=DEVICE)
    t = time.perf_counter()
    dev.get_or_insert(torch.from_numpy(fields).to(DEVICE), torch.from_numpy(keys).to(DEVICE))
    sync()
    insert_s = time.perf_counter() - t
    q = rng.integers(0, n, size=(10, args.batch * args.fields))
    rates = {"numpy, host": 0.0, "numpy, host, + copy to GPU": 0.0, "torch, GPU": 0.0}
    dq = [(torch.from_numpy(fields[r]).to(DEVICE), torch.from_numpy(keys[r]).to(DEVICE)) for r in q]
    for _ in range(2):
        t = time.perf_counter()
        for r in q:
            host.lookup(fields[r], keys[r])
        rates["numpy, host"] = max(rates["numpy, host"], q.size / (time.perf_counter() - t))
        t = time.perf_counter()
        for r in q:
            torch.from_numpy(host.lookup(fields[r], keys[r])).to(DEVICE)
        sync()
        k = "numpy, host, + copy to GPU"
        rates[k] = max(rates[k], q.size / (time.perf_counter() - t))
        dev.lookup(*dq[0])
        sync()
        t = time.perf_counter()
        for f, kk in dq:
            dev.lookup(f, kk)
        sync()
        rates["torch, GPU"] = max(rates["torch, GPU"], q.size / (time.perf_counter() - t))
    print(f"\nhash index: batches of {q.shape[1]:,} keys over {n:,} keys "
          f"(GPU insert of all: {n / insert_s / 1e6:.1f}M keys/s)")
    for k, v in rates.items():
        print(f"  {k:28s} {v / 1e6:8.1f}M lookups/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, default=26)
    ap.add_argument("--vocab", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warm", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--index-keys", type=int, default=4_000_000)
    ap.add_argument("--only", default="index,speed,phases")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kernels", default="torch", choices=("torch", "triton"),
                    help="FIITED's gather and Adagrad in the phases, syncs and launches parts")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(torch.__version__, name, flush=True)
    schema = DatasetSchema("bench", fields=tuple(f"C{i}" for i in range(args.fields)),
                           dense=tuple(f"I{i}" for i in range(DENSE)))
    warm = make_batches(args.warm, args.batch, args.fields, args.vocab, seed=1)
    batches = make_batches(args.steps, args.batch, args.fields, args.vocab, seed=2)
    if "index" in args.only:
        index_table(args)
    if "phases" in args.only:
        phase_breakdown(args, batches[:20], warm[:20])
    if "syncs" in args.only:
        sync_profile(args, batches[:10], warm[:20])
    if "launches" in args.only:
        launch_profile(args, batches[:10], warm[:20])
    if "speed" in args.only:
        speed_table(args, schema, batches, warm)


if __name__ == "__main__":
    main()
