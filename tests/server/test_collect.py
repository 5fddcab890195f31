"""The round driver's collector and aggregation: decode, validate, reject-and-continue, aggregate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stamen.protocols import CodecPipeline, CodecSpec, Signer, Verifier, encode_update, keys, model_hash
from stamen.server.aggregators import create
from stamen.server.driver.collect import CollectPolicy, UpdateCollector, flatten, unflatten
from stamen.server.driver.driver import AggregateMode
from stamen.server.driver.types import Reply, TrainTask
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

BASE = {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}
HASH = model_hash(BASE)
DENSE = CodecSpec.from_pipeline(["dense"])
INSTR = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())


def _env(
    delta: dict[str, np.ndarray],
    sender: str,
    base_hash: str = HASH,
    signer: Signer | None = None,
    version: int = 1,
    codec: CodecSpec = DENSE,
) -> bytes:
    rng = np.random.default_rng(0)
    return encode_update(
        delta, codec, base_hash=base_hash, version=version, sender=sender, rng=rng, signer=signer
    )


def _delta(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), v, np.float32), "b": np.full(3, v, np.float32)}


def _reply(client: str, v: float, n: float = 1, **kw: object) -> Reply:
    data = _env(_delta(v), client, **kw)  # type: ignore[arg-type]
    return Reply(client, envelope=data, metrics={keys.NUM_EXAMPLES: n}, nbytes=len(data))


def _collector(clients: list[str], **policy: object) -> UpdateCollector:
    tasks = [TrainTask(c, INSTR, BASE, None, HASH) for c in clients]
    return UpdateCollector(BASE, tasks, CollectPolicy(**policy))  # type: ignore[arg-type]


def _aggregate(collector: UpdateCollector, rule: str = "fedavg") -> dict[str, np.ndarray] | None:
    return AggregateMode(create(rule), 1.0).close(1, collector.finish())


def test_weighted_aggregate_of_envelopes() -> None:
    c = _collector(["a", "b"])
    assert c.add(_reply("a", 1.0, 1)) and c.add(_reply("b", 4.0, 2))
    new = _aggregate(c)
    assert new is not None
    np.testing.assert_allclose(new["w"], np.full((2, 3), 3.0))  # (1*1 + 2*4) / 3
    np.testing.assert_allclose(new["b"], np.full(3, 4.0))
    assert c.stats.accepted == 2 and c.stats.rejected == 0
    assert c.stats.bytes_up == len(_env(_delta(1.0), "a")) + len(_env(_delta(4.0), "b"))


def test_rows_follow_cohort_order_not_arrival_order() -> None:
    c = _collector(["a", "b", "c"])
    for client, v in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
        c.add(_reply(client, v))
    done = c.finish()
    assert done.senders == ["a", "b", "c"]
    np.testing.assert_array_equal(done.stack[:, 0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"garbage", "MalformedUpdate"),
        (_env(_delta(1.0), "bad", base_hash="0" * 64), "BaseModelMismatch"),
        (_env({"w": np.full((2, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)}, "bad"), "non-finite"),
        (_env({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}, "bad"), "Validation"),
        (_env({"x": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}, "bad"), "Validation"),
        (_env(_delta(1.0), "good"), "names sender 'good'"),  # bad's reply claims to be good
        (_env(_delta(1.0), "bad", version=2**62), "model version"),
    ],
)
def test_bad_updates_are_rejected_and_the_round_goes_on(data: bytes, reason: str) -> None:
    c = _collector(["bad", "good"])
    assert not c.add(Reply("bad", envelope=data, metrics={keys.NUM_EXAMPLES: 5}))
    assert c.add(_reply("good", 2.0))
    assert c.stats.rejected == 1 and reason in c.stats.reasons[0]
    new = _aggregate(c)
    assert new is not None
    np.testing.assert_allclose(new["w"], np.full((2, 3), 2.0))


@pytest.mark.parametrize("codec", ["fedzip", "int8", "fp16+zstd", "dense+zstd"])
def test_an_update_in_another_codec_than_asked_is_refused_undecoded(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round asks for dense: a signed envelope naming another codec is a ``codec`` rejection
    and its payload is never decoded (a costlier decoder is no lever on the server's CPU)."""
    signer = Signer.generate()
    decoded: list[str] = []
    dense_decode = CodecPipeline.decode

    def spy(pipeline: CodecPipeline, *args: object, **kwargs: object) -> object:
        decoded.append(pipeline.spec.to_string())
        return dense_decode(pipeline, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CodecPipeline, "decode", spy)
    c = _collector(["bad", "good"], verifier=Verifier([signer.public_key_bytes()]))
    spec = CodecSpec.parse(codec)
    assert not c.add(_reply("bad", 1.0, signer=signer, codec=spec))
    assert c.add(_reply("good", 2.0, signer=signer))
    assert decoded == ["dense"] and c.stats.kinds == ["codec"]
    want = f"update is encoded with codec {spec.to_string()!r}, the receiver asked for 'dense'"
    assert c.stats.reasons == [f"bad: CodecMismatch: {want}"]


@pytest.mark.parametrize(
    "metrics",
    [
        {keys.NUM_EXAMPLES: math.inf},
        {keys.NUM_EXAMPLES: math.nan},
        {keys.NUM_EXAMPLES: -3},
        {keys.NUM_EXAMPLES: "many"},
        {},
        {keys.NUM_EXAMPLES: 1, keys.EPSILON: -5.0},
        {keys.NUM_EXAMPLES: 1, keys.EPSILON: math.nan},
        {keys.NUM_EXAMPLES: 1, keys.TRAIN_LOSS: math.inf},
    ],
)
def test_hostile_reported_numbers_are_counted_rejections(metrics: dict[str, object]) -> None:
    c = _collector(["bad", "good"])
    data = _env(_delta(1.0), "bad")
    assert not c.add(Reply("bad", envelope=data, metrics=metrics))
    assert c.add(_reply("good", 2.0))
    done = c.finish()
    assert done.senders == ["good"] and c.stats.rejected == 1
    assert c.stats.client_epsilon is None


def test_one_reply_per_client_and_only_from_those_asked() -> None:
    c = _collector(["a", "b"])
    assert c.add(_reply("a", 1.0))
    assert not c.add(_reply("a", 1.0))  # a replay in the same round
    assert not c.add(_reply("x", 1.0))  # never asked
    c.finish()
    assert c.stats.reasons == [
        "a: second reply in one round",
        "x: not asked this round",
        "b: no reply before the timeout",
    ]


def test_huge_reported_counts_are_capped() -> None:
    """One client claiming 1e12 examples does not take the whole step."""
    c = _collector(["a", "b", "c"], declared={"a": 10, "b": 10, "c": 10})
    for client, v, n in (("a", 1.0, 10), ("b", 1.0, 10), ("c", 4.0, 1e12)):
        c.add(_reply(client, v, n))
    np.testing.assert_array_equal(c.finish().weights, [10, 10, 10])
    c = _collector(["a", "b", "c"])  # adaptive: 10 x the round's median
    for client, v, n in (("a", 1.0, 10), ("b", 1.0, 20), ("c", 4.0, 1e12)):
        c.add(_reply(client, v, n))
    np.testing.assert_array_equal(c.finish().weights, [10, 20, 200])
    c = _collector(["a", "b"], max_examples=15)
    for client, v, n in (("a", 1.0, 10), ("b", 1.0, 1e12)):
        c.add(_reply(client, v, n))
    np.testing.assert_array_equal(c.finish().weights, [10, 15])


@pytest.mark.parametrize("huge", [1e6, 1e30])
def test_adaptive_norm_bound_rejects_a_huge_finite_update(huge: float) -> None:
    c = _collector(["a", "b", "c", "d"])
    for client, v in (("a", 1.0), ("b", 1.5), ("c", 2.0), ("d", huge)):
        c.add(_reply(client, v))
    new = _aggregate(c)
    assert new is not None and np.abs(new["w"]).max() < 3
    assert c.stats.rejected == 1 and c.stats.reasons[0].startswith("d: ")


def test_adaptive_norm_bound_can_be_turned_off() -> None:
    c = _collector(["a", "b", "c", "d"], norm_ratio=0.0)
    for client, v in (("a", 1.0), ("b", 1.5), ("c", 2.0), ("d", 1e6)):
        c.add(_reply(client, v))
    new = _aggregate(c)
    assert new is not None and new["w"].max() > 1e5


def test_absolute_norm_bound_and_signatures() -> None:
    c = _collector(["big"], max_norm=1.0)
    assert not c.add(_reply("big", 10.0))
    assert "exceeds bound" in c.stats.reasons[0]
    signer, other = Signer.generate(), Signer.generate()
    c = _collector(["s", "u", "w", "p"], verifier=Verifier([signer.public_key_bytes()]))
    assert c.add(_reply("s", 0.1, signer=signer))
    assert not c.add(_reply("u", 0.1))
    assert not c.add(_reply("w", 0.1, signer=other))
    plain = {k: v + 0.1 for k, v in BASE.items()}
    assert not c.add(Reply("p", weights=plain, metrics={keys.NUM_EXAMPLES: 1}))  # unsigned plain reply
    assert [r.split(": ")[1] for r in c.stats.reasons] == [
        "SignatureError",
        "SignatureError",
        "ValidationError",
    ]


def test_plain_flower_reply_is_a_delta_against_the_base() -> None:
    c = _collector(["p"])
    plain = {k: v + 0.5 for k, v in BASE.items()}
    assert c.add(Reply("p", weights=plain, metrics={keys.NUM_EXAMPLES: 3}))
    np.testing.assert_allclose(c.finish().stack, 0.5)


def test_no_accepted_update_keeps_the_model() -> None:
    c = _collector(["bad"])
    c.add(Reply("bad", envelope=b"", metrics={keys.NUM_EXAMPLES: 1}))
    assert _aggregate(c) is None


def test_flatten_roundtrip() -> None:
    c = _collector(["a"])
    row = np.empty(9, np.float32)
    flatten(_delta(3.0), c.table, row)
    back = unflatten(row, c.table)
    assert all(np.array_equal(back[k], _delta(3.0)[k]) for k in BASE)


@pytest.mark.parametrize(
    ("w", "b", "match"),
    [
        (0.0, np.inf, "b: non-finite"),  # found in the second tensor, after a clean first one
        (-np.inf, 0.0, "w: non-finite"),
        (np.nan, np.nan, "w: non-finite"),  # the first bad tensor in table order is named
        (3e19, 0.0, "overflows"),  # finite, but its square sum overflows float32: not "non-finite"
        (1e19, 1e19, "overflows"),
    ],
)
def test_validate_delta_names_non_finite_tensors_and_overflow(w: float, b: float, match: str) -> None:
    """The finiteness scan runs only when a sum of squares is not finite: still names the tensor."""
    from stamen.protocols import tensor_table
    from stamen.protocols.errors import ValidationError
    from stamen.server.driver.reply import validate_delta

    delta = {"w": np.full((2, 3), w, np.float32), "b": np.full(3, b, np.float32)}
    delta["w"][0, 0] = 1.0  # not every value bad
    with pytest.raises(ValidationError, match=match):
        validate_delta(delta, tensor_table(BASE), 0.0)
    ok = validate_delta(
        {"w": np.full((2, 3), 2.0, np.float32), "b": np.ones(3, np.float32)}, tensor_table(BASE), 0.0
    )
    assert ok == pytest.approx(math.sqrt(6 * 4 + 3))


@pytest.mark.parametrize("signed", [False, True])
def test_the_expected_header_path_accepts_what_the_strict_path_does(
    signed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply exactly as asked for takes the expected-header path (issue #15): the same delta,
    norm and row as the strict parse, a writable delta of its own; non-finite values still refused."""
    import stamen.server.driver.reply as reply_mod

    signer = Signer.generate() if signed else None
    policy = CollectPolicy(verifier=Verifier([signer.public_key_bytes()])) if signer else CollectPolicy()
    task = TrainTask("a", INSTR, BASE, None, HASH)
    reply = _reply("a", 0.5, 2, signer=signer)
    taken: list[bool] = []
    real = reply_mod.decode_expected
    monkeypatch.setattr(reply_mod, "decode_expected", lambda *a, **k: taken.append(True) or real(*a, **k))
    fast_row = np.empty(9, np.float32)
    fast = reply_mod.accept_reply(reply, task, BASE, collect_table(), policy, fast_row)
    monkeypatch.setattr(reply_mod, "decode_expected", lambda *a, **k: None)
    slow_row = np.empty(9, np.float32)
    slow = reply_mod.accept_reply(reply, task, BASE, collect_table(), policy, slow_row)
    assert taken == [True]
    assert (fast.examples, fast.norm) == (slow.examples, slow.norm) == (2.0, pytest.approx(1.5))
    np.testing.assert_array_equal(fast_row, slow_row)
    for name in slow.delta:
        np.testing.assert_array_equal(fast.delta[name], slow.delta[name])
        assert fast.delta[name].flags.writeable
    monkeypatch.setattr(reply_mod, "decode_expected", real)
    bad = _reply("a", math.inf, 2, signer=signer)
    c = UpdateCollector(BASE, [task], policy)
    assert not c.add(bad) and "non-finite" in c.stats.reasons[0]


def collect_table() -> tuple:
    from stamen.protocols import tensor_table

    return tensor_table(BASE)
