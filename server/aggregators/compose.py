"""Compose pre-aggregators and a rule into one aggregator from flat parameters.

``build_aggregator("krum", pre=("nnm",), params={"assumed_byzantine": 2})`` builds ``nnm`` and
``krum`` and gives ``assumed_byzantine`` to both: each parameter goes to every stage whose factory
signature names it (a factory with ``**kwargs`` takes all of them). A parameter no stage accepts is
a ``ValueError`` naming it. Stages taking a ``seed`` (e.g. ``bucketing``) get one derived from the
run seed and their position, unless ``seed`` is given explicitly in ``params``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np

from stamen.server.aggregators.base import RoundContext, Rule, create, rule_factory
from stamen.server.aggregators.pre_base import PreAggregator, create_pre, pre_factory

_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


class ComposedAggregator(Rule):
    """``updates -> pre_1 -> ... -> pre_k -> rule``; a :class:`Rule`. It declares the rule's traits,
    except that pre-aggregation voids any L2 sensitivity (central DP refuses it)."""

    def __init__(self, rule: Rule, pre: Sequence[PreAggregator], names: Sequence[str]) -> None:
        self.rule = rule
        self.pre = tuple(pre)
        self.names = tuple(names)  # pre-aggregator names then the rule name, for messages
        self.traits = replace(rule.traits, l2_sensitivity=None) if self.pre else rule.traits

    def begin_round(self, ctx: RoundContext) -> None:
        """Hand the round's context to the rule."""
        self.rule.begin_round(ctx)

    def epsilon(self) -> float | None:
        """The rule's privacy spent (None for every registered rule)."""
        return self.rule.epsilon()

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Run the pre-aggregators in order, then the rule."""
        for stage in self.pre:
            updates, weights = stage(updates, weights)
        return self.rule(updates, weights)

    def __repr__(self) -> str:
        return f"ComposedAggregator({' -> '.join(self.names)})"


def accepted_params(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts; ``None`` when it takes ``**kwargs`` (anything)."""
    accepted = set()
    for p in inspect.signature(factory).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            accepted.add(p.name)
    return accepted


def refuse_unaccepted(key: str, unused: set[str], where: str, accepted: set[str]) -> None:
    """One-line ``ValueError`` for the ``key`` parameters ``unused`` that ``where`` (a rule, its
    pre-aggregators) does not take, naming those it does; nothing when ``unused`` is empty."""
    if unused:
        raise ValueError(
            f"{key} parameter(s) {', '.join(sorted(unused))} not accepted by {where}"
            f" (accepted: {', '.join(sorted(accepted)) or 'none'})"
        )


def stage_seed(seed: int, position: int) -> int:
    """Independent 32-bit seed for the stage at ``position`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


def build_aggregator(
    rule: str, pre: Sequence[str] = (), params: Mapping[str, Any] = _NO_PARAMS, seed: int = 0
) -> ComposedAggregator:
    """One aggregator ``(updates, weights=None) -> (d,)``: the pre-aggregators ``pre`` then ``rule``.

    Parameters
    ----------
    rule : str
        A registered rule (``stamen.server.aggregators.available()``).
    pre : sequence of str
        Registered pre-aggregators, applied in order (``available_pre()``); may repeat.
    params : mapping
        Flat parameters, each routed to every stage whose factory accepts it.
    seed : int
        Run seed; stages with a ``seed`` parameter get ``stage_seed(seed, position)``.

    Raises
    ------
    ValueError
        Unknown rule or pre-aggregator, a parameter no stage accepts, or an invalid value.
    """
    factories = [(name, pre_factory(name)) for name in pre] + [(rule, rule_factory(rule))]
    used: set[str] = set()
    names: set[str] = set()  # every stage's parameter names, for the message
    kwargs_per_stage = []
    for position, (_, factory) in enumerate(factories):
        accepted = accepted_params(factory)
        kwargs = {k: v for k, v in params.items() if accepted is None or k in accepted}
        used.update(kwargs)
        names.update(accepted or ())
        if accepted is not None and "seed" in accepted and "seed" not in params:
            kwargs["seed"] = stage_seed(seed, position)
        kwargs_per_stage.append(kwargs)
    where = f"rule {rule!r}" + (f" or pre-aggregators {', '.join(pre)}" if pre else "")
    refuse_unaccepted("aggregation", set(params) - used, where, names)
    stages = [create_pre(name, **kw) for name, kw in zip(pre, kwargs_per_stage, strict=False)]
    return ComposedAggregator(create(rule, **kwargs_per_stage[-1]), stages, [*pre, rule])
