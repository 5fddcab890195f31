"""Scenario: TOML -> frozen dataclasses, --set overrides, strict keys, types and ranges."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from stamen.simulations.scenario import (
    AttackConfig,
    Scenario,
    apply_overrides,
    builtin_scenarios,
    load_scenario,
)
from stamen.task.settings import (
    AggregationConfig,
    ClientsConfig,
    CodecConfig,
    DataConfig,
    ModelConfig,
)


def test_defaults_match_the_documented_api() -> None:
    s = Scenario()
    assert (s.name, s.seed, s.rounds) == ("custom", 0, 10)
    assert s.data == DataConfig("digits", "iid", 0.5, 10, 2, 0.2, 5000)
    assert s.clients == ClientsConfig(
        per_round=10,
        local_epochs=1,
        batch_size=32,
        lr=0.05,
        trainer="full",
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
    )
    assert s.model.hidden == (64,)
    assert s.codec.pipeline == ("dense",) and dict(s.codec.params) == {}
    assert s.aggregation.max_update_norm == 0.0 and isinstance(s.aggregation.max_update_norm, float)
    assert (s.attack.kind, s.privacy.mode, s.eval.every) == ("none", "off", 1)
    assert Scenario.from_dict({}) == s


def test_every_builtin_loads_and_has_a_description() -> None:
    names = [name for name, _ in builtin_scenarios()]
    assert names == sorted(names) and {"demo", "smoke"} <= set(names)
    for name, description in builtin_scenarios():
        assert description, name
        assert load_scenario(name).name == name


def test_builtin_settings() -> None:
    demo = load_scenario("demo")
    assert (demo.data.dataset, demo.data.partition, demo.data.alpha) == ("digits", "dirichlet", 0.5)
    assert (demo.data.num_clients, demo.clients.per_round) == (50, 10)
    assert demo.aggregation.rule == "fedavg" and demo.codec.pipeline == ("dense",)
    smoke = load_scenario("smoke")
    assert (smoke.data.num_clients, smoke.clients.per_round, smoke.rounds) == (4, 4, 3)
    assert smoke.data.partition == "iid" and smoke.model.hidden == (32,)


def test_round_trip_through_json() -> None:
    s = load_scenario(
        "demo",
        [
            "codec.pipeline=topk,int8",
            "codec.topk.ratio=0.01",
            "aggregation.rule=krum",
            "aggregation.f=2",
            "attack.kind=signflip",
            "attack.fraction=0.2",
            "attack.scale=-3.5",
            "model.hidden=128,64",
        ],
    )
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able
    assert d["codec"]["topk"] == {"ratio": 0.01} and d["aggregation"]["f"] == 2
    assert d["model"]["hidden"] == [128, 64]
    assert Scenario.from_dict(json.loads(json.dumps(d))) == s


def test_sections_are_frozen_and_params_read_only() -> None:
    s = load_scenario("smoke", ["aggregation.f=1"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rounds = 4
    with pytest.raises(TypeError):
        s.aggregation.params["f"] = 2


def test_overrides_of_each_type() -> None:
    s = load_scenario(
        "smoke",
        [
            "rounds=5",
            "clients.lr=1",
            "clients.batch_size=8",
            "codec.error_feedback=true",
            "data.dataset=mnist1d",
            "model.hidden=16, 8",
            "codec.pipeline=topk,int8",
            "codec.topk.ratio=0.01",
            "codec.int8.stochastic=false",
            "codec.topk.mode=abs",
            "codec.topk.k=7",
            "description=a b",
        ],
    )
    assert s.rounds == 5 and s.clients.batch_size == 8 and s.description == "a b"
    assert s.clients.lr == 1.0 and isinstance(s.clients.lr, float)  # int literal for a float
    assert s.codec.error_feedback is True and s.data.dataset == "mnist1d"
    assert s.model.hidden == (16, 8) and s.codec.pipeline == ("topk", "int8")
    assert dict(s.codec.params["topk"]) == {"ratio": 0.01, "mode": "abs", "k": 7}
    assert s.codec.params["int8"]["stochastic"] is False
    assert load_scenario("smoke", ["model.hidden="]).model.hidden == ()


def test_apply_overrides_copies_and_creates_tables() -> None:
    base = {"rounds": 2, "codec": {"pipeline": ["dense"]}}
    out = apply_overrides(base, ["codec.topk.ratio=0.5", "aggregation.f=2", "attack.tag=x"])
    assert base == {"rounds": 2, "codec": {"pipeline": ["dense"]}}
    assert out["codec"]["topk"] == {"ratio": 0.5}
    assert out["aggregation"] == {"f": 2} and out["attack"] == {"tag": "x"}


def test_load_from_a_path_and_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("rounds = 2\n[clients]\nlr = 0.5\nper_round = 2\n[data]\nnum_clients = 3\n")
    s = load_scenario(str(path), ["clients.lr=0.25"])
    assert (s.name, s.rounds, s.clients.lr, s.data.num_clients) == ("mine", 2, 0.25, 3)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("clients.lrr=1", "unknown key 'clients.lrr'"),
        ("foo.bar=1", "unknown key 'foo'"),
        ("roundz=3", "unknown key 'roundz'"),
        ("codec.topk.ratio.x=1", "unknown key 'codec.topk.ratio.x'"),
        ("aggregation.params=1", "'aggregation.params' is reserved"),
        ("data=1", "'data' is a table"),
        ("codec.topk=0.1", "'codec.topk' is a table"),
        ("clients.lr", "must look like section.key=value"),
    ],
)
def test_unknown_or_malformed_keys_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_scenario("smoke", [override])


def test_unknown_keys_in_toml_fail(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[clients]\nlrr = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'clients\.lrr'"):
        load_scenario(str(path))
    path.write_text("[telemetry]\non = true\n")
    with pytest.raises(ValueError, match="unknown key 'telemetry'"):
        load_scenario(str(path))
    with pytest.raises(ValueError, match=r"unknown key 'model\.depth'"):
        Scenario.from_dict({"model": {"depth": 3}})


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("clients.lr=abc", "clients.lr: cannot parse 'abc' as float"),
        ("rounds=1.5", "rounds: cannot parse '1.5' as int"),
        ("codec.error_feedback=yes", "codec.error_feedback: cannot parse 'yes' as bool"),
        ("model.hidden=64,x", r"model.hidden\[1\]: cannot parse 'x' as int"),
        ("clients.lr=nan", "clients.lr: expected a finite float"),
    ],
)
def test_bad_override_values_name_key_value_and_type(override: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_scenario("smoke", [override])


@pytest.mark.parametrize(
    ("tree", "needle"),
    [
        ({"rounds": "3"}, r"rounds: expected int, got '3' \(str\)"),
        ({"rounds": True}, "rounds: expected int, got True"),
        ({"clients": {"lr": "0.1"}}, "clients.lr: expected float"),
        ({"model": {"hidden": 64}}, "model.hidden: expected list of int, got 64"),
        ({"codec": {"topk": 0.1}}, "codec.topk: expected table of int, float, str or bool"),
        ({"codec": {"topk": {"r": [1]}}}, r"codec.topk.r: expected int, float, str or bool"),
        ({"aggregation": {"f": {"x": 1}}}, "aggregation.f: expected int, float, str or bool"),
        ({"data": 3}, "data: expected a table"),
    ],
)
def test_bad_types_in_a_tree_name_key_and_type(tree: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Scenario.from_dict(tree)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.num_clients=0", "data.num_clients must be >= 1, got 0"),
        ("clients.per_round=5", "clients.per_round=5 exceeds data.num_clients=4"),
        ("clients.per_round=0", "clients.per_round must be >= 1"),
        ("data.alpha=0", "data.alpha must be > 0"),
        ("attack.fraction=1.0", "attack.fraction must be < 1"),
        ("attack.fraction=-0.1", "attack.fraction must be >= 0"),
        ("attack.fraction=0.2", "needs attack.kind other than 'none'"),
        ("clients.lr=0", "clients.lr must be > 0"),
        ("rounds=0", "rounds must be >= 1"),
        ("seed=-1", "seed must be >= 0"),
        ("data.dataset=cifar10", "data.dataset='cifar10' is not allowed; allowed: 'digits', 'mnis"),
        ("data.partition=pathological", "data.partition='pathological' is not allowed"),
        ("clients.optimizer=rmsprop", "clients.optimizer='rmsprop' is not allowed"),
        ("privacy.mode=secret", "privacy.mode='secret' is not allowed"),
        ("privacy.delta=1.5", "privacy.delta must be < 1"),
        ("model.hidden=64,0", "model.hidden must be >= 1, got 0"),
        ("codec.pipeline=", "codec.pipeline must not be empty"),
        ("codec.pipeline=topk,,int8", "empty stage name"),
        ("aggregation.max_update_norm=-1", "aggregation.max_update_norm must be >= 0"),
        ("eval.fraction_clients=1.5", "eval.fraction_clients must be <= 1"),
        ("data.test_fraction=1", "data.test_fraction must be < 1"),
    ],
)
def test_range_errors(override: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_scenario("smoke", [override])


def test_sections_validate_themselves() -> None:
    with pytest.raises(ValueError, match=r"data.num_clients must be >= 1"):
        DataConfig(num_clients=0)
    with pytest.raises(ValueError, match=r"model.hidden: expected list of int"):
        ModelConfig(hidden=64)
    assert ModelConfig(hidden=[8, 4]).hidden == (8, 4)
    assert AggregationConfig(params={"f": 1}).params["f"] == 1
    assert dict(CodecConfig(params={"topk": {"ratio": 0.1}}).params["topk"]) == {"ratio": 0.1}
    with pytest.raises(ValueError, match=r"attack.fraction must be < 1"):
        AttackConfig(kind="signflip", fraction=1.0)


def test_unknown_builtin_and_missing_file() -> None:
    with pytest.raises(ValueError, match=r"unknown scenario 'nope'; built-in: .*demo"):
        load_scenario("nope")
    with pytest.raises(ValueError, match="not found"):
        load_scenario("/nonexistent/x.toml")


def test_invalid_toml_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("rounds = = 3\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_scenario(str(path))


def test_a_scenario_file_named_without_its_suffix_is_suggested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.toml").write_text('name = "mine"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"unknown scenario 'mine'; did you mean the file mine\.toml\?"):
        load_scenario("mine")
    with pytest.raises(ValueError, match=r"unknown scenario 'other'; built-in: .*demo"):
        load_scenario("other")
