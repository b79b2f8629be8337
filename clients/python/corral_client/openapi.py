"""Checking this package's models against the daemon's OpenAPI document.

The models in :mod:`corral_client.types` are written by hand and checked
here, field by field, against the component schemas of ``/v1/openapi.json``
(``corral openapi`` prints the same document without a daemon):

- every schema property is a field of its model and every field a property;
- a field is required (no default) exactly when the schema requires it;
- in answers, a field may be ``None`` exactly when the schema allows ``null``;
- each field has the schema's kind (integer, number, string — or a
  timestamp —, boolean, array, map, a named schema);
- each enum has the schema's words, no more and no fewer;
- each event kind has its class, and each class its kind's fields.

:func:`check_models` returns what differs, one line per difference, each
naming the model and the field; the test suite runs it against the daemon
it tests with and fails on any line. A component schema that no model
covers is a difference too, unless it is listed in :data:`UNMODELLED` with why.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Type

from . import spawner
from .types import (
    EVENT_CLASSES,
    AgentHistory,
    AgentInfo,
    AgentState,
    BatchRequest,
    CleanupOptions,
    DaemonHealth,
    DaemonStopRequest,
    DaemonStopResponse,
    Event,
    Health,
    HealthReport,
    HistoryPoint,
    KillRequest,
    KillResponse,
    Limits,
    LimitState,
    LogRotation,
    PauseOutcome,
    PauseReport,
    PauseRequest,
    PersistentStatus,
    Placement,
    PlacementInfo,
    Probes,
    ProbesState,
    ProbeState,
    ProcessSummary,
    ProgressUpdate,
    Removal,
    RestartMode,
    RestartPolicy,
    RunInfo,
    SlurmPlacement,
    SpawnRequest,
    SpawnResponse,
    StateCounts,
    StopCause,
    StopInfo,
    StopManyRequest,
    StopReport,
    StopStage,
    TeamBudget,
    TeamMember,
    TeamRemoval,
    TeamStatus,
    TeamUsage,
    TreeSummary,
    UiLogin,
    UnknownEvent,
)

#: Answer models by the name of their component schema.
ANSWERS: Mapping[str, type] = {
    "AgentStatus": AgentInfo,
    "StopInfo": StopInfo,
    "TreeSummary": TreeSummary,
    "LimitState": LimitState,
    "ProbeState": ProbeState,
    "ProbesState": ProbesState,
    "PlacementInfo": PlacementInfo,
    "SpawnResponse": SpawnResponse,
    "StopReport": StopReport,
    "KillResponse": KillResponse,
    "Removal": Removal,
    "RunInfo": RunInfo,
    "StateCounts": StateCounts,
    "ProcessSummary": ProcessSummary,
    "HealthReport": HealthReport,
    "DaemonHealth": DaemonHealth,
    "DaemonStopResponse": DaemonStopResponse,
    "PauseReport": PauseReport,
    "TeamBudget": TeamBudget,
    "TeamUsage": TeamUsage,
    "TeamMember": TeamMember,
    "TeamStatus": TeamStatus,
    "TeamRemoval": TeamRemoval,
    "AgentHistory": AgentHistory,
    "HistoryPoint": HistoryPoint,
    "UiLogin": UiLogin,
}

#: Request models (what the caller or the client writes) by the name of their component schema.
REQUESTS: Mapping[str, type] = {
    "SpawnRequest": SpawnRequest,
    "RestartPolicy": RestartPolicy,
    "Limits": Limits,
    "LogRotation": LogRotation,
    "Probes": Probes,
    "Placement": Placement,
    "SlurmPlacement": SlurmPlacement,
    "CleanupOptions": CleanupOptions,
    "KillRequest": KillRequest,
    "StopManyRequest": StopManyRequest,
    "ProgressUpdate": ProgressUpdate,
    "DaemonStopRequest": DaemonStopRequest,
    "BatchRequest": BatchRequest,
    "PauseRequest": PauseRequest,
}

#: Enums by the name of their component schema.
ENUMS: Mapping[str, Type[Enum]] = {
    "PersistentStatus": PersistentStatus,
    "AgentState": AgentState,
    "Health": Health,
    "StopStage": StopStage,
    "StopCause": StopCause,
    "RestartMode": RestartMode,
    "PauseOutcome": PauseOutcome,
}

#: Component schemas with no model of their own, and why.
UNMODELLED: Mapping[str, str] = {
    "ErrorBody": "error answers become CorralError subclasses (corral_client.errors)",
    "ErrorDetail": "error answers become CorralError subclasses (corral_client.errors)",
    "BatchResponse": "read into a list of SpawnResponse or CorralError",
    "BatchResult": "read into SpawnResponse or CorralError",
    "BatchFailure": "read into a CorralError subclass",
    "Probe": "one of several one-key objects: a plain dict",
    "Event": "checked as the Event classes (the envelope)",
    "EventBody": "checked as the Event classes (one per kind)",
}

#: The drop-in spawner's dicts: the fields of their schema, all of them, none other.
DICTS: Mapping[str, type] = {
    "AgentStatus": spawner.StatusDict,
    "StopReport": spawner.StopReportDict,
    "ProcessSummary": spawner.SummaryDict,
}

_REF = "#/components/schemas/"
_NONE = type(None)


# -- what the schema says --------------------------------------------------------


@dataclasses.dataclass
class _Kind:
    """A field's kind, from either side: ``integer``, ``number``, ``string``,
    ``boolean``, ``array``, ``map``, ``any``, or ``ref`` to a component."""

    kind: str
    nullable: bool = False
    ref: Optional[str] = None
    item: Optional[_Kind] = None
    words: Optional[Tuple[str, ...]] = None

    def __str__(self) -> str:
        if self.kind == "ref":
            text = str(self.ref)
        elif self.kind in ("array", "map") and self.item is not None:
            text = f"{self.kind} of {self.item}"
        elif self.words is not None:
            text = f"one of {list(self.words)}"
        else:
            text = self.kind
        return f"{text} or null" if self.nullable else text


def _schema_kind(prop: Mapping[str, Any]) -> _Kind:
    if "$ref" in prop:
        return _Kind("ref", ref=str(prop["$ref"])[len(_REF) :])
    for key in ("oneOf", "anyOf"):
        if key in prop:
            options = [o for o in prop[key] if o.get("type") != "null"]
            nullable = len(options) < len(prop[key])
            if len(options) == 1:
                inner = _schema_kind(options[0])
                inner.nullable = inner.nullable or nullable
                return inner
            return _Kind("any", nullable=nullable)
    if "allOf" in prop and len(prop["allOf"]) == 1:
        return _schema_kind(prop["allOf"][0])
    types = prop.get("type")
    names: List[str] = [types] if isinstance(types, str) else list(types or [])
    nullable = "null" in names
    names = [n for n in names if n != "null"]
    name = names[0] if len(names) == 1 else "any"
    if name == "array":
        return _Kind("array", nullable, item=_schema_kind(prop.get("items", {})))
    if name == "object":
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and not prop.get("properties"):
            return _Kind("map", nullable, item=_schema_kind(extra))
        return _Kind("any", nullable)
    if name == "string" and "enum" in prop:
        return _Kind("string", nullable, words=tuple(prop["enum"]))
    return _Kind(name, nullable)


# -- what the model says ---------------------------------------------------------


def _names() -> Dict[type, str]:
    by_class: Dict[type, str] = {}
    for table in (ANSWERS, REQUESTS, ENUMS):
        for name, cls in table.items():
            by_class[cls] = name
    return by_class


def _model_kind(tp: Any, names: Mapping[type, str]) -> _Kind:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        rest = [a for a in args if a is not _NONE]
        inner = _model_kind(rest[0], names) if len(rest) == 1 else _Kind("any")
        inner.nullable = inner.nullable or len(rest) < len(args)
        return inner
    if origin in (list, List):
        return _Kind("array", item=_model_kind(args[0], names) if args else _Kind("any"))
    if origin in (dict, Dict):
        return _Kind("map", item=_model_kind(args[1], names) if args else _Kind("any"))
    if origin is typing.Literal:
        return _Kind("string", words=tuple(str(a) for a in args))
    if tp is Any:
        return _Kind("any")
    if tp in names:
        return _Kind("ref", ref=names[tp])
    if tp is datetime:
        return _Kind("string", words=None, ref="timestamp")
    simple = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return _Kind(simple.get(tp, f"<{getattr(tp, '__name__', tp)}>"))


def _fields(cls: type) -> Dict[str, Tuple[Any, bool]]:
    """Each field's annotation and whether it is required."""
    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        return {
            f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        }
    required: Set[str] = set(getattr(cls, "__required_keys__", set()))
    return {name: (tp, name in required) for name, tp in hints.items()}


# -- comparing -------------------------------------------------------------------


def _same_kind(api: _Kind, model: _Kind, components: Mapping[str, Any], names: Mapping[type, str]) -> bool:
    if api.kind == "any" or model.kind == "any":
        return True
    if api.kind == "ref" and api.ref not in ANSWERS and api.ref not in REQUESTS and api.ref not in ENUMS:
        # A component without a model of its own (a Probe): a plain dict.
        return model.kind in ("map", "any")
    if api.kind == "ref" and api.ref in REQUESTS and model.kind == "map":
        # A request written as its JSON (the spawn requests of a batch).
        return True
    if api.kind == "ref" and api.ref in ENUMS and model.kind == "string" and model.words is not None:
        # A Literal of the enum's words stands for the enum (in what the caller writes).
        return set(model.words) == {m.value for m in ENUMS[str(api.ref)]}
    if api.kind != model.kind:
        return False
    if api.kind == "ref":
        return api.ref == model.ref
    if api.kind in ("array", "map"):
        if api.item is None or model.item is None:
            return True
        return _same_kind(api.item, model.item, components, names)
    if api.kind == "string" and api.words is not None:
        return model.words is not None and set(api.words) == set(model.words)
    return True


def _compare(
    label: str,
    schema: Mapping[str, Any],
    fields: Mapping[str, Tuple[Any, bool]],
    *,
    answer: bool,
    components: Mapping[str, Any],
    names: Mapping[type, str],
    check_required: bool = True,
    check_kinds: bool = True,
) -> List[str]:
    problems: List[str] = []
    props: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    for name in sorted(set(props) - set(fields)):
        problems.append(f"{label}: field {name!r} is in the API but not in the model")
    for name in sorted(set(fields) - set(props)):
        problems.append(f"{label}: field {name!r} is in the model but not in the API")
    for name in sorted(set(props) & set(fields)):
        tp, model_required = fields[name]
        if check_required and model_required != (name in required):
            says = "required" if name in required else "optional"
            has = "required" if model_required else "optional"
            problems.append(f"{label}: field {name!r} is {says} in the API but {has} in the model")
        if not check_kinds:
            continue
        api_kind = _schema_kind(props[name])
        model_kind = _model_kind(tp, names)
        if answer and api_kind.nullable != model_kind.nullable:
            says = "may be null" if api_kind.nullable else "is never null"
            has = "Optional" if model_kind.nullable else "not Optional"
            problems.append(f"{label}: field {name!r} {says} in the API but is {has} in the model")
        if not _same_kind(api_kind, model_kind, components, names):
            problems.append(f"{label}: field {name!r} is {api_kind} in the API but {model_kind} in the model")
    return problems


def _event_kinds(body: Mapping[str, Any]) -> Dict[str, Optional[str]]:
    """Each kind of ``EventBody`` and the component schema of its fields (``None`` for none)."""
    kinds: Dict[str, Optional[str]] = {}
    for option in body.get("oneOf", []):
        parts = option.get("allOf", [option])
        kind: Optional[str] = None
        ref: Optional[str] = None
        for part in parts:
            if "$ref" in part:
                ref = str(part["$ref"])[len(_REF) :]
            words = part.get("properties", {}).get("kind", {}).get("enum")
            if words:
                kind = str(words[0])
        if kind is not None:
            kinds[kind] = ref
    return kinds


def check_models(doc: Mapping[str, Any]) -> List[str]:
    """Every difference between this package's models and the document's component schemas."""
    components: Mapping[str, Any] = doc.get("components", {}).get("schemas", {})
    names = _names()
    problems: List[str] = []

    def schema(name: str, label: str) -> Optional[Mapping[str, Any]]:
        found = components.get(name)
        if found is None:
            problems.append(f"{label}: the API has no schema {name!r} any more")
        return found

    for name, cls in ANSWERS.items():
        label = f"{cls.__name__} (schema {name})"
        found = schema(name, label)
        if found is not None:
            problems += _compare(label, found, _fields(cls), answer=True, components=components, names=names)
    for name, cls in REQUESTS.items():
        label = f"{cls.__name__} (schema {name})"
        found = schema(name, label)
        if found is not None:
            problems += _compare(label, found, _fields(cls), answer=False, components=components, names=names)
    for name, cls in DICTS.items():
        label = f"spawner.{cls.__name__} (schema {name})"
        found = schema(name, label)
        if found is not None:
            # Plain dicts of JSON: the same keys; words and timestamps stay strings.
            problems += _compare(
                label,
                found,
                _fields(cls),
                answer=False,
                components=components,
                names=names,
                check_required=False,
                check_kinds=False,
            )
    for name, enum in ENUMS.items():
        found = schema(name, f"{enum.__name__} (schema {name})")
        if found is None:
            continue
        api_words = list(found.get("enum", []))
        words = [m.value for m in enum]
        for word in api_words:
            if word not in words:
                problems.append(f"{enum.__name__} (schema {name}): word {word!r} is in the API but not in the enum")
        for word in words:
            if word not in api_words:
                problems.append(f"{enum.__name__} (schema {name}): word {word!r} is in the enum but not in the API")

    # Events: the envelope, then each kind's class and fields.
    envelope_fields = {f.name for f in dataclasses.fields(Event)}
    event = components.get("Event")
    if event is None:
        problems.append("Event: the API has no schema 'Event' any more")
    else:
        parts = [p for p in event.get("allOf", []) if "properties" in p]
        envelope = parts[0] if parts else {}
        fields = {k: v for k, v in _fields(Event).items() if k != "kind"}
        problems += _compare("Event (schema Event)", envelope, fields, answer=True, components=components, names=names)
    kinds = _event_kinds(components.get("EventBody", {}))
    if not kinds:
        problems.append("Event: the API's EventBody names no kinds")
    for kind, ref in sorted(kinds.items()):
        event_cls = EVENT_CLASSES.get(kind)
        if kind == "other":
            continue  # a kind the daemon itself does not know: UnknownEvent's, like any unknown kind
        if event_cls is None:
            problems.append(f"Event: kind {kind!r} is in the API but has no class (it would arrive as UnknownEvent)")
            continue
        body_fields = {k: v for k, v in _fields(event_cls).items() if k not in envelope_fields}
        label = f"{event_cls.__name__} (kind {kind!r}, schema {ref})"
        body = components.get(ref, {}) if ref else {}
        problems += _compare(label, body, body_fields, answer=True, components=components, names=names)
    for kind, cls in sorted(EVENT_CLASSES.items()):
        if kind not in kinds and kinds:
            problems.append(f"{cls.__name__}: kind {kind!r} is in the client but not in the API")
    if UnknownEvent in EVENT_CLASSES.values():
        problems.append("UnknownEvent must not stand for a known kind")

    covered = set(ANSWERS) | set(REQUESTS) | set(ENUMS) | set(UNMODELLED) | {r for r in kinds.values() if r}
    for name in sorted(set(components) - covered):
        problems.append(f"schema {name!r} of the API has no model (add one, or list it in UNMODELLED with why)")
    return problems
