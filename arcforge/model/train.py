"""``arcforge train``: pre-train a GLM-4.5-style proxy on Megatron token shards (facade).

The code lives in focused modules (docs/train.md, "Code layout"):

* ``train_config``: the ``TrainConfig`` schema, parsing, cross-section checks;
* ``train_data``: blends, lineage checks, ``DataPlan``, the megatron-core datasets;
* ``train_loop``: schedules, step plan, checkpoints and RNG states, the one loop ``Trainer``;
* ``backend`` (the protocol), ``backend_cpu``, ``backend_megatron`` (the GPU path);
* ``losses``: the per-step loss columns; ``parity_check``: CPU/GPU first-step losses.

This module re-exports the public names so ``from arcforge.model.train import ...`` keeps working.
"""

from __future__ import annotations

from arcforge.model.train_config import TrainConfig, check_config, load_train_config, parse_train_config
from arcforge.model.train_data import DataPlan, check_data_files, resolve_data
from arcforge.model.checkpoint import CKPT_RE, list_checkpoints, rng_state, set_rng_state
from arcforge.model.train_loop import (
    TRAINER_FORMAT,
    Trainer,
    TrainResult,
    bias_rate_at,
    lr_at,
    mtp_weight_at,
    step_batch_sizes,
    train,
)

__all__ = [
    "CKPT_RE",
    "DataPlan",
    "TRAINER_FORMAT",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "bias_rate_at",
    "check_config",
    "check_data_files",
    "list_checkpoints",
    "load_train_config",
    "lr_at",
    "mtp_weight_at",
    "parse_train_config",
    "resolve_data",
    "rng_state",
    "set_rng_state",
    "step_batch_sizes",
    "train",
]
