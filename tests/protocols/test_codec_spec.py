"""CodecSpec grammar, canonical text, typed params, the stage registry and pipeline checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import CodecError, CodecPipeline, CodecSpec, StageSpec
from stamen.protocols.codecs import base
from stamen.protocols.codecs.base import Arrays, ArrayStage, available, register


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("dense", "dense"),
        ("topk", "topk(ratio=0.01)"),
        ("topk(ratio=0.05)+int8+zstd", "topk(ratio=0.05)+int8(stochastic=true)+zstd(level=3)"),
        ("int8(stochastic=false)+zstd(level=19)", "int8(stochastic=false)+zstd(level=19)"),
        ("topk(ratio=1)", "topk(ratio=1.0)"),
        ("topk(ratio=1e-05)", "topk(ratio=1e-05)"),
        ("fp16+dense+zstd", "fp16+dense+zstd(level=3)"),
    ],
)
def test_parse_to_string_is_canonical(text: str, canonical: str) -> None:
    spec = CodecSpec.parse(text)
    assert spec.to_string() == canonical
    assert CodecSpec.parse(canonical) == spec


def test_from_pipeline_records_every_param() -> None:
    spec = CodecSpec.from_pipeline(["topk", "int8", "zstd"], {"topk": {"ratio": 0.05}})
    assert spec.stages == (
        StageSpec("topk", (("ratio", 0.05),)),
        StageSpec("int8", (("stochastic", True),)),
        StageSpec("zstd", (("level", 3),)),
    )
    assert spec == CodecSpec.parse(spec.to_string())
    assert CodecSpec.from_pipeline(["topk"], {"topk": {"ratio": 1}}).stages[0].params == (("ratio", 1.0),)


def test_is_dense() -> None:
    assert CodecSpec.parse("dense").is_dense()
    assert CodecSpec.from_pipeline(["dense"]).is_dense()
    assert not CodecSpec.parse("dense+zstd").is_dense()
    assert not CodecSpec.parse("fp16").is_dense()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("topk(ratoi=0.1)", ["topk", "ratoi"]),
        ("int8(stochastic=1)", ["int8", "stochastic"]),
        ("topk(ratio=0)", ["topk", "ratio"]),
        ("topk(ratio=1.5)", ["topk", "ratio"]),
        ("topk(ratio=nan)", ["topk", "ratio"]),
        ("topk(ratio=1_0)", ["topk", "ratio"]),
        ("zstd(level=0)", ["zstd", "level"]),
        ("zstd(level=3.0)", ["zstd", "level"]),
        ("topk(ratio=0.1,ratio=0.2)", ["ratio", "twice"]),
        ("nope", ["nope", "available"]),
        ("", ["length"]),
        ("x" * 1025, ["length"]),
        ("topk+", ["position 4"]),
        ("topk +int8", ["position 4"]),
        ("topk()", ["topk", "key=value"]),
        ("topk(ratio)", ["ratio", "key=value"]),
        ("Dense", ["position 0"]),
    ],
)
def test_parse_errors_name_the_problem(text: str, needles: list[str]) -> None:
    with pytest.raises(CodecError) as info:
        CodecSpec.parse(text)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("names", "params", "needles"),
    [
        (["topk"], {"topk": {"ratio": "big"}}, ["topk", "ratio", "float"]),
        (["topk"], {"topk": {"ratio": True}}, ["topk", "ratio"]),
        (["int8"], {"int8": {"stochastic": 1}}, ["int8", "stochastic", "bool"]),
        (["zstd"], {"zstd": {"level": 2.5}}, ["zstd", "level", "int"]),
        (["int8"], {"int8": {"bits": 4}}, ["int8", "bits"]),
        (["dense"], {"topk": {"ratio": 0.1}}, ["topk", "not in"]),
        (["nope"], None, ["nope"]),
        (["topk"], {"topk": 0.1}, ["topk", "mapping"]),
        (["topk"], [("topk", {})], ["mapping"]),
        ([["topk"]], None, ["unknown"]),
        ([], None, ["1..16"]),
        ("dense", None, ["sequence"]),
    ],
)
def test_from_pipeline_errors(names: list[str], params: dict | None, needles: list[str]) -> None:
    with pytest.raises(CodecError) as info:
        CodecSpec.from_pipeline(names, params)
    assert isinstance(info.value, ValueError)
    for needle in needles:
        assert needle in str(info.value)


_stage: st.SearchStrategy[tuple[str, dict]] = st.one_of(
    st.just(("dense", {})),
    st.just(("fp16", {})),
    st.floats(min_value=1e-6, max_value=1.0, exclude_min=False).map(lambda r: ("topk", {"ratio": r})),
    st.booleans().map(lambda b: ("int8", {"stochastic": b})),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_stage, min_size=1, max_size=4), st.one_of(st.none(), st.integers(1, 22)))
def test_text_roundtrip_property(stages: list[tuple[str, dict]], level: int | None) -> None:
    specs = [StageSpec(n, tuple(sorted(p.items()))) for n, p in stages]
    if level is not None:
        specs.append(StageSpec("zstd", (("level", level),)))
    spec = CodecSpec(tuple(specs))
    assert CodecSpec.parse(spec.to_string()) == spec
    assert CodecPipeline(spec).spec == spec


@settings(max_examples=100, deadline=None)
@given(st.lists(_stage, min_size=1, max_size=4), st.lists(st.sampled_from("+,"), min_size=3, max_size=3))
def test_comma_and_plus_separate_stages_alike(stages: list[tuple[str, dict]], seps: list[str]) -> None:
    """``--set codec.pipeline=topk,int8`` and ``delta create --codec topk+int8`` name one spec."""
    texts = [StageSpec(n, tuple(sorted(p.items()))).to_string() for n, p in stages]
    mixed = texts[0] + "".join(sep + t for sep, t in zip(seps, texts[1:], strict=False))
    assert CodecSpec.parse(mixed) == CodecSpec.parse("+".join(texts))


def test_comma_separated_specs_by_hand() -> None:
    plus = CodecSpec.parse("topk(ratio=0.05)+int8+zstd")
    assert CodecSpec.parse("topk(ratio=0.05),int8,zstd") == plus
    assert CodecSpec.from_pipeline(["topk+int8", "zstd"], {"topk": {"ratio": 0.05}}) == plus
    assert (
        CodecSpec.parse("topk,int8").to_string() == "topk(ratio=0.01)+int8(stochastic=true)"
    )  # canonical "+"
    for bad, needle in [("topk,", "position 4"), (",topk", "position 0"), ("topk,,int8", "position 5")]:
        with pytest.raises(CodecError, match=needle):
            CodecSpec.parse(bad)


def test_registry_rejects_duplicates_and_non_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    assert {"dense", "fp16", "topk", "int8", "zstd"} <= set(available())

    class Again(ArrayStage):
        name = "dense"

        def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
            return arrays

        def decode(self, arrays: Arrays) -> Arrays:
            return arrays

    with pytest.raises(ValueError, match="already registered"):
        register(Again)
    with pytest.raises(ValueError, match="neither"):
        register(int)


@pytest.mark.parametrize(
    ("text", "match"),
    [("zstd+dense", "only last"), ("zstd", "array stage"), ("dense+zstd+zstd", "only last")],
)
def test_pipeline_checks_stage_order(text: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        CodecPipeline(CodecSpec.parse(text))


def test_pipeline_canonicalizes_hand_built_specs() -> None:
    spec = CodecSpec((StageSpec("topk"), StageSpec("zstd", (("level", 5),))))
    assert CodecPipeline(spec).spec.to_string() == "topk(ratio=0.01)+zstd(level=5)"
    with pytest.raises(CodecError, match="twice"):
        CodecPipeline(CodecSpec((StageSpec("zstd", (("level", 5), ("level", 6))),)))
    with pytest.raises(CodecError, match="ratio"):
        CodecPipeline(CodecSpec((StageSpec("topk", (("ratio", 2.0),)),)))
