"""The client's models and routes against the daemon's own OpenAPI document:
a field, a word, an event kind or a route that changes on one side only
fails here, naming the model and the field."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from helpers import Corral

from corral_client import AsyncClient, Client
from corral_client.openapi import check_models

#: Each operation of the API and the method that calls it, in both clients.
ROUTES: Dict[Tuple[str, str], str] = {
    ("GET", "/metrics"): "metrics",
    ("GET", "/v1/health"): "health",
    ("GET", "/v1/openapi.json"): "openapi",
    ("POST", "/v1/daemon/stop"): "stop_daemon",
    ("POST", "/v1/agents"): "spawn",
    ("POST", "/v1/agents/batch"): "spawn_batch",
    ("GET", "/v1/agents"): "list_agents",
    ("GET", "/v1/agents/{id}"): "status",
    ("DELETE", "/v1/agents/{id}"): "remove",
    ("GET", "/v1/agents/{id}/health"): "agent_health",
    ("POST", "/v1/agents/{id}/kill"): "kill",
    ("GET", "/v1/agents/{id}/logs"): "logs",
    ("PUT", "/v1/agents/{id}/progress"): "progress",
    ("POST", "/v1/agents/{id}/restart"): "restart",
    ("GET", "/v1/agents/{id}/runs"): "runs",
    ("GET", "/v1/agents/{id}/history"): "history",
    ("POST", "/v1/agents/{id}/stop"): "stop",
    ("GET", "/v1/agents/{id}/wait"): "wait",
    ("GET", "/v1/events"): "events",
    ("POST", "/v1/pause"): "pause",
    ("POST", "/v1/prune"): "prune",
    ("POST", "/v1/resume"): "resume",
    ("POST", "/v1/reap"): "reap",
    ("POST", "/v1/restart"): "restart_many",
    ("POST", "/v1/stop"): "stop_many",
    ("GET", "/v1/summary"): "summary",
    ("GET", "/v1/teams"): "teams",
    ("GET", "/v1/teams/{id}"): "team",
    ("PUT", "/v1/teams/{id}"): "set_team",
    ("DELETE", "/v1/teams/{id}"): "remove_team",
    ("POST", "/v1/ui/login"): "ui_login",
}


@pytest.fixture(scope="module")
def doc(shared_corral: Corral) -> Iterator[Dict[str, Any]]:
    """The document the daemon under test serves."""
    with shared_corral.client() as c:
        yield c.openapi()


def operations(doc: Dict[str, Any]) -> List[Tuple[str, str]]:
    return sorted((method.upper(), path) for path, ops in doc["paths"].items() for method in ops)


def test_the_models_match_the_daemons_schemas(doc: Dict[str, Any]) -> None:
    problems = check_models(doc)
    assert not problems, "the models drifted from /v1/openapi.json:\n  " + "\n  ".join(problems)


def test_corral_openapi_prints_the_document_the_daemon_serves(doc: Dict[str, Any], shared_corral: Corral) -> None:
    printed = subprocess.run([shared_corral.bin, "openapi"], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(printed.stdout) == doc


def test_every_route_has_a_method_in_both_clients(doc: Dict[str, Any]) -> None:
    assert operations(doc) == sorted(ROUTES), "routes added or gone: update ROUTES and the clients"
    for name in ROUTES.values():
        sync, aio = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.signature(sync).parameters.keys() == inspect.signature(aio).parameters.keys(), name
        streams = name in ("events", "follow_logs")
        assert inspect.iscoroutinefunction(aio) != streams, name
    # follow_logs is GET /v1/agents/{id}/logs?follow=true.
    assert inspect.signature(Client.follow_logs).parameters.keys() == (
        inspect.signature(AsyncClient.follow_logs).parameters.keys()
    )


def drifted(doc: Dict[str, Any], change: Any) -> List[str]:
    altered = copy.deepcopy(doc)
    change(altered["components"]["schemas"])
    return check_models(altered)


def test_the_check_names_the_model_and_the_field_that_drifted(doc: Dict[str, Any]) -> None:
    def rename(schemas: Dict[str, Any]) -> None:
        props = schemas["AgentStatus"]["properties"]
        props["memory_bytes"] = props.pop("memory_mb")
        schemas["AgentStatus"]["required"] = [
            "memory_bytes" if r == "memory_mb" else r for r in schemas["AgentStatus"]["required"]
        ]

    assert drifted(doc, rename) == [
        "AgentInfo (schema AgentStatus): field 'memory_bytes' is in the API but not in the model",
        "AgentInfo (schema AgentStatus): field 'memory_mb' is in the model but not in the API",
        "spawner.StatusDict (schema AgentStatus): field 'memory_bytes' is in the API but not in the model",
        "spawner.StatusDict (schema AgentStatus): field 'memory_mb' is in the model but not in the API",
    ]

    def require(schemas: Dict[str, Any]) -> None:
        schemas["StopReport"]["required"].append("exit_signal")

    assert drifted(doc, require) == [
        "StopReport (schema StopReport): field 'exit_signal' is required in the API but optional in the model"
    ]

    def new_word(schemas: Dict[str, Any]) -> None:
        schemas["AgentState"]["enum"].append("hibernating")

    assert drifted(doc, new_word) == [
        "AgentState (schema AgentState): word 'hibernating' is in the API but not in the enum"
    ]

    def retype(schemas: Dict[str, Any]) -> None:
        schemas["RunInfo"]["properties"]["run"] = {"type": "string"}

    assert drifted(doc, retype) == [
        "RunInfo (schema RunInfo): field 'run' is string in the API but integer in the model"
    ]

    def nullable(schemas: Dict[str, Any]) -> None:
        schemas["HealthReport"]["properties"]["healthy"] = {"type": ["boolean", "null"]}

    assert drifted(doc, nullable) == [
        "HealthReport (schema HealthReport): field 'healthy' may be null in the API but is not Optional in the model"
    ]

    def new_event_field(schemas: Dict[str, Any]) -> None:
        schemas["ProgressEvent"]["properties"]["eta_s"] = {"type": ["number", "null"]}

    assert drifted(doc, new_event_field) == [
        "ProgressEvent (kind 'progress', schema ProgressEvent): field 'eta_s' is in the API but not in the model"
    ]

    def new_schema(schemas: Dict[str, Any]) -> None:
        schemas["Quota"] = {"type": "object", "properties": {"memory_mb": {"type": "number"}}}

    assert drifted(doc, new_schema) == [
        "schema 'Quota' of the API has no model (add one, or list it in UNMODELLED with why)"
    ]
