"""What a private run's reported ε assumes, recorded in results.json under ``privacy`` and printed in
the run's summary: the sampling scheme the run used and the one its accountant analyses.

Central DP is the case where they can differ: the accountant (:mod:`stamen.privacy.accounting`)
composes the *Poisson*-subsampled Gaussian mechanism at ``q = per_round / num_clients``, which a
synchronous run with ``clients.sampling = "poisson"`` (the ``"auto"`` default under central DP)
implements exactly (:func:`stamen.server.sampling.poisson_sample`); a fixed-size cohort or FedBuff's
buffers are not formally covered (``"covered": false``). FedBuff is further off than a fixed cohort:
a buffer holds whichever ``buffer_size`` updates arrive first, so a fast client is in more releases
than rate q implies, and one client's presence shifts which other updates land in every later
buffer. The driver keeps at most one update per client in a buffer (a second is rejected), so a
client's own rows add at most C/m to any release; the shifting of the others is what no analysis here
covers.
The client-side mechanisms (local DP, DP-SGD, RQM) are accounted per client over the updates it
released, with no amplification by client sampling, so their ε holds whatever the server's sampling;
calibrated to a target ε they assume at most ``rounds`` releases per client, which an asynchronous
run, and a synchronous round run again after a crash, enforce by sending no client more tasks
(:func:`releases_per_client`).

Every statement also says where the DP randomness came from (``privacy.noise``): ``"secret"`` (OS
entropy), or ``"seeded"``, derived from the run seed that every client receives, for runs that replay
bit for bit. A seeded run is not private against anyone who knows the seed (a client can subtract
the central noise, the server the local noise or replay RQM and DP-SGD, anyone can list the Poisson
cohorts): its statement says ``"covered": false`` with that warning, whatever the sampling.
"""

from __future__ import annotations

from typing import Any

from stamen.server.config import ServerConfig
from stamen.task.settings import PrivacyConfig

FIXED_NOTE = (
    "the accountant assumes Poisson sampling at rate q; this run's cohorts were not Poisson, so the "
    "reported ε is the usual approximation, not a formal guarantee"
)
FEDBUFF_NOTE = (
    "the accountant assumes every release samples each client independently at rate q; FedBuff's "
    "buffers hold the first updates to arrive (at most one per client), so a fast client is in more "
    "releases than q implies and one client's presence shifts which updates fill every later buffer: "
    "the reported ε is not a guarantee"
)
CLIENT_ACCOUNTANTS = {
    "local": "gaussian-composed-over-participation",  # stamen.privacy.local, sensitivity 2C, q = 1
    "dp_sgd": "poisson-subsampled-gaussian-per-client-batches",  # opacus' q = 1/ceil(n/B)
    "rqm": "rqm-exact-rdp-composed-over-participation",  # stamen.privacy.rqm_rdp
}
CLIENT_NOTE = "per-client ε over the updates each client released; no client-sampling amplification"
BOUND_NOTE = (
    "the worst client's ε is the larger of the clients' reports and the ε of one release per task "
    "sent to the most-asked client, so a deployment resumed from its state-dir (whose clients count "
    "from zero again) does not lower it"
)
REPORTS_NOTE = (
    "the worst client's ε is the largest the clients reported: in a deployment resumed from its "
    "state-dir they count from zero again, so it may understate what was spent before the restart "
    "(the server does not correct it: {why})"
)
SEEDED_WARNING = (
    "privacy.noise=seeded: the DP noise and sampling are derived from the public run seed, so the "
    "guarantee does not hold against anyone who knows it (research / reproducibility mode only)"
)


def releases_per_client(cfg: ServerConfig) -> int:
    """The releases per client that a client-side mechanism's noise was calibrated for (``rounds``,
    under ``privacy.calibration = "target_epsilon"``): neither driver sends a client more tasks. 0 (no
    cap) for central DP, no privacy, or a fixed noise multiplier (no target to keep)."""
    p = cfg.privacy
    return cfg.rounds if p.mode in CLIENT_ACCOUNTANTS and p.calibration == "target_epsilon" else 0


def privacy_statement(cfg: ServerConfig) -> dict[str, Any] | None:
    """The ``privacy`` entry of results.json; None for a run without privacy.

    Keys: ``mode``; ``sampling`` (``"poisson"``, ``"fixed"``, or ``"fedbuff-arrivals"``);
    ``accountant`` (``"<rdp|prv>-poisson-subsampled-gaussian"`` for central DP); ``sample_rate``
    (``q``) and ``estimator`` for central DP; ``noise`` (``privacy.noise``); ``covered`` (whether the
    accountant's assumptions hold for the run: its sampling, and secret noise); ``note`` (what the
    figure means; under ``"seeded"`` noise it starts with :data:`SEEDED_WARNING`); for a client-side
    mode in an asynchronous run with a target ε, ``max_releases_per_client``.
    """
    p = cfg.privacy
    if p.mode == "off":
        return None
    return _seeded(p, _statement(cfg, p))


def _seeded(p: PrivacyConfig, statement: dict[str, Any]) -> dict[str, Any]:
    """``statement`` with the noise source; a seeded run is not covered, and its note says why."""
    statement["noise"] = p.noise
    if p.noise == "seeded":
        statement["covered"] = False
        statement["note"] = f"{SEEDED_WARNING}; {statement['note']}"
    return statement


def _statement(cfg: ServerConfig, p: PrivacyConfig) -> dict[str, Any]:
    """The statement of the mechanism and its sampling (:func:`privacy_statement` adds the noise)."""
    if p.mode != "central":
        return _client_side(cfg)
    fedbuff = cfg.settings.server.mode != "sync"
    sampling = "fedbuff-arrivals" if fedbuff else cfg.sampling
    covered = sampling == "poisson"
    note = "each client sampled independently with probability q, as the accountant assumes"
    if not covered:
        note = FEDBUFF_NOTE if fedbuff else FIXED_NOTE
    return {
        "mode": "central",
        "sampling": sampling,
        "sample_rate": cfg.settings.server.buffer_size / cfg.num_clients if fedbuff else cfg.sample_rate,
        "accountant": f"{p.accountant}-poisson-subsampled-gaussian",
        "neighbouring": "add/remove one client",
        "estimator": "fixed denominator: sum of clipped updates / (q * num_clients)",
        "delta": p.delta,
        "covered": covered,
        "note": note,
    }


def _client_side(cfg: ServerConfig) -> dict[str, Any]:
    p = cfg.privacy
    out = {
        "mode": p.mode,
        "sampling": cfg.sampling,
        "accountant": f"{p.accountant}:{CLIENT_ACCOUNTANTS[p.mode]}",
        "covered": True,
        "note": _client_note(cfg),
    }
    if releases_per_client(cfg):  # async: a fast client's extra tasks; sync: a round run again
        out["max_releases_per_client"] = releases_per_client(cfg)
    return out


def _client_note(cfg: ServerConfig) -> str:
    """What a client-side mode's ε is: RQM's is the server's own account; local DP's (synchronous or
    asynchronous) is bounded by the tasks sent (:mod:`stamen.server.privacy.client_bound`); DP-SGD's
    is the clients' reports."""
    mode = cfg.privacy.mode
    if mode == "rqm":
        return CLIENT_NOTE
    if mode == "local":
        return f"{CLIENT_NOTE}; {BOUND_NOTE}"
    why = "DP-SGD's ε depends on each client's data size, which the server does not know"
    return f"{CLIENT_NOTE}; {REPORTS_NOTE.format(why=why)}"


def describe(statement: dict[str, Any]) -> str:
    """One line for the run's summary, e.g. ``privacy: central, Poisson sampling q=0.1, accountant
    rdp-poisson-subsampled-gaussian (covered)``."""
    parts = [f"privacy: {statement['mode']}", f"{statement['sampling']} sampling"]
    if "sample_rate" in statement:
        parts[-1] += f" q={statement['sample_rate']:.4g}"
    parts.append(f"accountant {statement['accountant']}")
    line = ", ".join(parts)
    return line + (" (covered)" if statement["covered"] else f" (NOT covered: {statement['note']})")
