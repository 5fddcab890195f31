"""Local trainers, selected by ``[clients] trainer``; importing this package registers them."""

from stamen.client.trainers import bristle as _bristle  # noqa: F401  (registers "bristle")
from stamen.client.trainers import dp_sgd as _dp_sgd  # noqa: F401  (registers "dp_sgd")
from stamen.client.trainers import frl as _frl  # noqa: F401  (registers "frl")
from stamen.client.trainers import full as _full  # noqa: F401  (registers "full")
from stamen.client.trainers.base import (
    LocalTrainer,
    TrainResult,
    available_trainers,
    create_trainer,
    register_trainer,
)

__all__ = ["LocalTrainer", "TrainResult", "available_trainers", "create_trainer", "register_trainer"]
from stamen.client.trainers import fedsb as _fedsb  # noqa: F401  (registers "fedsb")
from stamen.client.trainers import lora as _lora  # noqa: F401  (registers "lora")
from stamen.client.trainers import sparse as _sparse  # noqa: F401  (registers "sparse")
