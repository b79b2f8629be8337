"""Every route of the API through ``Client``, against a real daemon."""

from __future__ import annotations

import os
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import List

import pytest
from helpers import Corral, alive, environ, free_port, poll, within

import corral_client
from corral_client import (
    AgentInfo,
    AgentState,
    Client,
    Conflict,
    CorralError,
    Event,
    Forbidden,
    Health,
    HealthReport,
    Invalid,
    NotFound,
    PersistentStatus,
    Removal,
    SpawnFailed,
    SpawnRequest,
    SpawnResponse,
    StateEvent,
    StopCause,
    StopStage,
    Timeout,
    Unauthorized,
)

SLEEP = ["sleep", "60"]
STUBBORN = ["sh", "-c", "trap '' TERM; exec sleep 60"]


@pytest.fixture(scope="module")
def c(shared_corral: Corral) -> Client:
    """A client of the module's daemon, which it starts on its first call."""
    return shared_corral.client()


def test_spawn_status_list_health_and_summary(c: Client, shared_corral: Corral) -> None:
    daemon = c.health()
    assert daemon.ok and daemon.state_dir == shared_corral.state_dir
    assert daemon.pid == shared_corral.daemon_pid()

    r = c.spawn(SpawnRequest("obs.1", SLEEP, env={"OBS": "yes"}, labels={"team": "a"}, stop_timeouts=[1, 1, 1]))
    assert isinstance(r, SpawnResponse) and r.status == PersistentStatus.RUNNING and isinstance(r.status, str)
    assert r.run == 1 and r.pid and alive(r.pid) and r.error is None
    assert r.stdout_log and os.path.isfile(r.stdout_log)
    env = environ(r.pid)
    assert "OBS=yes" in env and "CORRAL_AGENT_ID=obs.1" in env

    status = c.status("obs.1")
    assert status.pid == r.pid and status.labels == {"team": "a"} and status.cmdline == "sleep 60"
    assert status.persistent_status == PersistentStatus.RUNNING and status.run == 1
    assert isinstance(status, AgentInfo) and isinstance(status.started_at, datetime)
    assert status.started_at.tzinfo is not None and status.state == AgentState.RUNNING
    assert c.list_agents()["obs.1"].pid == r.pid
    assert c.agent_health("obs.1") == HealthReport(agent_id="obs.1", healthy=True, health=Health.HEALTHY)
    assert c.summary().running >= 1
    assert "/v1/agents/{id}/wait" in c.openapi()["paths"]


def test_inherit_env_false_gives_a_clean_environment(c: Client, shared_corral: Corral) -> None:
    daemon_pid = c.health().pid
    assert daemon_pid
    clean = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"}
    # A variable of the daemon's own environment that a clean one leaves out.
    daemons = [kv for kv in environ(daemon_pid) if kv.split("=", 1)[0] not in clean and not kv.startswith("CORRAL_")]
    assert daemons, "the daemon's environment has nothing beyond the clean set"
    inherited = c.spawn(SpawnRequest("env.inherit", SLEEP, stop_timeouts=[1, 1, 1]))
    clean_run = c.spawn(SpawnRequest("env.clean", SLEEP, env={"MINE": "1"}, stop_timeouts=[1, 1, 1], inherit_env=False))
    try:
        assert inherited.pid and clean_run.pid
        assert daemons[0] in environ(inherited.pid)
        env = environ(clean_run.pid)
        names = {kv.split("=", 1)[0] for kv in env}
        assert "MINE=1" in env and "CORRAL_AGENT_ID=env.clean" in env
        assert not [kv for kv in daemons if kv in env], env
        assert names - clean - {"MINE"} <= {n for n in names if n.startswith("CORRAL_")}, names
    finally:
        for agent in ("env.inherit", "env.clean"):
            c.stop(agent)
            c.remove(agent)
    for pid in (inherited.pid, clean_run.pid):
        assert pid and not alive(pid)


def test_spawn_request_wants_an_argv_list() -> None:
    with pytest.raises(TypeError, match="list of strings"):
        SpawnRequest("x", "sleep 60").to_json()  # type: ignore[arg-type]


def test_batch_answers_each_entry_in_order(c: Client) -> None:
    c.spawn(SpawnRequest("batch.0", SLEEP))
    results = c.spawn_batch(
        [
            SpawnRequest("batch.1", SLEEP),
            SpawnRequest("batch.2", ["/nonexistent/program"]),
            {"agent_id": "..bad", "command": SLEEP},
            SpawnRequest("batch.4", SLEEP, verify_ms=0),
            SpawnRequest("batch.0", SLEEP),
        ]
    )
    assert [type(r) for r in results] == [SpawnResponse, SpawnFailed, Invalid, SpawnResponse, Conflict]
    ok1, missing, bad, ok4, taken = results
    assert isinstance(ok1, SpawnResponse) and ok1.agent_id == "batch.1" and ok1.pid and alive(ok1.pid)
    assert isinstance(ok4, SpawnResponse) and ok4.agent_id == "batch.4" and ok4.status == PersistentStatus.RUNNING
    assert isinstance(missing, CorralError) and "/nonexistent/program" in missing.message
    assert isinstance(bad, CorralError) and bad.code == "invalid"
    assert isinstance(taken, CorralError) and taken.code == "conflict"
    stopped = c.stop_many(selector="batch.*", force=True)  # the refused spawn is on record too, as failed
    assert sorted(r.agent_id for r in stopped) == ["batch.0", "batch.1", "batch.2", "batch.4"]


def test_progress_from_outside_and_from_inside_an_agent(c: Client) -> None:
    c.spawn(SpawnRequest("prog.other", SLEEP))
    status = c.progress("prog.other", 25, "a quarter")
    assert status.progress == 25 and status.progress_message == "a quarter"

    # An agent reports its own progress through CORRAL_SOCKET, and may not report another's.
    inside = (
        "import os\n"
        "from corral_client import Client, Forbidden\n"
        "c = Client(socket=os.environ['CORRAL_SOCKET'])\n"
        "c.progress(os.environ['CORRAL_AGENT_ID'], 42, 'from inside')\n"
        "try:\n"
        "    c.progress('prog.other', 1)\n"
        "except Forbidden as e:\n"
        "    print('forbidden:', e.status)\n"
        "import time; time.sleep(60)\n"
    )
    package_root = os.path.dirname(os.path.dirname(corral_client.__file__))
    c.spawn(SpawnRequest("prog.self", [sys.executable, "-c", inside], env={"PYTHONPATH": package_root}))
    within(10, lambda: next(c.follow_logs("prog.self")))
    assert c.logs("prog.self") == "forbidden: 403\n"
    assert c.status("prog.self").progress == 42 and c.status("prog.other").progress == 25

    with pytest.raises(Invalid):
        c.progress("prog.other", 101)
    c.stop_many(selector="prog.*", force=True)
    with pytest.raises(Invalid, match="live agent"):
        c.progress("prog.other", 30)


def test_wait_answers_the_exit_code_or_times_out(c: Client) -> None:
    c.spawn(SpawnRequest("wait.1", ["sh", "-c", "exit 3"]))
    final = c.wait("wait.1", timeout_s=10)
    assert final.exit_code == 3 and final.persistent_status == "failed"

    c.spawn(SpawnRequest("wait.2", SLEEP))
    started = time.monotonic()
    with pytest.raises(Timeout) as caught:
        c.wait("wait.2", timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert caught.value.status == 408
    assert isinstance(caught.value, TimeoutError)  # a builtin timeout too
    c.kill("wait.2", force=True)


def test_logs_tail_streams_and_runs(c: Client) -> None:
    c.spawn(SpawnRequest("logs.1", ["sh", "-c", "printf 'a\\nb\\nc\\n'; echo oops >&2"]))
    c.wait("logs.1", timeout_s=10)
    assert c.logs("logs.1") == "a\nb\nc\n"
    assert c.logs("logs.1", tail=2) == "b\nc\n"
    assert c.logs("logs.1", stream="stderr") == "oops\n"
    assert c.logs("logs.1", stream="both") == "a\nb\nc\noops\n"

    again = c.spawn(SpawnRequest("logs.1", ["sh", "-c", "echo second; exit 4"]))
    assert again.run == 2
    c.wait("logs.1", timeout_s=10)
    assert c.logs("logs.1") == "second\n" == c.logs("logs.1", run=2)
    assert c.logs("logs.1", run=1) == "a\nb\nc\n"
    assert c.logs("logs.1", stream="stderr") == ""

    runs = c.runs("logs.1")
    assert [(r.run, r.exit_code, r.persistent_status) for r in runs] == [(1, 0, "completed"), (2, 4, "failed")]
    with pytest.raises(NotFound, match="no run"):
        c.logs("logs.1", run=9)
    with pytest.raises(Invalid):
        c.logs("logs.1", stream="stdin")


def test_follow_logs_streams_what_comes_and_ends_with_the_run(c: Client, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f"echo before; while [ ! -e {go} ]; do sleep 0.01; done; echo after; echo 'é' >&2"
    c.spawn(SpawnRequest("follow.1", ["sh", "-c", script]))
    pieces = c.follow_logs("follow.1", stream="both")
    assert within(10, lambda: next(pieces)) == "before\n"
    go.touch()  # only now does the agent write more
    rest = within(10, lambda: "".join(pieces))  # ends by itself when the run ends
    assert rest == "after\né\n"

    # Following an ended run gives what is there and ends at once.
    assert within(10, lambda: "".join(c.follow_logs("follow.1", tail=1))) == "after\n"
    with pytest.raises(NotFound):
        c.follow_logs("follow.nobody")


def test_events_resume_after_since_and_follow(c: Client) -> None:
    backlog = list(c.events(follow=False))
    last = backlog[-1].seq if backlog else 0

    stream = c.events(since=last)  # follows; opened now
    c.spawn(SpawnRequest("ev.1", ["sh", "-c", "exit 0"]))

    def until_completed() -> List[Event]:
        seen = []
        for event in stream:
            seen.append(event)
            if isinstance(event, StateEvent) and event.agent_id == "ev.1" and event.status == "completed":
                return seen
        return seen

    seen = within(10, until_completed)
    stream.close()
    assert [e.seq for e in seen] == sorted(e.seq for e in seen) and seen[0].seq > last
    assert [e.status for e in seen if isinstance(e, StateEvent)][0] == PersistentStatus.SPAWNING
    assert all(isinstance(e, StateEvent) == (e.kind == "state") for e in seen)

    replay = list(c.events(since=last, follow=False))
    assert replay[: len(seen)] == seen
    assert all(e.seq > seen[-1].seq for e in c.events(since=seen[-1].seq, follow=False))


def test_stop_and_kill_report_what_they_did(c: Client) -> None:
    plain = c.spawn(SpawnRequest("stop.1", SLEEP))
    report = c.stop("stop.1")
    assert report.stage == StopStage.TERM and report.persistent_status == PersistentStatus.CANCELLED
    assert report.pid == plain.pid and plain.pid and not alive(plain.pid)

    stubborn = c.spawn(SpawnRequest("stop.2", STUBBORN))
    report = c.stop("stop.2", stop_timeouts=[0.1, 0.1, 2])
    assert report.stage == "kill" and report.exit_signal == 9 and report.exit_code is None
    assert stubborn.pid and not alive(stubborn.pid)

    victim = c.spawn(SpawnRequest("stop.3", STUBBORN))
    killed = c.kill("stop.3", force=True)
    assert killed.killed is True and killed.report.stage == "kill"
    assert victim.pid and not alive(victim.pid)
    again = c.kill("stop.3")
    assert again.killed is False and again.report.stage == "already_ended"


def test_a_stop_is_seen_while_it_runs_and_a_users_stop_is_cancelled(c: Client) -> None:
    import threading

    r = c.spawn(SpawnRequest("vis.1", STUBBORN, stop_timeouts=[30, 0.2, 1]))
    assert c.status("vis.1").state == "running" and c.status("vis.1").stop is None
    stopper = threading.Thread(target=lambda: c.stop("vis.1"), daemon=True)
    stopper.start()
    deadline = time.monotonic() + 10
    while (s := c.status("vis.1")).state != "stopping":
        assert time.monotonic() < deadline, s
        time.sleep(0.02)
    assert s.stop is not None and s.stop.cause == StopCause.USER and s.stop.stage == "term", s
    assert isinstance(s.stop.stage_deadline_at, datetime) and s.stop.stage_deadline_at > s.stop.began_at, s
    assert c.summary().states.stopping >= 1
    report = c.stop("vis.1", force=True)
    assert report.stage == "kill"
    stopper.join(10)
    final = c.status("vis.1")
    assert final.state == "ended" and final.stop is None
    assert final.health == Health.CANCELLED and final.persistent_status == "cancelled"
    assert r.pid and not alive(r.pid)


def test_list_agents_filters_in_the_daemon_and_picks_fields(c: Client) -> None:
    spawned = [
        c.spawn(SpawnRequest("lst.a", SLEEP, labels={"team": "x", "tier": "1"})),
        c.spawn(SpawnRequest("lst.a.1", SLEEP, labels={"team": "x"})),
        c.spawn(SpawnRequest("lst.b", SLEEP, labels={"team": "y,z"})),
        c.spawn(SpawnRequest("lstx", ["true"], verify_ms=0)),
    ]
    deadline = time.monotonic() + 10
    while c.status("lstx").state != "ended":
        assert time.monotonic() < deadline, c.status("lstx")
        time.sleep(0.01)
    assert sorted(c.list_agents(selector="lst.*")) == ["lst.a", "lst.a.1", "lst.b"]
    assert sorted(c.list_agents(selector="lst.a")) == ["lst.a"]
    ended = c.list_agents(state="ended")
    assert "lstx" in ended and all(s.state == "ended" for s in ended.values())
    assert "lstx" in c.list_agents(state=["ended", "paused"]) and "lstx" not in c.list_agents(state="running")
    assert sorted(c.list_agents(label={"team": "x"})) == ["lst.a", "lst.a.1"]
    assert sorted(c.list_agents(label=["team=x", "tier=1"])) == ["lst.a"]
    assert sorted(c.list_agents(label="team=y,z")) == ["lst.b"]
    picked = c.list_agents(selector="lst.*", fields=["state", "progress"])
    assert sorted(picked) == ["lst.a", "lst.a.1", "lst.b"]
    for agent_id, s in picked.items():
        assert sorted(s) == ["agent_id", "progress", "state"] and s["agent_id"] == agent_id
        assert s["state"] == "running"
    with pytest.raises(Invalid, match="bogus"):
        c.list_agents(fields="state,bogus")
    with pytest.raises(Invalid, match="runing"):
        c.list_agents(state="runing")
    with pytest.raises(Invalid):
        c.list_agents(selector="*")
    # Agents on this host are placed on no cluster node: the daemon's node filter leaves them out.
    assert c.list_agents(node="n2") == {}
    assert c.list_agents(selector="lst.*", fields=["state"], node=["n1", "n3"]) == {}
    list_query = corral_client._core.list_query
    assert list_query(None, None, None, None, ["n1", "n3"]) == [("node", "n1,n3")]
    assert list_query("lst.*", None, None, None, "n2") == [("selector", "lst.*"), ("node", "n2")]
    for r in spawned:
        if r.status == PersistentStatus.RUNNING:
            c.stop(r.agent_id, force=True)


def test_stop_many_by_selector(c: Client) -> None:
    members = [c.spawn(SpawnRequest(f"grp.{i}", SLEEP)) for i in (1, 2)]
    outsider = c.spawn(SpawnRequest("grpx.1", SLEEP))
    reports = c.stop_many(selector="grp.*", force=True)
    assert sorted(r.agent_id for r in reports) == ["grp.1", "grp.2"]
    assert all(m.pid and not alive(m.pid) for m in members)
    assert outsider.pid and alive(outsider.pid)
    assert c.stop_many(selector="grp.*", live_only=True) == []
    assert {r.stage for r in c.stop_many(selector="grp.*")} == {"already_ended"}
    with pytest.raises(Invalid, match="which agents"):
        c.stop_many()
    with pytest.raises(Invalid):
        c.stop_many(all=True, selector="grp.*")
    c.stop("grpx.1", force=True)


def test_remove_and_prune_forget_ended_agents(c: Client) -> None:
    c.spawn(SpawnRequest("rm.1", ["true"]))
    c.wait("rm.1", timeout_s=10)
    assert c.remove("rm.1") == Removal(removed=["rm.1"], runs_removed=1)
    with pytest.raises(NotFound):
        c.status("rm.1")

    c.spawn(SpawnRequest("rm.2", ["true"]))
    c.wait("rm.2", timeout_s=10)
    c.spawn(SpawnRequest("rm.3", SLEEP))
    with pytest.raises(Conflict):
        c.remove("rm.3")
    removal = c.prune()
    assert "rm.2" in removal.removed and "rm.3" not in removal.removed
    assert c.status("rm.3").persistent_status == "running"
    c.stop("rm.3", force=True)


def test_reap_finds_nothing_left_to_reap(c: Client) -> None:
    c.spawn(SpawnRequest("reap.1", ["true"]))
    c.wait("reap.1", timeout_s=10)
    assert c.reap() == []


def test_errors_map_to_their_classes(c: Client) -> None:
    with pytest.raises(NotFound) as nf:
        c.status("err.nobody")
    assert (nf.value.status, nf.value.code) == (404, "not_found") and "err.nobody" in str(nf.value)

    c.spawn(SpawnRequest("err.live", SLEEP))
    with pytest.raises(Conflict) as conflict:
        c.spawn(SpawnRequest("err.live", SLEEP))
    assert conflict.value.status == 409

    with pytest.raises(Invalid) as invalid:
        c.status("..bad")
    assert invalid.value.status == 400

    with pytest.raises(SpawnFailed) as failed:
        c.spawn(SpawnRequest("err.missing", ["/nonexistent/program"]))
    assert failed.value.status == 422 and "No such file or directory" in failed.value.message

    with pytest.raises(Invalid, match="cwd"):
        c.spawn(SpawnRequest("err.cwd", SLEEP, cwd="relative/dir"))
    for e in (nf, conflict, invalid, failed):
        assert isinstance(e.value, CorralError)
    c.stop("err.live", force=True)


def test_team_budgets_cap_spawns_and_show_usage(c: Client) -> None:
    team = c.set_team("tb", memory_mb=4096, max_agents=1)
    assert team.budget == corral_client.TeamBudget(memory_mb=4096.0, max_agents=1)
    assert team.enforcement == "sampler" and team.usage.agents == 0
    c.spawn(SpawnRequest("tb.1", SLEEP))
    with pytest.raises(corral_client.OverBudget) as over:
        c.spawn(SpawnRequest("tb.2", SLEEP))
    assert isinstance(over.value, Conflict) and (over.value.status, over.value.code) == (409, "budget")
    assert "team tb is at its budget of 1 live agent" in over.value.message
    with pytest.raises(NotFound):
        c.status("tb.2")
    shown = c.team("tb")
    assert shown.usage.agents == 1 and shown.members is not None
    assert [m.agent_id for m in shown.members] == ["tb.1"] and shown.members[0].state == AgentState.RUNNING
    assert shown.members[0].pids >= 1 and shown.members[0].memory_mb > 0
    assert [t.team for t in c.teams()] == ["tb"]
    with pytest.raises(Invalid, match="max_agents"):
        c.set_team("tb", max_agents=0)
    removed = c.remove_team("tb")
    assert removed.budget.max_agents == 1
    assert c.teams() == []
    with pytest.raises(NotFound):
        c.remove_team("tb")
    c.stop("tb.1", force=True)


def test_metrics_parse_as_prometheus_text(c: Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    c.spawn(SpawnRequest("metrics.1", SLEEP))
    families = {f.name: f for f in text_string_to_metric_families(c.metrics())}
    for name in (
        "corral_agents",
        "corral_agent_up",
        "corral_agent_cpu_percent",
        "corral_agent_memory_bytes",
        "corral_agent_restarts",
        "corral_spawns",
        "corral_stop_stage",
        "process_cpu_seconds",
        "process_resident_memory_bytes",
    ):
        assert name in families, f"{name} missing from {sorted(families)}"
    up = {s.labels["agent_id"]: s.value for s in families["corral_agent_up"].samples}
    assert up["metrics.1"] == 1.0
    running = [s for s in families["corral_agents"].samples if s.labels["state"] == "running"]
    assert running and running[0].value >= 1
    assert families["corral_agent_restarts"].type == "counter"
    memory = {s.labels["agent_id"]: s.value for s in families["corral_agent_memory_bytes"].samples}
    assert memory["metrics.1"] > 0


def test_tcp_with_a_bearer_token(corral: Corral, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    corral.start_daemon("--listen", f"127.0.0.1:{port}", "--token-file", str(token_file))

    c = Client(url=f"127.0.0.1:{port}", token_file=str(token_file))
    assert c.health().pid == corral.daemon_pid()
    r = c.spawn(SpawnRequest("tcp.1", ["sh", "-c", "echo over tcp; exec sleep 60"]))
    assert r.pid and alive(r.pid)
    assert within(10, lambda: next(c.follow_logs("tcp.1"))) == "over tcp\n"
    assert Client(url=f"http://127.0.0.1:{port}/", token=token).status("tcp.1").pid == r.pid

    with pytest.raises(Unauthorized) as refused:
        Client(url=f"127.0.0.1:{port}", token="not-the-token-at-all").summary()
    assert refused.value.status == 401
    with pytest.raises(ValueError, match="token"):
        Client(url=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="HOST:PORT"):
        Client(url="127.0.0.1", token=token)

    assert c.stop("tcp.1", force=True).stage == "kill"
    assert not alive(r.pid)


def test_forbidden_is_its_own_class() -> None:
    assert issubclass(Forbidden, CorralError) and not issubclass(Forbidden, Invalid)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_pause_and_resume_freeze_and_thaw_the_tree(c: Client) -> None:
    r = c.spawn(SpawnRequest("paused.1", SLEEP, stop_timeouts=[1, 1, 1]))
    assert r.pid
    [report] = c.pause("paused.1")
    assert isinstance(report, corral_client.PauseReport)
    assert report.outcome == corral_client.PauseOutcome.PAUSED and report.state == AgentState.PAUSED
    # Frozen by its cgroup, or stopped by SIGSTOP: either way the OS says so.
    frozen = report.method == "signals" and _proc_state(r.pid) == "T"
    if report.method == "cgroup":
        with open(f"/proc/{r.pid}/cgroup") as f:
            leaf = f.read().strip().split("::", 1)[1]
        root = next(p for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup") if os.path.isdir(p + leaf))
        with open(f"{root}{leaf}/cgroup.events") as f:
            frozen = "frozen 1" in f.read()
    assert frozen, report
    assert c.status("paused.1").health == Health.PAUSED
    [again] = c.pause("paused.1")
    assert again.outcome == corral_client.PauseOutcome.ALREADY_PAUSED
    [resumed] = c.resume(selector="paused.*")
    assert resumed.outcome == corral_client.PauseOutcome.RESUMED and resumed.state == AgentState.RUNNING
    assert _proc_state(r.pid) != "T"
    c.stop("paused.1")
    assert not alive(r.pid)


def test_inside_an_agent_a_bare_client_works_on_its_own_team(c: Client) -> None:
    """``Client()`` with no arguments, inside an agent, talks through
    ``$CORRAL_SOCKET``: it spawns helpers below its agent, is refused outside
    it, and lists only its team; stopping the agent stops its helpers."""
    c.spawn(SpawnRequest("pyteam.other", SLEEP))
    inside = (
        "import os, sys\n"
        "from corral_client import Client, Forbidden, SpawnRequest\n"
        "c = Client()\n"
        "r = c.spawn(SpawnRequest('pyteam.lead.h1', ['sleep', '60']))\n"
        "print('helper', r.pid)\n"
        "try:\n"
        "    c.spawn(SpawnRequest('pyteam.other2', ['sleep', '60']))\n"
        "except Forbidden as e:\n"
        "    print('forbidden', e.status)\n"
        "print('sees', ','.join(sorted(c.list_agents())))\n"
        "sys.stdout.flush()\n"
        "import time; time.sleep(60)\n"
    )
    package_root = os.path.dirname(os.path.dirname(corral_client.__file__))
    c.spawn(SpawnRequest("pyteam.lead", [sys.executable, "-c", inside], env={"PYTHONPATH": package_root}))

    def report() -> str:
        text = c.logs("pyteam.lead")
        return text if "sees" in text else ""

    text = poll(report, 10, "the agent's report")
    lines = {k: v for k, _, v in (line.partition(" ") for line in text.splitlines())}
    helper = int(lines["helper"])
    assert alive(helper) and c.status("pyteam.lead.h1").pid == helper
    assert lines["forbidden"] == "403"
    assert lines["sees"] == "pyteam.lead,pyteam.lead.h1"
    with pytest.raises(NotFound):
        c.status("pyteam.other2")

    reports = c.stop("pyteam.lead", stop_timeouts=[2, 1, 1])
    assert reports.agent_id == "pyteam.lead"
    assert not alive(helper), "the helper outlived its stopped parent"
    helper_status = c.status("pyteam.lead.h1")
    assert helper_status.persistent_status == PersistentStatus.CANCELLED
    assert "with its parent agent" in (helper_status.end_reason or "")
    c.stop_many(selector="pyteam.*", force=True)


def test_history_and_a_dashboard_login(c: Client) -> None:
    r = c.spawn(SpawnRequest("hist.1", SLEEP))
    assert r.pid

    def points() -> int:
        return len(c.history("hist.1").points)

    poll(lambda: points() >= 2, timeout=20, what="two history points")
    h = c.history("hist.1")
    assert h.agent_id == "hist.1" and h.interval_s > 0
    assert all(a.t < b.t for a, b in zip(h.points, h.points[1:]))
    assert all(p.memory_mb > 0 for p in h.points)
    assert c.history("hist.1", since=h.points[-1].t).points == []
    with pytest.raises(NotFound):
        c.history("hist.nobody")
    login = c.ui_login()
    assert login.url.startswith("http://127.0.0.1:") and login.url.endswith(login.path)
    assert login.path.startswith("/ui/login?code=") and login.expires_s > 0
    c.stop("hist.1")
