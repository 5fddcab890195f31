"""Aggregation rules: ``create(name, **params)`` returns ``(updates, weights=None) -> aggregate``.

Rules: ``fedavg``, ``mean``, ``median``, ``trimmed_mean``, ``krum``, ``multikrum``, ``bulyan``,
``geomed``, ``centered_clipping``, ``bristle``, ``fltrust``, ``frl``, ``lora_naive``, ``lora_exact``.
Pre-aggregators (``create_pre``): ``nnm``, ``bucketing``.
``build_aggregator(rule, pre, params, seed)`` composes them from flat parameters.
"""

from stamen.server.aggregators import bristle as _bristle  # noqa: F401  (registers bristle)
from stamen.server.aggregators import bucketing as _bucketing  # noqa: F401  (registers bucketing)
from stamen.server.aggregators import bulyan as _bulyan  # noqa: F401  (registers bulyan)
from stamen.server.aggregators import centered_clipping as _cc  # noqa: F401  (registers centered_clipping)
from stamen.server.aggregators import fltrust as _fltrust  # noqa: F401  (registers fltrust)
from stamen.server.aggregators import frl as _frl  # noqa: F401  (registers frl)
from stamen.server.aggregators import geomed as _geomed  # noqa: F401  (registers geomed)
from stamen.server.aggregators import krum as _krum  # noqa: F401  (registers krum, multikrum)
from stamen.server.aggregators import mean as _mean  # noqa: F401  (registers fedavg, mean)
from stamen.server.aggregators import median as _median  # noqa: F401  (registers median)
from stamen.server.aggregators import nnm as _nnm  # noqa: F401  (registers nnm)
from stamen.server.aggregators import trimmed_mean as _trimmed_mean  # noqa: F401  (registers trimmed_mean)
from stamen.server.aggregators.base import (
    Aggregator,
    FunctionRule,
    RoundContext,
    Rule,
    RuleTraits,
    as_rule,
    available,
    check_stack,
    create,
    register,
    rule_factory,
)
from stamen.server.aggregators.compose import ComposedAggregator, build_aggregator
from stamen.server.aggregators.pre_base import (
    PreAggregator,
    available_pre,
    create_pre,
    register_pre,
)

__all__ = [
    "Aggregator",
    "ComposedAggregator",
    "FunctionRule",
    "PreAggregator",
    "RoundContext",
    "Rule",
    "RuleTraits",
    "as_rule",
    "available",
    "available_pre",
    "build_aggregator",
    "check_stack",
    "create",
    "create_pre",
    "register",
    "register_pre",
    "rule_factory",
]
from stamen.server.aggregators import lora as _lora  # noqa: F401  (registers lora_naive, lora_exact)
