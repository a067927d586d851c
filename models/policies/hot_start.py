"""Hot start: initialise any chunk-store policy (fixed, fiited, adaembed, dml, amtl) from a
trained `fixed:64` save, so a running system can switch policy without starting cold.

    save_hot_start(policy64, model, path)        # policy.save(path) + path.net.pt (optional)
    policy = parse_policy("fiited:budget=0.25", F)
    hot_start(policy, path, model=net)           # or the spec param: "fiited:budget=0.25,hot=PATH"

What is copied: every ID of the save (field, raw ID) gets an entry in the new policy with the
save's access count and its D-vector (the first D of the save's dims, zero-padded if the save
is narrower), written into all K chunks; then the new policy applies its own rule at once:
- fixed:d: nothing more (fixed:8 keeps the first 8 of the 64 dims, a truncation);
- fiited / adaembed (a budget): chunk utilities are seeded with  count * ||chunk values||
  (the same "accesses times a norm" shape as the FIITED utility, so per (field, position) the
  most used and largest chunks rank first), and a prune step runs immediately: the policy
  starts within its budget, keeping the chunks of frequent, large-valued IDs. The seeds decay
  with gamma like any utility and are replaced by gradient-driven ones within a few hundred
  steps;
- dml / amtl: a relayout to the policy's current mask (DML's N_f at init, AMTL's k from the
  mask network fed with the copied counts); chunks past the mask are freed.
A save holding more IDs than the policy's entry limit (StoreConfig.entry_limit) is cut to it
at once, the least used (or, with a budget, least useful by the seeded utilities) going first.
The network's state_dict is loaded from `path.net.pt` when `model` is given and that file
exists (the network must have the same shape: same data set, model and D).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.policies.chunked import ChunkedPolicy
from models.policies.masked import MaskedChunkPolicy
from models.policy import EmbeddingPolicy
from storage.vhpi.store import ChunkStore


def network_path(path: Path) -> Path:
    """Where `save_hot_start` puts the network's state_dict beside the policy save."""
    return Path(str(path) + ".net.pt")


def save_hot_start(policy: EmbeddingPolicy, model: nn.Module | None, path: Path) -> None:
    """policy.save(path), and the network's state_dict to `network_path(path)` if given."""
    policy.save(Path(path))
    if model is not None:
        torch.save(model.state_dict(), network_path(Path(path)))


def read_store(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """A ChunkStore save -> (fields int16[N], keys int64[N], counts int64[N],
    values float32[N, D]) of its live entries (zeros where a chunk is not stored), on the
    host (the save is read on the CPU whatever device wrote it)."""
    src = ChunkStore.load(path, device="cpu")
    slots = src.live_slots()
    return (
        src.index.fields[slots].numpy(),
        src.index.keys[slots].numpy(),
        src.counts(slots).numpy().astype(np.int64),
        src.gather(slots),
    )


def hot_start(policy: EmbeddingPolicy, path: Path, model: nn.Module | None = None) -> int:
    """Copy a fixed-64 save's entries into `policy` (see module docstring); returns the
    number of IDs copied."""
    if not isinstance(policy, ChunkedPolicy):
        raise TypeError(f"hot start needs a chunk-store policy, not {type(policy).__name__}")
    fields, keys, counts, values = read_store(Path(path))
    s = policy.store
    D = s.config.dim
    if values.shape[1] >= D:
        values = values[:, :D]
    else:
        values = torch.nn.functional.pad(values, (0, D - values.shape[1]))
    slots = s.import_entries(fields, keys, counts, values)
    if s.tracks_utility:
        a = torch.from_numpy(counts.astype(np.float32)).to(s.device)
        s.seed_utilities(slots, a[:, None] * s.chunk_norms(values))
    s.enforce_entry_limit()  # the copy went around the limit a train lookup keeps
    if isinstance(policy, MaskedChunkPolicy):
        policy.relayout()
    elif s.tracks_utility:
        s.prune_regrow()
    net = network_path(Path(path))
    if model is not None and net.exists():
        model.load_state_dict(torch.load(net, weights_only=True))
    return int(slots.numel())
