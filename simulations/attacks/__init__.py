"""Simulated attacks: update attacks (omniscient, server side) and data attacks (client side).

Update attacks: ``sign_flip``, ``scaling``, ``gaussian``, ``alie``, ``ipm``, ``min_max``, ``min_sum``,
``fang_krum``, ``fang_trmean``. Data attacks: ``label_flip``. See :mod:`.base` for the interfaces.
"""

from stamen.simulations.attacks import alie as _alie  # noqa: F401  (registers alie)
from stamen.simulations.attacks import fang as _fang  # noqa: F401  (registers fang_krum, fang_trmean)
from stamen.simulations.attacks import ipm as _ipm  # noqa: F401  (registers ipm)
from stamen.simulations.attacks import label_flip as _label_flip  # noqa: F401  (registers label_flip)
from stamen.simulations.attacks import minmax as _minmax  # noqa: F401  (registers min_max, min_sum)
from stamen.simulations.attacks import rank_reversal as _rank_reversal  # noqa: F401  (rank_reversal)
from stamen.simulations.attacks import simple as _simple  # noqa: F401  (sign_flip, scaling, gaussian)
from stamen.simulations.attacks.base import (
    DataAttack,
    UpdateAttack,
    attack_type,
    available_attacks,
    create_data_attack,
    create_update_attack,
    malicious_clients,
    register_data_attack,
    register_update_attack,
)

__all__ = [
    "DataAttack",
    "UpdateAttack",
    "attack_type",
    "available_attacks",
    "create_data_attack",
    "create_update_attack",
    "malicious_clients",
    "register_data_attack",
    "register_update_attack",
]
