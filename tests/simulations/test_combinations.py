"""Every combination of privacy mode x attack x rule the validator accepts runs; the others are
refused before round 1 with one line.

The cross product is checked at planning time (which is where a refusal must happen); one round is
then run for every (privacy mode, attack) pair with the rules rotating over the accepted ones, so
that every mode, attack and rule is executed while the suite stays fast.
"""

from __future__ import annotations

import itertools

import pytest

from stamen.server.aggregators import available
from stamen.simulations.attacks import available_attacks
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.settings import PRIVACY_MODES

ATTACKS = ("none", *available_attacks())
RULES = tuple(available())


def _overrides(privacy: str, attack: str, rule: str) -> list[str]:
    out = ["rounds=1", f"privacy.mode={privacy}", f"aggregation.rule={rule}", "privacy.target_epsilon=50"]
    if privacy == "rqm":
        out.append("codec.pipeline=rqm")  # the mode is the codec's mechanism
    if attack != "none":
        out += [f"attack.kind={attack}", "attack.fraction=0.25"]
    return out


def _plan(privacy: str, attack: str, rule: str) -> SimulationPlan | str:
    """The plan, or the one-line refusal."""
    try:
        return SimulationPlan.from_scenario(load_scenario("smoke", _overrides(privacy, attack, rule)))
    except ValueError as exc:
        return str(exc)


@pytest.fixture(scope="module")
def plans() -> dict[tuple[str, str, str], SimulationPlan | str]:
    return {combo: _plan(*combo) for combo in itertools.product(PRIVACY_MODES, ATTACKS, RULES)}


def test_refusals_are_one_line_and_name_a_setting(
    plans: dict[tuple[str, str, str], SimulationPlan | str],
) -> None:
    refusals = {combo: p for combo, p in plans.items() if isinstance(p, str)}
    assert refusals and len(refusals) < len(plans)
    for combo, msg in refusals.items():
        assert "\n" not in msg and "=" in msg, (combo, msg)
    # the known limits, each refused for its reason
    assert "declares no L2 sensitivity" in str(refusals[("central", "none", "median")])
    assert "model.name" in str(refusals[("off", "none", "frl")])
    assert "clients.trainer='frl'" in str(refusals[("central", "rank_reversal", "mean")])


def test_every_accepted_combination_runs_a_round(
    plans: dict[tuple[str, str, str], SimulationPlan | str],
) -> None:
    accepted = [combo for combo, p in plans.items() if not isinstance(p, str)]
    rules = itertools.cycle(RULES)
    executed = set()
    for privacy, attack in itertools.product(PRIVACY_MODES, ATTACKS):
        candidates = [c for c in accepted if c[:2] == (privacy, attack)]
        if not candidates:
            continue
        for _ in range(len(RULES)):  # the next accepted rule in the rotation
            rule = next(rules)
            if (privacy, attack, rule) in candidates:
                break
        combo = (privacy, attack, rule) if (privacy, attack, rule) in candidates else candidates[0]
        plan = plans[combo]
        assert not isinstance(plan, str)
        result = run_engine("inprocess", plan)
        assert len(result.rounds) == 1 and result.stopped is None, combo
        assert (result.rounds[0].epsilon is not None) == (privacy != "off"), combo
        executed.add(combo)
    assert {c[0] for c in executed} == set(PRIVACY_MODES)
    assert {c[1] for c in executed} == set(ATTACKS) - {"rank_reversal"}
    assert len({c[2] for c in executed}) >= 6
