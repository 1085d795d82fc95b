"""Training: the typed config, optimisers and schedules, atomic checkpoints and the loop.

``rankedlist.training.train.main(config)`` runs a recipe end to end (what ``rankedlist train``
calls); :mod:`rankedlist.training.distributed` and :mod:`rankedlist.training.loss_factory` hold the
multi-process pieces and the losses by name.
"""

from rankedlist.training.checkpoint import load_checkpoint, save_checkpoint
from rankedlist.training.config import apply_overrides, config_from_dict, load_config, save_config
from rankedlist.training.config_schema import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from rankedlist.training.evaluate_checkpoint import evaluate_checkpoint
from rankedlist.training.health import NonFiniteLossError
from rankedlist.training.optim import build_optimizer, build_scheduler
from rankedlist.training.run import build_model
from rankedlist.training.train import main
from rankedlist.training.train_result import TrainResult

__all__ = [
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "config_from_dict",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config",
    "main",
    "save_checkpoint",
    "save_config",
]
