"""The one configuration mechanism: frozen dataclasses built from plain mappings, with checks.

Every configuration in mwmae (model presets, pretraining, fine-tuning) is a frozen dataclass.
`build(cls, mapping, where)` turns a nested mapping (from YAML plus dotted overrides) into one,
and every problem comes back as a `ConfigError` naming the dotted key:

- an unknown key, with the closest known key as a suggestion (`check_keys`);
- a wrong type, naming the expected type (`coerce`; ints are never silently truncated,
  `"1"` is not an int, an int is accepted for a float field);
- a value out of range, naming the range (`field(..., metadata=bounds(...))`).

Ranges are declared beside the field:

    base_lr: float = field(default=1.5e-5, metadata=bounds(gt=0))
    mask_ratio: float = field(default=0.8, metadata=bounds(gt=0, lt=1))
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from mwmae.errors import ConfigError

T = TypeVar("T")


def bounds(
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    text: str | None = None,
    limit: float | None = None,
) -> dict[str, Any]:
    """Field metadata declaring the allowed numeric range (checked by `build`); `text` says
    the range in words for error messages (default: "a value > 0 and < 1" and the like).
    `limit` is a sanity upper bound for sizes and counts, far beyond any real use, so that a
    typo (1e11) fails at once naming the key instead of allocating without bound."""
    return {"bounds": {"ge": ge, "gt": gt, "le": le, "lt": lt, "text": text, "limit": limit}}


def check_keys(keys: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise `ConfigError` for the first key of `keys` not in `known`, suggesting the closest."""
    known = sorted(known)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {_join(where, key)!r}{hint} (known: {', '.join(known)})"
            )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (lists become tuples for tuple
    fields, ints become floats for float fields). Raise `ConfigError` naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        items = [coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return build(tp, value, key)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _check_bounds(value: Any, spec: Mapping[str, Any], key: str) -> None:
    if value is None or isinstance(value, str):  # a keyword such as "auto" has no range
        return
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        ok = (
            (spec["ge"] is None or v >= spec["ge"])
            and (spec["gt"] is None or v > spec["gt"])
            and (spec["le"] is None or v <= spec["le"])
            and (spec["lt"] is None or v < spec["lt"])
        )
        if not ok:
            raise ConfigError(f"{key}: {value!r} is out of range (expected {_range_text(spec)})")
        limit = spec.get("limit")
        if limit is not None and v > limit:
            raise ConfigError(
                f"{key}: {value!r} is out of range (expected at most {limit:,}: mwmae's limit "
                "for this setting)"
            )


def _range_text(spec: Mapping[str, Any]) -> str:
    if spec.get("text"):
        return spec["text"]
    parts = []
    for name, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if spec[name] is not None:
            parts.append(f"{op} {spec[name]}")
    return "a value " + " and ".join(parts)


def build(cls: type[T], mapping: Mapping[str, Any] | None, where: str = "") -> T:
    """A frozen dataclass `cls` from a (nested) mapping: unknown keys, types and ranges checked,
    missing keys take the field defaults."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(mapping, fields, where)
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in mapping.items():
        key = _join(where, name)
        value = coerce(value, hints[name], key)
        spec = fields[name].metadata.get("bounds")
        if spec is not None:
            _check_bounds(value, spec, key)
        kwargs[name] = value
    for name, f in fields.items():
        # Nested sections that were not given still get built (and so checked) from defaults.
        if name not in kwargs and dataclasses.is_dataclass(hints[name]):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs[name] = build(hints[name], {}, _join(where, name))
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain nested dicts and lists (JSON/YAML-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["bounds", "build", "check_keys", "coerce", "to_dict"]
