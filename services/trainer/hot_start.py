"""Starting a model from another model's checkpoint (`chunkrec train --hot-start`): switching
policy on a running system without starting cold.

    offsets = hot_start_from(Path("ckpt/fixed64"), policy, net, config)
    # policy and net now hold the source's embeddings and network; offsets: "topic:p" -> next
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.policies.hot_start import hot_start
from models.policy import EmbeddingPolicy
from services.trainer.checkpoint import CheckpointState, list_checkpoints

if TYPE_CHECKING:
    from services.trainer.config import TrainerConfig

log = logging.getLogger("chunkrec.trainer")


def hot_start_from(source: Path, policy: EmbeddingPolicy, net: nn.Module,
                   config: TrainerConfig) -> dict[str, int]:
    """Load another model's checkpoint (a ckpt-* folder, or a model's folder of them: the
    newest) into this one: its embeddings into `policy` (models.policies.hot_start: copied,
    then this policy's own rule, e.g. pruned to its budget), its network into `net` where the
    shapes match. Returns its Kafka offsets, so the events its weights already hold are not
    learned twice. Counts and checksum are not taken: they are this model's applied events.
    Raises ValueError when there is nothing to start from or it does not fit."""
    path = source
    if not (path / "state.json").exists():
        found = list_checkpoints(path)
        if not found:
            raise ValueError(f"{source}: no checkpoint to hot-start from (expected a "
                             "ckpt-* folder, or a model's folder of them)")
        path = found[-1]
    st = CheckpointState.from_json((path / "state.json").read_bytes())
    if st.schema != config.schema.name:
        raise ValueError(f"{path}: checkpoint of schema {st.schema!r}, this model's is "
                         f"{config.schema.name!r}")
    try:
        ids = hot_start(policy, path / "policy.bin")
    except (TypeError, ValueError, KeyError, OSError) as exc:
        raise ValueError(f"{path}: cannot hot-start {config.policy!r} from it: {exc}") from exc
    network = "fresh (different network)"
    if st.arch == config.arch:
        dense = torch.load(path / "dense.pt", map_location="cpu", weights_only=True)["model"]
        try:
            net.load_state_dict(dense)
            network = "copied"
        except RuntimeError:
            pass  # another D or schema: the network starts from its seed
    log.info("hot start from %s (model %s, policy %s): %d IDs, network %s, offsets %s",
             path, st.model, st.policy, ids, network, st.offsets)
    return st.offsets
