//! Restart policies, runtime limits and tree figures with real processes:
//! every run a restart starts is a real process with its own record, checked
//! against `/proc`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::{Cleanup, DEADLINE, proc_stat, request, wait_gone};
use corral_core::{
    AgentId, AgentState, AgentStatus, CleanupOptions, Config, PersistentStatus, RestartMode,
    RestartPolicy, RunInfo, Selector, SpawnRequest, StopStage, Supervisor,
};

async fn setup() -> (Cleanup, tempfile::TempDir, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.sample_interval = Duration::from_millis(100);
    let sup = Supervisor::open(config).await.unwrap();
    let cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    (cleanup, dir, sup)
}

fn policy(mode: RestartMode, max: u32, backoff: [f64; 2]) -> RestartPolicy {
    RestartPolicy {
        policy: mode,
        max_restarts: max,
        window_s: 60.0,
        backoff_s: backoff,
    }
}

fn with_restart(id: &str, argv: &[&str], restart: RestartPolicy) -> SpawnRequest {
    SpawnRequest {
        restart: Some(restart),
        ..request(id, argv, 0)
    }
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

async fn wait_until(
    sup: &Supervisor,
    agent: &str,
    what: &str,
    pred: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = sup.get_agent_status(&id(agent)).unwrap();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < end, "{agent} never reached {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn started(r: &RunInfo) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(&r.started_at).unwrap()
}

fn ended(r: &RunInfo) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(r.ended_at.as_deref().unwrap()).unwrap()
}

#[tokio::test]
async fn a_crashing_agent_restarts_with_growing_delays_then_is_a_crash_loop() {
    let (_cleanup, _dir, sup) = setup().await;
    let p = policy(RestartMode::OnFailure, 3, [0.2, 0.8]);
    sup.spawn_agent(with_restart("crash", &["sh", "-c", "exit 1"], p))
        .await
        .unwrap();
    let done = sup
        .wait(&id("crash"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.persistent_status, PersistentStatus::Failed);
    assert_eq!(done.next_restart_at, None);
    let reason = done.end_reason.unwrap();
    assert!(reason.contains("crash loop"), "{reason}");
    let runs = sup.runs(&id("crash")).await.unwrap();
    assert_eq!(runs.len(), 4, "the first run and 3 restarts: {runs:?}");
    for r in &runs {
        assert_eq!(r.exit_code, Some(1));
        assert!(proc_stat(r.pid.unwrap()).is_none(), "a real process, gone");
    }
    // Each wait is about twice the last (±20 % jitter), from 0.2 s.
    let gaps: Vec<f64> = runs
        .windows(2)
        .map(|w| {
            started(&w[1])
                .duration_since(ended(&w[0]))
                .unwrap()
                .as_secs_f64()
        })
        .collect();
    assert!(gaps[0] >= 0.15, "{gaps:?}");
    assert!(
        gaps[1] > gaps[0] * 1.3 && gaps[2] > gaps[1] * 1.3,
        "growing: {gaps:?}"
    );
    let events = sup.events_since(0, 1000).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "restart").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "crash_loop").count(), 1);
    // Nothing more starts.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sup.runs(&id("crash")).await.unwrap().len(), 4);
}

#[tokio::test]
async fn always_restarts_a_completed_run_and_on_failure_does_not() {
    let (_cleanup, _dir, sup) = setup().await;
    let fast = [0.05, 0.05];
    sup.spawn_agent(with_restart(
        "again",
        &["true"],
        policy(RestartMode::Always, 2, fast),
    ))
    .await
    .unwrap();
    sup.spawn_agent(with_restart(
        "once",
        &["true"],
        policy(RestartMode::OnFailure, 2, fast),
    ))
    .await
    .unwrap();
    let again = sup.wait(&id("again"), DEADLINE).await.unwrap();
    assert_eq!(again.run, 3, "two restarts, then a crash loop: {again:?}");
    let runs = sup.runs(&id("again")).await.unwrap();
    assert!(
        runs.iter()
            .all(|r| r.persistent_status == PersistentStatus::Completed)
    );
    let once = sup.wait(&id("once"), DEADLINE).await.unwrap();
    assert_eq!(
        (once.run, once.persistent_status),
        (1, PersistentStatus::Completed)
    );
}

#[tokio::test]
async fn a_user_stop_or_kill_never_restarts_and_a_stop_cancels_a_planned_restart() {
    let (_cleanup, _dir, sup) = setup().await;
    let p = policy(RestartMode::Always, 5, [0.05, 0.05]);
    let stopped = sup
        .spawn_agent(with_restart("s", &["sleep", "30"], p.clone()))
        .await
        .unwrap();
    let killed = sup
        .spawn_agent(with_restart("k", &["sleep", "30"], p.clone()))
        .await
        .unwrap();
    let report = sup
        .cleanup(Some(&Selector::One(id("s"))), CleanupOptions::default())
        .await
        .unwrap();
    assert_eq!(report[0].stage, StopStage::Term);
    assert!(sup.kill_agent(&id("k"), true).await.unwrap());
    wait_gone(stopped.pid.unwrap()).await;
    wait_gone(killed.pid.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for agent in ["s", "k"] {
        let s = sup.get_agent_status(&id(agent)).unwrap();
        assert_eq!(
            (s.run, s.persistent_status),
            (1, PersistentStatus::Cancelled),
            "{agent}"
        );
        assert_eq!(s.next_restart_at, None);
    }
    // A long backoff, called off by a stop while it waits.
    let slow = policy(RestartMode::Always, 5, [30.0, 30.0]);
    sup.spawn_agent(with_restart("w", &["true"], slow))
        .await
        .unwrap();
    let waiting = wait_until(&sup, "w", "a planned restart", |s| {
        s.next_restart_at.is_some()
    })
    .await;
    assert_eq!(waiting.persistent_status, PersistentStatus::Completed);
    let report = sup
        .cleanup(Some(&Selector::One(id("w"))), CleanupOptions::default())
        .await
        .unwrap();
    assert_eq!(report[0].stage, StopStage::AlreadyEnded);
    let s = sup.wait(&id("w"), Duration::from_secs(2)).await.unwrap();
    assert_eq!((s.run, s.next_restart_at), (1, None));
}

#[tokio::test]
async fn max_runtime_stops_a_sleeper_as_failed_naming_the_limit() {
    let (_cleanup, _dir, sup) = setup().await;
    let r = sup
        .spawn_agent(SpawnRequest {
            max_runtime_s: Some(0.3),
            ..request("sleeper", &["sleep", "30"], 0)
        })
        .await
        .unwrap();
    let began = Instant::now();
    let s = sup.wait(&id("sleeper"), DEADLINE).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(s.persistent_status, PersistentStatus::Failed);
    assert_eq!(s.exit_signal, Some(15));
    assert!(
        s.end_reason
            .as_deref()
            .unwrap()
            .contains("max_runtime_s 0.3 exceeded"),
        "{s:?}"
    );
    wait_gone(r.pid.unwrap()).await;
}

#[tokio::test]
async fn the_tree_counts_a_shell_and_its_two_children() {
    let (_cleanup, _dir, sup) = setup().await;
    let r = sup
        .spawn_agent(request(
            "tree",
            &["sh", "-c", "sleep 30 & sleep 30 & yes > /dev/null & wait"],
            0,
        ))
        .await
        .unwrap();
    let s = wait_until(&sup, "tree", "a tree of 4", |s| {
        s.tree
            .is_some_and(|t| t.processes == 4 && t.cpu_percent > 20.0)
    })
    .await;
    let tree = s.tree.unwrap();
    // The busy child's CPU is the tree's, not the shell's own.
    assert!(s.cpu_percent < 10.0, "{s:?}");
    assert!(tree.memory_mb > s.memory_mb);
    sup.kill_agent(&id("tree"), true).await.unwrap();
    wait_gone(r.pid.unwrap()).await;
}

#[tokio::test]
async fn a_restart_first_clears_what_the_ended_run_left_behind() {
    let (_cleanup, dir, sup) = setup().await;
    let marker = dir.path().join("leftover.pid");
    let script = format!("sleep 300 & echo $! >> {}; exit 1", marker.display());
    let p = policy(RestartMode::OnFailure, 1, [0.2, 0.2]);
    sup.spawn_agent(with_restart("leaky", &["sh", "-c", &script], p))
        .await
        .unwrap();
    sup.wait(&id("leaky"), DEADLINE).await.unwrap();
    let runs = sup.runs(&id("leaky")).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let pids: Vec<i32> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    // The first run's leftover was gone before the second run started, and
    // the last run's too: a run ends only when nothing of it is left.
    for (i, pid) in pids.iter().enumerate() {
        assert!(
            proc_stat(*pid).is_none(),
            "run {}'s leftover {pid} survived its run",
            i + 1
        );
    }
    let last = sup.get_agent_status(&id("leaky")).unwrap();
    assert_eq!(last.state, AgentState::Ended, "{last:?}");
    for run in &runs {
        let reason = run.end_reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("exited with code 1") && reason.contains("1 leftover process stopped"),
            "{reason}"
        );
    }
}
