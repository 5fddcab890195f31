"""Refuse, before round 1 and in one line, every combination of settings the server cannot honour.

What is checked: privacy modes against codecs and trainers; the rule (names, parameters, central
DP's declared sensitivity, the server learning rate it needs, the model it needs); Bristle's peer
mode; and the rule's preconditions on the cohort size (e.g. Krum's ``2f + 2 < n``), by running a fresh
copy of the rule once on a random stack of ``clients.per_round`` rows (and of one row under Poisson
sampling, whose cohort size varies).
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators import Rule, build_aggregator
from stamen.server.hierarchy import check_hierarchy, hierarchical, warn_flat_hierarchy
from stamen.server.rules import build_rule, rule_name
from stamen.server.sampling import resolve_sampling
from stamen.server.staleness import compensation, functions
from stamen.task.settings import Settings

DP_SGD_TRAINERS = ("full", "dp_sgd", "lora", "fedsb")  # DP-SGD trains what is left trainable
RULE_MODELS = {"frl": ("supermask_mlp",), "bristle": ("bristle_transfer",), "fltrust": ("bristle_transfer",)}
TRAINER_RULES = {"frl": ("frl",)}  # rankings only make sense to the FRL vote
TRAINER_MODELS = {"frl": ("supermask_mlp",), "bristle": ("bristle_transfer",)}
PEER_MODELS = ("bristle_transfer",)


def check_settings(s: Settings) -> None:
    """``ValueError`` naming the settings of the first combination that cannot run."""
    _check_privacy(s)
    _check_models(s)
    if hierarchical(s):
        check_hierarchy(s)
    warn_flat_hierarchy(s)
    rule = build_rule(s)
    need = rule.traits.required_server_lr
    if need is not None and s.aggregation.server_lr != need:
        raise ValueError(
            f"aggregation.rule={s.aggregation.rule!r} needs aggregation.server_lr={need}, "
            f"got {s.aggregation.server_lr}"
        )
    poisson = resolve_sampling(s.clients.sampling, s.privacy.mode, s.server.mode) == "poisson"
    if poisson:
        check_poisson(s, rule)
    if rule.traits.relay_only:
        check_peer_mode(s)
    elif s.server.mode == "sync":
        check_cohort(s, s.clients.per_round)
    else:
        check_async(s)


def check_poisson(s: Settings, rule: Rule) -> None:
    """Refuse what cannot take Poisson sampling's variable cohort (Binomial(N, q) clients, from 0 to
    N): asynchronous modes (they draw no cohort), Bristle's peer relay, and a rule whose
    preconditions fail on the smallest non-empty cohort (e.g. Krum's ``2f + 2 < n`` at ``n = 1``)."""
    if s.server.mode != "sync":
        raise ValueError(
            f"clients.sampling='poisson' draws a synchronous round's cohort; server.mode={s.server.mode!r} "
            "draws none (use clients.sampling='auto' or 'fixed')"
        )
    if rule.traits.relay_only:
        raise ValueError("clients.sampling='poisson' is not supported by Bristle's peer mode; use 'fixed'")
    try:
        check_cohort(s, 1)
    except ValueError as exc:
        raise ValueError(
            f"clients.sampling='poisson' may draw a single client, which aggregation {rule_name(s)} "
            f"cannot take ({exc.__cause__}); use clients.sampling='fixed'"
        ) from exc


def _check_privacy(s: Settings) -> None:
    p, pipeline = s.privacy, s.codec.pipeline
    if p.mode == "rqm" and (not pipeline or pipeline[0] != "rqm"):
        raise ValueError(
            "privacy.mode='rqm' needs codec.pipeline to start with 'rqm' (earlier stages "
            "would send un-privatized data, e.g. topk indices)"
        )
    if p.mode == "dp_sgd" and s.clients.trainer not in DP_SGD_TRAINERS:
        raise ValueError(
            f"privacy.mode='dp_sgd' works with clients.trainer {', '.join(map(repr, DP_SGD_TRAINERS))}, "
            f"got {s.clients.trainer!r}"
        )


def _check_models(s: Settings) -> None:
    models = RULE_MODELS.get(s.aggregation.rule)
    if models is not None and s.model.name not in models:
        raise ValueError(
            f"aggregation.rule={s.aggregation.rule!r} needs model.name in {list(models)}, "
            f"got {s.model.name!r}"
        )
    models = TRAINER_MODELS.get(s.clients.trainer)
    if models is not None and s.model.name not in models:
        raise ValueError(
            f"clients.trainer={s.clients.trainer!r} needs model.name in {list(models)}, got {s.model.name!r}"
        )
    rules = TRAINER_RULES.get(s.clients.trainer)
    if rules is not None and s.aggregation.rule not in rules:
        raise ValueError(
            f"clients.trainer={s.clients.trainer!r} sends rankings: it needs aggregation.rule in "
            f"{list(rules)}, "
            f"got {s.aggregation.rule!r}"
        )


def check_peer_mode(s: Settings) -> None:
    """Refuse settings Bristle's peer mode does not support, naming them."""
    problems = []
    if s.aggregation.pre:
        problems.append(f"aggregation.pre={list(s.aggregation.pre)} (nothing is aggregated)")
    if s.privacy.mode != "off":
        problems.append(f"privacy.mode={s.privacy.mode!r}")
    if s.clients.runtime != "memory":
        problems.append(f"clients.runtime={s.clients.runtime!r}")
    if s.model.name not in PEER_MODELS:
        problems.append(f"model.name={s.model.name!r} (needs one of {PEER_MODELS})")
    if problems:
        raise ValueError("aggregation.mode='peer' does not support " + ", ".join(problems))


MIXING_RULES = ("fedavg", "mean")  # FedAsync mixes every arrival: no rule runs
GI_MODELS = ("mlp", "logreg", "cnn")  # the conversion inverts float inputs


def check_async(s: Settings) -> None:
    """Refuse asynchronous settings that cannot run, naming them."""
    srv = s.server
    functions.create(srv.staleness, **dict(srv.params))  # unknown function or parameter: one line
    if srv.compensation not in compensation.available():
        raise ValueError(f"server.compensation={srv.compensation!r}; available: {compensation.available()}")
    if (srv.compensation == "gi" or srv.stale_policy == "convert") and s.model.name not in GI_MODELS:
        raise ValueError(
            f"the gradient-inversion conversion needs model.name in {list(GI_MODELS)}, got {s.model.name!r}"
        )
    if srv.concurrency > s.data.num_clients:
        raise ValueError(
            f"server.concurrency={srv.concurrency} exceeds data.num_clients={s.data.num_clients}"
        )
    if srv.mode == "fedasync":
        if s.aggregation.rule not in MIXING_RULES or s.aggregation.pre:
            raise ValueError(
                "server.mode='fedasync' mixes each update into the model: it needs aggregation.rule "
                f"in {list(MIXING_RULES)} without aggregation.pre"
            )
        if s.privacy.mode == "central":
            raise ValueError(
                "server.mode='fedasync' releases every single update: use fedbuff for central DP "
                "(one release per buffer)"
            )
        return
    check_cohort(s, srv.buffer_size)


def check_cohort(s: Settings, n: int) -> None:
    """Run a fresh copy of the rule once on ``n`` random rows, so that its preconditions on the number
    of updates fail now rather than after round 1's training. Rules that need the model layout
    (FRL, Bristle, LoRA) are checked by their model requirements instead."""
    agg = build_aggregator(s.aggregation.rule, s.aggregation.pre, s.aggregation.params, seed=s.seed)
    if not _layout_free(agg, s):
        return
    rows = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    try:
        agg(rows, np.ones(n))
    except ValueError as exc:
        raise ValueError(f"aggregation {rule_name(s)} with clients.per_round={n}: {exc}") from exc


def _layout_free(agg: Rule, s: Settings) -> bool:
    """False for rules that need the model layout or server data (FLTrust's root update)."""
    rule = s.aggregation.rule
    return agg.traits.required_server_lr is None and not rule.startswith("lora_") and rule != "fltrust"
