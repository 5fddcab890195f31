"""Generic machinery behind :mod:`stamen.simulations.scenario`: frozen, self-validating config
dataclasses built from TOML-shaped trees, with type coercion, range rules and ``--set`` parsing.

A new setting is one new annotated field with its rules (``_f(default, ge=..., choices=...)``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any, ClassVar

Scalar = int | float | str | bool
_HINTS: dict[type, dict[str, Any]] = {}
_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
}


def _f(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with validation rules: gt/ge/lt/le bounds and ``choices`` (applied to
    every item of a tuple) and ``nonempty`` (strings and tuples)."""
    return field(default=default, default_factory=factory, metadata=rules)


class _Config:
    """Generic coercion and validation shared by every section (and :class:`Scenario`)."""

    SECTION: ClassVar[str] = ""  # dotted prefix used in error messages and overrides
    EXTRAS: ClassVar[str | None] = None  # field that collects the section's other keys

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in _fields(type(self)):
            # open-ended params are inlined in the tree, so their keys read "aggregation.f"
            inlined = f.name == self.EXTRAS
            key = self.SECTION if inlined else ".".join(filter(None, (self.SECTION, f.name)))
            value = _coerce(getattr(self, f.name), hints[f.name], key)
            _check_rules(key, value, f.metadata)
            object.__setattr__(self, f.name, value)  # frozen: normalized (tuple, float, proxy)
        self._check()

    def _check(self) -> None:
        """Cross-field rules; sections override this."""


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(typing.cast(Any, cls))


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and issubclass(tp, _Config)


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) is Mapping


def _field_names(cls: type[_Config]) -> list[str]:
    return [f.name for f in _fields(cls) if f.name != cls.EXTRAS]


def _unknown(key: str, cls: type[_Config]) -> ValueError:
    if cls.EXTRAS is not None and key.rpartition(".")[2] == cls.EXTRAS:
        return ValueError(
            f"key '{key}' is reserved; write parameters directly as {cls.SECTION}.<name> = value"
        )
    where = f"[{cls.SECTION}]" if cls.SECTION else "a scenario"
    allowed = ", ".join(_field_names(cls))
    more = " or any parameter name" if cls.EXTRAS else ""
    return ValueError(f"unknown key '{key}'; allowed in {where}: {allowed}{more}")


def _build(cls: type[_Config], tree: Any, prefix: str) -> Any:
    """Instantiate ``cls`` from a TOML-shaped tree; unknown keys fail unless the section has
    EXTRAS, which then collects them."""
    if not isinstance(tree, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'scenario'}: expected a table, got {tree!r}")
    hints, names = _hints(cls), _field_names(cls)
    kwargs: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in tree.items():
        if key in names:
            sub = hints[key]
            kwargs[key] = _build(sub, value, f"{prefix}{key}.") if _is_section(sub) else value
        elif cls.EXTRAS is not None and isinstance(key, str) and key != cls.EXTRAS:
            extras[key] = value
        else:
            raise _unknown(f"{prefix}{key}", cls)
    if cls.EXTRAS is not None:
        kwargs[cls.EXTRAS] = extras
    return cls(**kwargs)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, _Config):
        out: dict[str, Any] = {}
        for f in _fields(type(obj)):
            value = _to_plain(getattr(obj, f.name))
            if f.name == obj.EXTRAS:
                out.update(value)
            else:
                out[f.name] = value
        return out
    return _copy_tree(obj)


def _copy_tree(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_copy_tree(v) for v in obj]
    return obj


def _leaf_type(root: type, path: list[str]) -> Any:
    """The annotated type an override path ends at; unknown keys and whole sections fail."""
    tp: Any = root
    for depth, seg in enumerate(path):
        key = ".".join(path[: depth + 1])
        if _is_section(tp):
            if seg in _field_names(tp):
                tp = _hints(tp)[seg]
            elif tp.EXTRAS is not None and seg and seg != tp.EXTRAS:
                tp = typing.get_args(_hints(tp)[tp.EXTRAS])[1]
            else:
                raise _unknown(key, tp)
        elif _is_mapping(tp) and seg:
            tp = typing.get_args(tp)[1]
        else:
            raise ValueError(f"unknown key '{key}'")
    if _is_section(tp) or _is_mapping(tp):
        table = ".".join(path)
        raise ValueError(f"'{table}' is a table; set one of its keys ({table}.<key>=value)")
    return tp


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(args[0])}"
    if _is_mapping(tp):
        return f"table of {_type_name(args[1])}"
    if isinstance(tp, types.UnionType):
        names = [_type_name(a) for a in args]
        return ", ".join(names[:-1]) + " or " + names[-1]
    return "table" if _is_section(tp) else getattr(tp, "__name__", str(tp))


def _bad(key: str, value: Any, tp: Any) -> ValueError:
    return ValueError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _scalar_ok(value: Any, tp: Any) -> bool:
    """``value`` fits scalar type ``tp``: bools are not ints, an int is fine for a float."""
    if isinstance(value, bool) or tp is bool:
        return isinstance(value, bool) and tp is bool
    return isinstance(value, tp) or (tp is float and isinstance(value, int))


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """Check one scalar against int/float/str/bool and normalize it; floats must be finite."""
    if tp not in (int, float, str, bool) or not _scalar_ok(value, tp):
        raise _bad(key, value, tp)
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{key}: expected a finite float, got {value!r}")
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Type-check ``value`` against annotation ``tp`` and normalize it (tuple, float, proxy)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _bad(key, value, tp)
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _bad(key, value, tp)
        return MappingProxyType({k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()})
    if isinstance(tp, types.UnionType):
        arm = next((a for a in args if _scalar_ok(value, a)), None)
        if arm is None:
            raise _bad(key, value, tp)
        return _coerce_scalar(value, arm, key)
    if _is_section(tp):
        if not isinstance(value, tp):
            raise _bad(key, value, tp)
        return value
    return _coerce_scalar(value, tp, key)


def _check_rules(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    if rules.get("nonempty") and len(value) == 0:
        raise ValueError(f"{key} must not be empty")
    for item in value if isinstance(value, tuple) else (value,):
        if "choices" in rules and item not in rules["choices"]:
            allowed = ", ".join(repr(c) for c in rules["choices"])
            raise ValueError(f"{key}={item!r} is not allowed; allowed: {allowed}")
        for name, (holds, symbol) in _BOUNDS.items():
            if name in rules and not holds(item, rules[name]):
                raise ValueError(f"{key} must be {symbol} {rules[name]}, got {item!r}")


def _parse_text(text: str, tp: Any, key: str) -> Any:
    """Parse a ``--set`` string as annotation ``tp``; returns the TOML form (lists for tuples)."""
    if typing.get_origin(tp) is tuple:
        items = [t.strip() for t in text.split(",")] if text else []
        return [_parse_text(t, typing.get_args(tp)[0], f"{key}[{i}]") for i, t in enumerate(items)]
    arms = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    for arm in (int, float, bool, str):
        if arm in arms:
            parsed = _parse_scalar(text, arm)
            if parsed is not None:
                return parsed
    raise ValueError(f"{key}: cannot parse {text!r} as {_type_name(tp)}")


def _parse_scalar(text: str, tp: type) -> Scalar | None:
    if tp is bool:
        return {"true": True, "false": False}.get(text.lower())
    if tp is str:
        return text
    try:
        return int(text) if tp is int else float(text)
    except ValueError:
        return None


def to_flat(obj: _Config, prefix: str) -> dict[str, Any]:
    """``obj`` as one flat mapping of dotted keys (``"train.sparse.density"``) to scalars or lists of
    scalars: what a Flower ``ConfigRecord`` holds. Open-ended parameter tables are not flattenable
    (a :class:`ValueError` names them); the wire specs have none. Inverse: :func:`from_flat`."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list) and any(isinstance(v, Mapping) for v in node):
            raise ValueError(f"{path}: a list of tables cannot be flattened")
        else:
            out[path] = node

    if obj.EXTRAS is not None:
        raise ValueError(f"{type(obj).__name__} has open-ended parameters and cannot be flattened")
    walk(_to_plain(obj), prefix)
    return out


def from_flat(cls: type[_Config], flat: Mapping[str, Any], prefix: str) -> Any:
    """Rebuild ``cls`` from the keys of ``flat`` under ``prefix.`` (other keys are ignored); strict:
    unknown keys under the prefix fail, values are type- and range-checked like the TOML."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "."):
            continue
        node = tree
        *parents, leaf = key[len(prefix) + 1 :].split(".")
        for seg in parents:
            node = node.setdefault(seg, {})
        node[leaf] = list(value) if isinstance(value, list | tuple) else value
    return _build(cls, tree, prefix + ".")
