"""Local trainers, selected by ``[clients] trainer``; importing this package registers them."""

from stamen.client.trainers import full as _full  # noqa: F401  (registers "full")
from stamen.client.trainers.base import (
    LocalTrainer,
    TrainResult,
    available_trainers,
    create_trainer,
    register_trainer,
)

__all__ = ["LocalTrainer", "TrainResult", "available_trainers", "create_trainer", "register_trainer"]
