"""Codec building blocks: stage interfaces, the stage registry and the codec spec.

A codec is a pipeline of *stages* written as text, e.g. ``"topk(ratio=0.01)+int8(stochastic=true)
+zstd(level=3)"``. :class:`ArrayStage` stages transform a dict of named numpy arrays; one optional
:class:`ByteStage` at the end losslessly transforms the serialized bytes. Stages register by name
with :func:`register`; adding a codec is one new file plus ``@register`` (and an import in
``codecs/__init__.py``), never a pipeline change.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, TypeVar

import numpy as np

from ..container import WireArray
from ..errors import CodecError

__all__ = [
    "MAX_DECODE_ELEMENTS",
    "MAX_SPEC_LENGTH",
    "ArrayStage",
    "Arrays",
    "ByteStage",
    "CodecSpec",
    "Layout",
    "Scalar",
    "StageSpec",
    "available",
    "lookup",
    "register",
    "resolve_params",
]

Arrays = dict[str, np.ndarray]
#: Container entries by key, exact or as upper bounds (see :meth:`ArrayStage.encoded_layout`).
Layout = dict[str, WireArray]
Scalar = int | float | str | bool

MAX_SPEC_LENGTH = 1024
MAX_STAGES = 16
#: Default bound on the elements one decode step may materialize (the pipeline passes the
#: receiver's tensor-table size instead).
MAX_DECODE_ELEMENTS = 2**31

_NAME = r"[a-z][a-z0-9_]{0,31}"
_NAME_RE = re.compile(_NAME)
_VALUE_RE = re.compile(r"[A-Za-z0-9_.+\-]{1,64}")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_STAGE_RE = re.compile(rf"({_NAME})(?:\(([^()]*)\))?")
_PARAM_RE = re.compile(rf"({_NAME})=([A-Za-z0-9_.+\-]{{1,64}})")


class _Stage:
    """Shared parameter handling of array and byte stages.

    Parameters
    ----------
    params : Mapping[str, Scalar] or None
        Stage parameters; missing ones take ``defaults``. Validated by :func:`resolve_params`.
    max_elements : int
        Upper bound on the elements a ``decode`` call may allocate (zip-bomb guard).
    """

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({})

    def __init__(
        self, params: Mapping[str, Scalar] | None = None, *, max_elements: int = MAX_DECODE_ELEMENTS
    ) -> None:
        self.params: Mapping[str, Scalar] = dict(resolve_params(type(self), params or {}))
        self.max_elements = max_elements

    @classmethod
    def check_params(cls, params: Mapping[str, Scalar]) -> None:
        """Check value ranges of fully resolved, well-typed params; raise :class:`CodecError`."""


class ArrayStage(_Stage, ABC):
    """A stage over the intermediate representation: a dict of named numpy arrays.

    ``decode(encode(x))`` must return the same keys with float arrays of the same shapes. Keys a
    stage derives (e.g. ``"3" -> "3.i", "3.v"``) must let ``decode`` find exactly what ``encode``
    produced; arrays a stage does not handle pass through unchanged. ``decode`` receives
    untrusted arrays and must raise :class:`~stamen.protocols.errors.StamenError` on anything
    unexpected.

    ``uses_rng`` is False only for a stage whose ``encode`` never reads its ``rng`` (a caller may
    then skip seeding a generator for a pipeline of such stages: the bytes are the same).
    """

    uses_rng: ClassVar[bool] = True

    @abstractmethod
    def encode(self, arrays: Arrays, rng: np.random.Generator) -> Arrays:
        """Transform named arrays for the wire; ``rng`` drives any randomness."""

    @abstractmethod
    def decode(self, arrays: Arrays) -> Arrays:
        """Invert :meth:`encode` (exactly, or up to the stage's documented loss)."""

    def encoded_layout(self, layout: Layout) -> Layout | None:
        """The entries :meth:`encode` makes from arrays described by ``layout``.

        Exact entries where the output's dtype and shape follow from the input's alone; upper
        bounds (``exact=False``) where they depend on the values, or where an entry may be
        absent. Receivers use this to bound a payload before they decompress or decode it.

        Returns
        -------
        Layout or None
            None (the default) means unknown: the pipeline then bounds the container by a
            generic 16 bytes per element.
        """
        return None


class ByteStage(_Stage, ABC):
    """A final, lossless stage over the serialized container bytes (e.g. a compressor)."""

    @abstractmethod
    def encode(self, data: bytes) -> bytes:
        """Transform the serialized bytes."""

    @abstractmethod
    def decode(self, data: bytes, max_size: int, *, exact: bool = False) -> bytes:
        """Invert :meth:`encode`, refusing (``MalformedUpdate``) before it allocates, any output
        larger than ``max_size`` bytes, or (``exact=True``) of any size other than ``max_size``."""


StageClass = type[ArrayStage] | type[ByteStage]
_C = TypeVar("_C", bound=type[_Stage])
_REGISTRY: dict[str, type[_Stage]] = {}


def register(cls: _C) -> _C:
    """Class decorator adding a stage to the registry under ``cls.name``.

    Raises
    ------
    ValueError
        If the name is malformed or already registered, or ``cls`` is not a stage.
    """
    if not issubclass(cls, (ArrayStage, ByteStage)):
        raise ValueError(f"{cls!r} is neither an ArrayStage nor a ByteStage")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"stage name {name!r} must match {_NAME}")
    if name in _REGISTRY:
        raise ValueError(f"codec stage {name!r} is already registered by {_REGISTRY[name]!r}")
    for key, value in cls.defaults.items():
        if not _NAME_RE.fullmatch(key) or not isinstance(value, (int, float, str)):
            raise ValueError(f"stage {name!r}: bad default {key}={value!r}")
    _REGISTRY[name] = cls
    return cls


def available() -> list[str]:
    """Names of all registered stages, sorted."""
    return sorted(_REGISTRY)


def lookup(name: str) -> StageClass:
    """Return the stage class registered as ``name``; unknown names raise :class:`CodecError`."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CodecError(f"unknown codec stage {name!r}; available: {', '.join(available())}")
    assert issubclass(cls, (ArrayStage, ByteStage))
    return cls


def _coerce(stage: str, key: str, default: Scalar, value: object) -> Scalar:
    """Type-check one param value against the type of its default (ints widen to float)."""
    where = f"codec stage {stage!r} param {key!r}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise CodecError(f"{where}: {value!r} is not finite")
            return float(value)
    elif isinstance(value, str) and _VALUE_RE.fullmatch(value):
        return value
    raise CodecError(f"{where}: expected {type(default).__name__}, got {value!r}")


def _from_text(stage: str, key: str, default: Scalar, text: str) -> Scalar:
    """Read one param value from spec text, typed by its default."""
    value: object = text
    if isinstance(default, bool):
        value = {"true": True, "false": False}.get(text, text)
    elif isinstance(default, int):
        value = int(text) if _INT_RE.fullmatch(text) else text
    elif isinstance(default, float):
        value = float(text) if _FLOAT_RE.fullmatch(text) else text
    return _coerce(stage, key, default, value)


def resolve_params(cls: type[_Stage], given: Mapping[str, object]) -> tuple[tuple[str, Scalar], ...]:
    """Validate ``given`` against ``cls.defaults`` and fill in the missing params.

    Returns
    -------
    tuple[tuple[str, Scalar], ...]
        Every param of the stage, sorted by key.

    Raises
    ------
    CodecError
        Naming the stage and key, for an unknown key, a wrong type or an out-of-range value.
    """
    if not isinstance(given, Mapping):
        raise CodecError(f"params of codec stage {cls.name!r} must be a mapping, got {given!r}")
    for key in given:
        if key not in cls.defaults:
            known = ", ".join(sorted(cls.defaults)) or "none"
            raise CodecError(f"codec stage {cls.name!r} has no param {key!r} (params: {known})")
    resolved = {
        key: _coerce(cls.name, key, default, given.get(key, default)) for key, default in cls.defaults.items()
    }
    cls.check_params(resolved)
    return tuple(sorted(resolved.items()))


def _format(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a codec spec: its registered name and its params sorted by key."""

    name: str
    params: tuple[tuple[str, Scalar], ...] = ()

    def to_string(self) -> str:
        """``name`` or ``name(key=value,...)`` with params in sorted order."""
        if not self.params:
            return self.name
        body = ",".join(f"{k}={_format(v)}" for k, v in sorted(self.params))
        return f"{self.name}({body})"


def _parse_stage(name: str, body: str | None) -> StageSpec:
    cls = lookup(name)
    if body is None:
        return StageSpec(name, resolve_params(cls, {}))
    texts: dict[str, str] = {}
    for item in body.split(","):
        match = _PARAM_RE.fullmatch(item)
        if match is None:
            raise CodecError(f"codec stage {name!r}: bad param {item!r} (want key=value)")
        key, text = match.groups()
        if key in texts:
            raise CodecError(f"codec stage {name!r}: param {key!r} given twice")
        if key not in cls.defaults:
            resolve_params(cls, {key: text})  # raises the unknown-key error
        texts[key] = text
    typed = {k: _from_text(name, k, cls.defaults[k], t) for k, t in texts.items()}
    return StageSpec(name, resolve_params(cls, typed))


@dataclass(frozen=True)
class CodecSpec:
    """A codec as an ordered tuple of stages; its text form is recorded in every envelope.

    Build with :meth:`parse` or :meth:`from_pipeline`, which validate every name and param and
    record all params explicitly, so ``to_string`` is canonical.
    """

    stages: tuple[StageSpec, ...]

    def to_string(self) -> str:
        """Canonical compact text, e.g. ``"topk(ratio=0.01)+int8(stochastic=true)"``."""
        return "+".join(stage.to_string() for stage in self.stages)

    def is_dense(self) -> bool:
        """True iff the spec is exactly the plain fp32 dense codec (no other stage)."""
        return self.stages == (StageSpec("dense"),)

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Parse spec text (strict grammar, no whitespace, at most 1024 characters).

        Grammar: ``stage (sep stage)*`` with ``sep`` ``"+"`` or ``","`` (``topk+int8`` and
        ``topk,int8`` are the same spec, as ``--set codec.pipeline`` writes it), ``stage = name
        ["(" key "=" value ("," key "=" value)* ")"]``; names and keys match ``[a-z][a-z0-9_]*``;
        values are typed by the param's default (``true``/``false``, integers, finite decimals,
        or ``[A-Za-z0-9_.+-]+``).

        Raises
        ------
        CodecError
            On any syntax error, unknown stage or param, bad value, or a too-long text.
        """
        if not isinstance(text, str):
            raise CodecError(f"codec spec must be a str, got {type(text).__name__}")
        if not 0 < len(text) <= MAX_SPEC_LENGTH:
            raise CodecError(f"codec spec length {len(text)} not in 1..{MAX_SPEC_LENGTH}")
        stages, pos = [], 0
        while True:
            match = _STAGE_RE.match(text, pos)
            if match is None:
                raise CodecError(f"codec spec {text!r}: expected a stage name at position {pos}")
            stages.append(_parse_stage(match.group(1), match.group(2)))
            pos = match.end()
            if pos == len(text):
                break
            if text[pos] not in "+," or pos + 1 == len(text):
                raise CodecError(f"codec spec {text!r}: expected '+' or ',' and a stage at position {pos}")
            pos += 1
        return cls._checked(stages)

    @classmethod
    def from_pipeline(
        cls, names: Sequence[str], params: Mapping[str, Mapping[str, Scalar]] | None = None
    ) -> CodecSpec:
        """Build a spec from stage names and per-stage-name params.

        Parameters
        ----------
        names : Sequence[str]
            Stage names in encode order, e.g. ``["topk", "int8", "zstd"]``; an item may join
            several with ``+`` (``["topk+int8"]``), as :meth:`parse` accepts.
        params : Mapping[str, Mapping[str, Scalar]] or None
            Params keyed by stage name, e.g. ``{"topk": {"ratio": 0.01}}``; applied to every
            occurrence of that stage. Missing params take the stage's defaults.

        Raises
        ------
        CodecError
            For an unknown stage, params for a stage not in ``names``, or an unknown,
            ill-typed or out-of-range param (the message names the stage and key).
        """
        if isinstance(names, str):
            raise CodecError("names must be a sequence of stage names, not a str")
        # "topk+int8" as parse() reads it; a non-str name is left for lookup() to refuse
        names = [part for name in names for part in (name.split("+") if isinstance(name, str) else [name])]
        params = params or {}
        if not isinstance(params, Mapping):
            raise CodecError(f"params must map stage names to param mappings, got {params!r}")
        for stage in params:
            if stage not in names:
                raise CodecError(f"params given for codec stage {stage!r} not in {list(names)}")
        stages = []
        for name in names:
            stage_cls = lookup(name)
            stages.append(StageSpec(name, resolve_params(stage_cls, params.get(name, {}))))
        return cls._checked(stages)

    @classmethod
    def _checked(cls, stages: Sequence[StageSpec]) -> CodecSpec:
        if not 0 < len(stages) <= MAX_STAGES:
            raise CodecError(f"a codec has 1..{MAX_STAGES} stages, got {len(stages)}")
        spec = cls(tuple(stages))
        if len(spec.to_string()) > MAX_SPEC_LENGTH:
            raise CodecError(f"codec spec text longer than {MAX_SPEC_LENGTH} characters")
        return spec
