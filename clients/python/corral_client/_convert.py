"""Building the models of :mod:`corral_client.types` from the daemon's JSON.

Each type gets a converter, made once from its annotations and cached: a
dataclass checks that its required fields are there and builds each field
with its own converter; fields it does not know are ignored (a newer daemon
may add some). A value of the wrong kind raises :class:`Mismatch` naming
where it is (``results[2].report.stage``), which the client turns into a
:class:`~corral_client.BadAnswer`.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from enum import Enum
from typing import Any, Callable, Dict, List, Tuple, Type, TypeVar, Union

from .types import EVENT_CLASSES, Event, UnknownEvent, parse_timestamp

T = TypeVar("T")
Converter = Callable[[Any, str], Any]

_CACHE: Dict[Any, Converter] = {}
_NONE = type(None)
_ENVELOPE = tuple(f.name for f in dataclasses.fields(Event))


class Mismatch(ValueError):
    """A JSON value does not fit the type it should have."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:60]!r}"
    if isinstance(value, dict):
        return "a JSON object"
    return "a JSON array" if isinstance(value, list) else f"a {type(value).__name__}"


def _fail(where: str, wanted: str, value: Any) -> Mismatch:
    return Mismatch(f"{where or 'the answer'}: expected {wanted}, got {_kind(value)}")


def converter(tp: Any) -> Converter:
    """The converter of ``tp`` (cached)."""
    try:
        return _CACHE[tp]
    except KeyError:
        pass
    conv = _make(tp)
    _CACHE[tp] = conv
    return conv


def build(tp: Type[T], value: Any, where: str = "") -> T:
    """``value`` (parsed JSON) as a ``tp``; :class:`Mismatch` when it does not fit."""
    result: T = converter(tp)(value, where)
    return result


def _make(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda v, w: v
    if origin is Union:
        rest = [a for a in args if a is not _NONE]
        if len(rest) != 1:
            raise TypeError(f"no converter for {tp!r}")
        inner = converter(rest[0])
        return lambda v, w: None if v is None else inner(v, w)
    if origin in (list, List):
        item = converter(args[0]) if args else converter(Any)

        def conv_list(v: Any, w: str) -> Any:
            if not isinstance(v, list):
                raise _fail(w, "an array", v)
            return [item(x, f"{w}[{i}]") for i, x in enumerate(v)]

        return conv_list
    if origin in (dict, Dict):
        val = converter(args[1]) if args else converter(Any)

        def conv_dict(v: Any, w: str) -> Any:
            if not isinstance(v, dict):
                raise _fail(w, "an object", v)
            return {k: val(x, f"{w}[{k!r}]") for k, x in v.items()}

        return conv_dict
    if origin is typing.Literal:
        return _scalar(str, "a string")
    if not isinstance(tp, type):
        raise TypeError(f"no converter for {tp!r}")
    if issubclass(tp, Enum):
        return _enum(tp)
    if tp is datetime:
        return _timestamp
    if tp is bool:
        return _scalar(bool, "a boolean")
    if tp is int:

        def conv_int(v: Any, w: str) -> Any:
            if isinstance(v, bool) or not isinstance(v, int):
                raise _fail(w, "an integer", v)
            return v

        return conv_int
    if tp is float:

        def conv_float(v: Any, w: str) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _fail(w, "a number", v)
            return float(v)

        return conv_float
    if tp is str:
        return _scalar(str, "a string")
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    raise TypeError(f"no converter for {tp!r}")


def _scalar(kind: type, wanted: str) -> Converter:
    def conv(v: Any, w: str) -> Any:
        if not isinstance(v, kind):
            raise _fail(w, wanted, v)
        return v

    return conv


def _enum(tp: Type[Enum]) -> Converter:
    by_value = {m.value: m for m in tp}

    def conv(v: Any, w: str) -> Any:
        if not isinstance(v, str):
            raise _fail(w, f"a {tp.__name__} word", v)
        # A word a newer daemon added stays a plain str (it still compares equal to itself).
        return by_value.get(v, v)

    return conv


def _timestamp(v: Any, w: str) -> Any:
    if not isinstance(v, str):
        raise _fail(w, "an RFC 3339 timestamp", v)
    try:
        return parse_timestamp(v)
    except ValueError:
        raise _fail(w, "an RFC 3339 timestamp", v) from None


def _dataclass(tp: Any) -> Converter:
    made: List[List[Tuple[str, Converter, bool]]] = []

    def resolve() -> List[Tuple[str, Converter, bool]]:
        # Made on first use: a dataclass may refer to one defined after it.
        if not made:
            hints = typing.get_type_hints(tp)
            made.append(
                [
                    (
                        f.name,
                        converter(hints[f.name]),
                        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                    )
                    for f in dataclasses.fields(tp)
                ]
            )
        return made[0]

    name = tp.__name__

    def conv(v: Any, w: str) -> Any:
        if not isinstance(v, dict):
            raise _fail(w, f"a {name} object", v)
        kwargs: Dict[str, Any] = {}
        for field, field_conv, required in resolve():
            if field in v:
                kwargs[field] = field_conv(v[field], f"{w}.{field}" if w else field)
            elif required:
                raise Mismatch(f"{w or 'the answer'}: {name} without its field {field!r}")
        return tp(**kwargs)

    return conv


def build_event(value: Any) -> Event:
    """One event's JSON as the class of its kind (:class:`UnknownEvent` for a kind this client does not know)."""
    if not isinstance(value, dict):
        raise _fail("the event", "an object", value)
    kind = value.get("kind")
    if not isinstance(kind, str):
        raise _fail("the event's kind", "a string", kind)
    cls = EVENT_CLASSES.get(kind)
    if cls is not None:
        return build(cls, value, "")
    envelope = build(Event, value, "")
    extra = {k: v for k, v in value.items() if k not in _ENVELOPE}
    return UnknownEvent(envelope.seq, envelope.at, envelope.agent_id, envelope.run, kind, extra)
