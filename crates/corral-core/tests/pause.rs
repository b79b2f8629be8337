//! Pauses with real processes, checked against `/proc` and the cgroup files:
//! a paused tree does not run (its CPU time stops), a resumed one runs again,
//! a stop of a paused agent thaws it first, and the runtime limit does not
//! count the time paused.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{Cleanup, DEADLINE, proc_stat, request, wait_gone};
use corral_core::{
    AgentId, AgentState, AgentStatus, CleanupOptions, Config, Error, EventBody, Health,
    PauseOutcome, Selector, SpawnRequest, StopCause, StopStage, Supervisor,
};

/// A CPU-busy agent.
const BUSY: &[&str] = &["sh", "-c", "while :; do :; done"];
/// A CPU-busy agent with a CPU-busy child.
const BUSY_PARENT: &[&str] = &[
    "sh",
    "-c",
    "sh -c 'while :; do :; done' & while :; do :; done",
];

/// [`BUSY_PARENT`] whose main process exits 3 on SIGTERM (a frozen process
/// runs no handler: only a thawed one can exit so; an unhandled SIGTERM would
/// end even a frozen process).
const BUSY_PARENT_TRAP: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 3' TERM; sh -c 'while :; do :; done' & while :; do :; done",
];

both_containments!(
    a_paused_tree_stops_using_cpu_and_a_resumed_one_runs_again,
    a_stop_of_a_paused_agent_thaws_it_and_ends_it_at_the_first_term,
    max_runtime_does_not_count_the_time_paused,
);

async fn setup(cgroups: bool) -> (Cleanup, tempfile::TempDir, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.cgroups = cgroups;
    config.sample_interval = Duration::from_millis(200);
    let sup = Supervisor::open(config).await.unwrap();
    if cgroups {
        // SAFETY: a plain syscall.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            !root || sup.cgroup_subtree().is_some(),
            "root without a writable cgroup2 hierarchy"
        );
    }
    let cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    (cleanup, dir, sup)
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

/// User CPU ticks of `pid` (field 14 of its stat).
fn utime(pid: i32) -> u64 {
    proc_stat(pid).unwrap()[11].parse().unwrap()
}

/// The state letter of `pid`.
fn state(pid: i32) -> char {
    proc_stat(pid).unwrap()[0].chars().next().unwrap()
}

/// Polls until `what` holds, for up to the deadline.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that `pid`'s CPU time does not move for a while (it is frozen or stopped).
async fn cpu_stays(pid: i32, window: Duration) {
    let start = utime(pid);
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert_eq!(utime(pid), start, "pid {pid} used CPU while paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `pid`'s CPU time moves (it runs).
async fn cpu_moves(pid: i32) {
    let start = utime(pid);
    until(&format!("pid {pid} uses CPU"), || utime(pid) > start).await;
}

/// The only child of `pid`, once it has one.
async fn child_of(pid: i32) -> i32 {
    let mut found = None;
    until(&format!("pid {pid} has a child"), || {
        found = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| proc_stat(*p).is_some_and(|s| s[1] == pid.to_string()));
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// The `cgroup.events` of the agent's leaf, when it has one.
fn leaf_events(sup: &Supervisor, agent: &str, run: u32) -> Option<String> {
    let leaf = sup.cgroup_subtree()?.join(format!("{agent}.{run}"));
    std::fs::read_to_string(leaf.join("cgroup.events")).ok()
}

fn status(sup: &Supervisor, agent: &str) -> AgentStatus {
    sup.get_agent_status(&id(agent)).unwrap()
}

async fn a_paused_tree_stops_using_cpu_and_a_resumed_one_runs_again(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = sup.spawn_agent(request("p", BUSY_PARENT, 0)).await.unwrap();
    let pid = r.pid.unwrap();
    let child = child_of(pid).await;
    cpu_moves(child).await;
    let method = if status(&sup, "p").containment == "cgroup" {
        "cgroup"
    } else {
        "signals"
    };

    let report = sup.pause_agent(&id("p")).await.unwrap();
    assert_eq!(report.outcome, PauseOutcome::Paused, "{report:?}");
    assert_eq!(report.state, AgentState::Paused);
    assert_eq!(report.method.as_deref(), Some(method));
    assert!(report.processes.unwrap() >= 2, "{report:?}");
    let s = status(&sup, "p");
    assert_eq!((s.state, s.health), (AgentState::Paused, Health::Paused));
    assert!(s.process_alive);
    if method == "cgroup" {
        let events = leaf_events(&sup, "p", 1).unwrap();
        assert!(events.contains("frozen 1"), "{events}");
    } else {
        for p in [pid, child] {
            until(&format!("pid {p} is stopped"), || state(p) == 'T').await;
        }
    }
    for p in [pid, child] {
        cpu_stays(p, Duration::from_millis(400)).await;
    }
    // Asking again changes nothing.
    let again = sup.pause_agent(&id("p")).await.unwrap();
    assert_eq!(again.outcome, PauseOutcome::AlreadyPaused);
    let events = sup.events_since(0, 1000).await.unwrap();
    assert!(
        events.iter().any(|e| e.agent_id == "p"
            && matches!(&e.body, EventBody::State(st) if st.state == Some(AgentState::Paused))),
        "a state event says paused"
    );

    let report = sup.resume_agent(&id("p")).await.unwrap();
    assert_eq!(report.outcome, PauseOutcome::Resumed, "{report:?}");
    assert_eq!(report.state, AgentState::Running);
    let s = status(&sup, "p");
    assert_eq!((s.state, s.health), (AgentState::Running, Health::Healthy));
    for p in [pid, child] {
        cpu_moves(p).await;
        assert_ne!(state(p), 'T');
    }
    if method == "cgroup" {
        let events = leaf_events(&sup, "p", 1).unwrap();
        assert!(events.contains("frozen 0"), "{events}");
    }
    let again = sup.resume_agent(&id("p")).await.unwrap();
    assert_eq!(again.outcome, PauseOutcome::NotPaused);
    assert!(events_say(&sup, "p", AgentState::Running).await >= 2);

    sup.kill_agent(&id("p"), true).await.unwrap();
    wait_gone(pid).await;
    wait_gone(child).await;
}

/// How many state events of `agent` say `state`.
async fn events_say(sup: &Supervisor, agent: &str, state: AgentState) -> usize {
    sup.events_since(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            e.agent_id == agent
                && matches!(&e.body, EventBody::State(st) if st.state == Some(state))
        })
        .count()
}

async fn a_stop_of_a_paused_agent_thaws_it_and_ends_it_at_the_first_term(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = sup
        .spawn_agent(SpawnRequest {
            stop_timeouts: Some(vec![5.0, 5.0, 5.0]),
            ..request("s", BUSY_PARENT_TRAP, 0)
        })
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let child = child_of(pid).await;
    sup.pause_agent(&id("s")).await.unwrap();
    assert_eq!(status(&sup, "s").state, AgentState::Paused);
    let t0 = Instant::now();
    let report = sup
        .cleanup(Some(&Selector::One(id("s"))), CleanupOptions::default())
        .await
        .unwrap()
        .remove(0);
    // Frozen, its handler could not run: the stop would last until SIGKILL, 10 s on.
    assert_eq!(report.stage, StopStage::Term, "{report:?}");
    assert_eq!(report.exit_code, Some(3), "{report:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let s = status(&sup, "s");
    assert_eq!((s.state, s.health), (AgentState::Ended, Health::Cancelled));
    wait_gone(pid).await;
    wait_gone(child).await;
    // Only a running agent can be paused, only a paused one resumed.
    let err = sup.pause_agent(&id("s")).await.unwrap_err();
    assert!(matches!(err, Error::State { .. }), "{err}");
    assert!(err.to_string().contains("ended"), "{err}");
    let err = sup.resume_agent(&id("s")).await.unwrap_err();
    assert!(matches!(err, Error::State { .. }), "{err}");
}

async fn max_runtime_does_not_count_the_time_paused(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = sup
        .spawn_agent(SpawnRequest {
            max_runtime_s: Some(1.5),
            stop_timeouts: Some(vec![1.0, 1.0, 1.0]),
            ..request("m", BUSY, 0)
        })
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let started = Instant::now();
    sup.pause_agent(&id("m")).await.unwrap();
    // Paused for 2 s of wall time, longer than the whole limit.
    let end = started + Duration::from_secs(2);
    while Instant::now() < end {
        assert_eq!(status(&sup, "m").state, AgentState::Paused);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sup.resume_agent(&id("m")).await.unwrap();
    let s = status(&sup, "m");
    assert_eq!(s.state, AgentState::Running, "{s:?}");
    assert!(s.runtime_seconds >= 2.0, "wall-clock runtime: {s:?}");
    // Still running a moment after: the 1.5 s limit counts from here on
    // (less what it ran before the pause).
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&sup, "m").state, AgentState::Running);
    // ... and it is enforced once the time not paused adds up to it.
    let done = sup.wait(&id("m"), DEADLINE).await.unwrap();
    assert!(
        resumed.elapsed() >= Duration::from_millis(1000),
        "stopped {:?} after the resume",
        resumed.elapsed()
    );
    assert!(
        done.end_reason
            .as_deref()
            .unwrap()
            .contains("max_runtime_s 1.5"),
        "{done:?}"
    );
    let events = sup.events_since(0, 1000).await.unwrap();
    assert!(events.iter().any(|e| matches!(
        &e.body,
        EventBody::State(st) if st.stop.as_ref().is_some_and(|s| s.cause == StopCause::MaxRuntime)
    )));
    wait_gone(pid).await;
}

/// A selector pauses every agent it picks that runs, and skips the others,
/// saying why.
#[tokio::test]
async fn a_selector_pauses_what_runs_and_skips_the_rest_with_a_reason() {
    let (_cleanup, _dir, sup) = setup(true).await;
    let a = sup.spawn_agent(request("t.a", BUSY, 0)).await.unwrap();
    let b = sup
        .spawn_agent(request("t.b", &["sh", "-c", "exit 0"], 0))
        .await
        .unwrap();
    sup.wait(&id("t.b"), DEADLINE).await.unwrap();
    // A stubborn one, being stopped.
    let c = sup
        .spawn_agent(SpawnRequest {
            stop_timeouts: Some(vec![30.0, 30.0, 30.0]),
            ..request(
                "t.c",
                &["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"],
                0,
            )
        })
        .await
        .unwrap();
    let stopping = sup.clone();
    let stop = tokio::spawn(async move {
        stopping
            .cleanup(Some(&Selector::One(id("t.c"))), CleanupOptions::default())
            .await
    });
    until("t.c is stopping", || {
        status(&sup, "t.c").state == AgentState::Stopping
    })
    .await;

    let reports = sup
        .pause_selected(Some(&Selector::parse("t.*").unwrap()))
        .await
        .unwrap();
    let got: Vec<(&str, PauseOutcome)> = reports
        .iter()
        .map(|r| (r.agent_id.as_str(), r.outcome))
        .collect();
    // The ended one is left out.
    assert_eq!(
        got,
        [
            ("t.a", PauseOutcome::Paused),
            ("t.c", PauseOutcome::Skipped)
        ],
        "{reports:?}"
    );
    assert_eq!(reports[1].state, AgentState::Stopping);
    assert!(
        reports[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("being stopped"),
        "{reports:?}"
    );
    // One id that cannot be paused is an error naming its state.
    let err = sup.pause_agent(&id("t.c")).await.unwrap_err();
    assert!(err.to_string().contains("is stopping"), "{err}");
    assert_eq!(err.code(), corral_core::ErrorCode::Conflict);
    let err = sup.pause_agent(&id("t.nobody")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    let all = sup.resume_selected(None).await.unwrap();
    let got: Vec<(&str, PauseOutcome)> = all
        .iter()
        .map(|r| (r.agent_id.as_str(), r.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("t.a", PauseOutcome::Resumed),
            ("t.c", PauseOutcome::Skipped)
        ],
        "{all:?}"
    );
    sup.kill_agent(&id("t.c"), true).await.unwrap();
    stop.await.unwrap().unwrap();
    sup.kill_agent(&id("t.a"), true).await.unwrap();
    wait_gone(a.pid.unwrap()).await;
    wait_gone(c.pid.unwrap()).await;
    let _ = b;
}

/// `progress_stale_s` does not count the time paused, and no probe runs
/// while paused: an agent that never reports progress outlives a pause
/// longer than the limit, then fails the probe once the time not paused
/// adds up to it.
#[tokio::test]
async fn progress_stale_s_does_not_count_the_time_paused() {
    let (_cleanup, _dir, sup) = setup(true).await;
    let r = sup
        .spawn_agent(SpawnRequest {
            probes: Some(corral_core::Probes {
                liveness: Some(corral_core::Probe::ProgressStaleS(1.5)),
                readiness: None,
                interval_s: 0.1,
                timeout_s: 0.5,
                failures: 2,
            }),
            stop_timeouts: Some(vec![1.0, 1.0, 1.0]),
            ..request("quiet", &["sleep", "60"], 0)
        })
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    sup.pause_agent(&id("quiet")).await.unwrap();
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(2) {
        assert_eq!(status(&sup, "quiet").state, AgentState::Paused);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_at = |sup: &Supervisor| {
        status(sup, "quiet")
            .probe
            .and_then(|p| p.liveness)
            .and_then(|l| l.last_at)
    };
    let before = last_at(&sup);
    sup.resume_agent(&id("quiet")).await.unwrap();
    let resumed = Instant::now();
    // Checked at once on resume: it passes, the 2 s paused left out.
    until("a probe check after the resume", || last_at(&sup) != before).await;
    let s = status(&sup, "quiet");
    let liveness = s.probe.unwrap().liveness.unwrap();
    assert_eq!(
        liveness.last_result.as_deref(),
        Some("passed"),
        "{liveness:?}"
    );
    assert_eq!(s.state, AgentState::Running);
    let done = sup.wait(&id("quiet"), DEADLINE).await.unwrap();
    assert!(
        resumed.elapsed() >= Duration::from_millis(1000),
        "stopped {:?} after the resume",
        resumed.elapsed()
    );
    assert!(
        done.end_reason
            .as_deref()
            .unwrap()
            .contains("progress_stale_s 1.5"),
        "{done:?}"
    );
    wait_gone(pid).await;
}
