"""The processes of a sharded trainer job (services/trainer/sharded.py): N local ranks started
by services/distributed/launch.py, or one rank that torchrun started.

    ranks = run_sharded(settings, config, workers=2)   # each rank's counters, by rank
    train_rank(settings, config)                       # in a process torchrun started
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch

from services.distributed.launch import init_from_env, launch
from services.trainer.config import TrainerConfig
from services.trainer.lease import LeaseHeld
from services.trainer.sharded import ShardedTrainer
from storage.settings import Settings


def train_rank(settings: Settings, config: TrainerConfig) -> dict[str, Any]:
    """One rank in a process whose torch.distributed variables are set (our launcher or
    torchrun); SIGTERM / SIGINT stop the job at the next round (final checkpoint, publish)."""
    if settings.trainer.threads:
        torch.set_num_threads(settings.trainer.threads)
    init_from_env(settings.trainer.device)
    trainer = ShardedTrainer(settings, config)

    def on_signal(_signum: int, _frame: object) -> None:
        trainer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    trainer.run()
    return trainer.result()


def _rank_main(rank: int, world: int, settings: Settings, config: TrainerConfig
               ) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank {rank} %(message)s")
    logging.getLogger("chunkrec").setLevel(logging.INFO)  # ours, not kafka-python's chatter
    return train_rank(settings, config)


def run_sharded(settings: Settings, config: TrainerConfig, workers: int,
                timeout_s: float = 365 * 86400.0) -> list[dict[str, Any]]:
    """N local ranks of the job (services/distributed/launch.py); each rank's counters. A
    failing rank stops every rank and raises here."""
    try:
        return launch(_rank_main, world=workers, args=(settings, config),
                      threads=settings.trainer.threads, timeout_s=timeout_s)
    except RuntimeError as exc:
        text = str(exc)
        if "LeaseHeld: " in text:  # a second job for the model: the rank's own words
            raise LeaseHeld(text.rsplit("LeaseHeld: ", 1)[1].strip()) from None
        raise
