//! Resource limits, probes and agents run as another user, with real
//! processes: what the limits and probes decide is checked against `/proc`
//! and the files on disk.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{Cleanup, DEADLINE, proc_stat, request, wait_gone};
use corral_core::{
    AgentId, AgentState, AgentStatus, Config, Limits, PersistentStatus, Probe, Probes,
    ProgressUpdate, RestartMode, RestartPolicy, SpawnRequest, Supervisor,
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

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn restart_once() -> Option<RestartPolicy> {
    Some(RestartPolicy {
        policy: RestartMode::OnFailure,
        max_restarts: 1,
        window_s: 60.0,
        backoff_s: [0.1, 0.1],
    })
}

fn probes(liveness: Option<Probe>, readiness: Option<Probe>) -> Option<Probes> {
    Some(Probes {
        liveness,
        readiness,
        interval_s: 0.1,
        timeout_s: 0.5,
        failures: 2,
    })
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

/// A Python agent that fills `mb` MB of memory, then sleeps.
fn hog(mb: u32) -> Vec<&'static str> {
    let script = Box::leak(
        format!("b = b'x' * ({mb} * 1024 * 1024); import time; time.sleep(60)").into_boxed_str(),
    );
    vec!["python3", "-c", script]
}

#[tokio::test]
async fn a_tree_over_its_memory_limit_is_stopped_as_failed_naming_the_limit_then_restarted() {
    let (_cleanup, _dir, sup) = setup().await;
    let r = sup
        .spawn_agent(SpawnRequest {
            limits: Some(Limits {
                memory_mb: Some(64.0),
                ..Limits::default()
            }),
            restart: restart_once(),
            stop_timeouts: Some(vec![0.5, 0.5, 0.5]),
            ..request("hog", &hog(200), 0)
        })
        .await
        .unwrap();
    let s = sup.get_agent_status(&id("hog")).unwrap();
    assert_eq!(
        s.limits["memory_mb"].enforced_by, "sampler",
        "no memory controller here: {s:?}"
    );
    let done = sup.wait(&id("hog"), DEADLINE).await.unwrap();
    let runs = sup.runs(&id("hog")).await.unwrap();
    assert_eq!(
        runs.len(),
        2,
        "stopped, restarted once, stopped again: {runs:?}"
    );
    for run in &runs {
        assert_eq!(run.persistent_status, PersistentStatus::Failed);
        let reason = run.end_reason.as_deref().unwrap();
        assert!(
            reason.starts_with("memory limit 64 MB exceeded (tree RSS "),
            "{reason}"
        );
    }
    assert!(done.end_reason.unwrap().contains("crash loop"));
    wait_gone(r.pid.unwrap()).await;
    let events = sup.events_since(0, 1000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, corral_core::EventBody::Limit(l) if l.limit == "memory_mb"))
    );
}

#[tokio::test]
async fn nofile_is_the_agents_rlimit() {
    let (_cleanup, _dir, sup) = setup().await;
    let r = sup
        .spawn_agent(SpawnRequest {
            limits: Some(Limits {
                nofile: Some(1024),
                ..Limits::default()
            }),
            ..request("files", &["sleep", "30"], 0)
        })
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"],
        "{line}"
    );
    let s = sup.get_agent_status(&id("files")).unwrap();
    assert_eq!(s.limits["nofile"].enforced_by, "rlimit");
    sup.kill_agent(&id("files"), true).await.unwrap();
    wait_gone(pid).await;
}

/// A tiny HTTP server the test controls: it answers 200 until dropped.
async fn health_endpoint() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_http_liveness_endpoint_that_stops_answering_restarts_the_agent() {
    let (_cleanup, _dir, sup) = setup().await;
    let (addr, server) = health_endpoint().await;
    let r = sup
        .spawn_agent(SpawnRequest {
            probes: probes(Some(Probe::Http(format!("http://{addr}/healthz"))), None),
            restart: restart_once(),
            stop_timeouts: Some(vec![0.5, 0.5, 0.5]),
            ..request("web", &["sleep", "60"], 0)
        })
        .await
        .unwrap();
    let s = wait_until(&sup, "web", "a passing probe", |s| {
        s.probe
            .as_ref()
            .and_then(|p| p.liveness.as_ref())
            .and_then(|l| l.last_result.as_deref())
            == Some("passed")
    })
    .await;
    assert_eq!(s.run, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sup.get_agent_status(&id("web")).unwrap().run,
        1,
        "healthy: not restarted"
    );
    server.abort();
    let s = wait_until(&sup, "web", "a restart", |s| {
        s.run == 2 && s.state == AgentState::Running
    })
    .await;
    assert!(s.process_alive);
    let runs = sup.runs(&id("web")).await.unwrap();
    let reason = runs[0].end_reason.as_deref().unwrap();
    assert!(
        reason.contains("liveness probe (http) failed 2 times"),
        "{reason}"
    );
    assert!(reason.contains("cannot connect"), "{reason}");
    assert!(
        proc_stat(r.pid.unwrap()).is_none(),
        "run 1's process is gone"
    );
    sup.kill_agent(&id("web"), true).await.unwrap();
}

#[tokio::test]
async fn a_stuck_agent_is_restarted_and_one_that_reports_progress_is_not() {
    let (_cleanup, _dir, sup) = setup().await;
    let stale = || probes(Some(Probe::ProgressStaleS(0.6)), None);
    for agent in ["stuck", "busy"] {
        sup.spawn_agent(SpawnRequest {
            probes: stale(),
            restart: restart_once(),
            stop_timeouts: Some(vec![0.5, 0.5, 0.5]),
            ..request(agent, &["sleep", "60"], 0)
        })
        .await
        .unwrap();
    }
    let reporter = {
        let sup = sup.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let update = ProgressUpdate {
                    progress: i % 100,
                    message: None,
                };
                let _ = sup.set_progress(&id("busy"), update, None).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    // Run 2 is shown from the moment it is on record (`starting`), then runs.
    let s = wait_until(&sup, "stuck", "a restart", |s| {
        s.run == 2 && s.state == AgentState::Running
    })
    .await;
    assert_eq!(s.persistent_status, PersistentStatus::Running);
    let runs = sup.runs(&id("stuck")).await.unwrap();
    assert!(
        runs[0]
            .end_reason
            .as_deref()
            .unwrap()
            .contains("no progress report"),
        "{runs:?}"
    );
    let busy = sup.get_agent_status(&id("busy")).unwrap();
    assert_eq!((busy.run, busy.process_alive), (1, true), "{busy:?}");
    reporter.abort();
    for agent in ["stuck", "busy"] {
        sup.kill_agent(&id(agent), true).await.unwrap();
    }
}

#[tokio::test]
async fn a_passing_probe_shows_every_check_and_records_only_its_change() {
    let (_cleanup, _dir, sup) = setup().await;
    sup.spawn_agent(SpawnRequest {
        probes: probes(Some(Probe::ProgressStaleS(3600.0)), None),
        ..request("calm", &["sleep", "60"], 0)
    })
    .await
    .unwrap();
    let last_at = |s: &AgentStatus| {
        s.probe
            .as_ref()
            .and_then(|p| p.liveness.as_ref())
            .and_then(|l| l.last_at.clone())
    };
    let first = wait_until(&sup, "calm", "a first check", |s| last_at(s).is_some()).await;
    // Checked every 0.1 s: the status shows each check, though nothing changed.
    let later = wait_until(&sup, "calm", "a later check", |s| {
        last_at(s).is_some_and(|t| Some(t) != last_at(&first))
    })
    .await;
    let liveness = later.probe.clone().unwrap().liveness.unwrap();
    assert_eq!(liveness.last_result.as_deref(), Some("passed"));
    assert_eq!(liveness.consecutive_failures, 0);
    wait_until(&sup, "calm", "a third check", |s| {
        last_at(s).is_some_and(|t| Some(t) != last_at(&later))
    })
    .await;
    // Three checks; the store holds one probe event: the first result.
    let probe_events = sup
        .events_since(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.agent_id == "calm" && e.kind() == "probe")
        .count();
    assert_eq!(probe_events, 1, "only the change from no result to passed");
    sup.kill_agent(&id("calm"), true).await.unwrap();
}

#[tokio::test]
async fn exec_and_log_readiness_move_ready_from_false_to_true() {
    let (_cleanup, dir, sup) = setup().await;
    let flag = dir.path().join("ready.flag");
    let script = format!(
        "sleep 0.4; touch {}; echo 'listening on 8080'; sleep 60",
        flag.display()
    );
    let exec_check = Probe::Exec(vec!["test".into(), "-f".into(), flag.display().to_string()]);
    for (agent, readiness) in [
        ("by-exec", exec_check),
        ("by-log", Probe::Log("^listening on [0-9]+$".into())),
    ] {
        let r = sup
            .spawn_agent(SpawnRequest {
                probes: probes(None, Some(readiness)),
                ..request(agent, &["sh", "-c", &script], 0)
            })
            .await
            .unwrap();
        assert!(r.pid.is_some());
        let s = sup.get_agent_status(&id(agent)).unwrap();
        assert_eq!(s.ready, Some(false), "not ready before the first pass");
    }
    for agent in ["by-exec", "by-log"] {
        let s = wait_until(&sup, agent, "ready", |s| s.ready == Some(true)).await;
        let readiness = s.probe.unwrap().readiness.unwrap();
        assert_eq!(readiness.last_result.as_deref(), Some("passed"));
        sup.kill_agent(&id(agent), true).await.unwrap();
    }
    let plain = sup
        .spawn_agent(request("plain", &["sleep", "30"], 0))
        .await
        .unwrap();
    assert_eq!(sup.get_agent_status(&id("plain")).unwrap().ready, None);
    sup.kill_agent(&id("plain"), true).await.unwrap();
    wait_gone(plain.pid.unwrap()).await;
}

#[tokio::test]
async fn an_exec_probe_that_hangs_is_killed_and_reaped() {
    let (_cleanup, dir, sup) = setup().await;
    let marker = dir.path().join("probe.pids");
    let hang = format!("echo $$ >> {}; exec sleep 30", marker.display());
    let r = sup
        .spawn_agent(SpawnRequest {
            probes: Some(Probes {
                liveness: Some(Probe::Exec(vec!["sh".into(), "-c".into(), hang])),
                readiness: None,
                interval_s: 0.1,
                timeout_s: 0.3,
                failures: 100,
            }),
            ..request("patient", &["sleep", "60"], 0)
        })
        .await
        .unwrap();
    let s = wait_until(&sup, "patient", "timed-out checks", |s| {
        s.probe
            .as_ref()
            .and_then(|p| p.liveness.as_ref())
            .is_some_and(|l| l.consecutive_failures >= 2)
    })
    .await;
    let output = s.probe.unwrap().liveness.unwrap().last_output.unwrap();
    assert!(
        output.contains("no answer within 0.3 s; killed"),
        "{output}"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // Every finished check is gone: killed and reaped, no zombie.
    for pid in &pids[..pids.len() - 1] {
        wait_gone(*pid).await;
    }
    sup.kill_agent(&id("patient"), true).await.unwrap();
    wait_gone(r.pid.unwrap()).await;
}

#[tokio::test]
async fn an_agent_runs_as_nobody_and_its_files_are_nobodys() {
    // SAFETY: a plain syscall.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root: it switches an agent to nobody"
    );
    let (_cleanup, dir, sup) = setup().await;
    let agent_dir = dir.path().join("nobody-agent");
    let r = sup
        .spawn_agent(SpawnRequest {
            user: Some("nobody".into()),
            agent_dir: Some(agent_dir.clone()),
            ..request("low", &["sh", "-c", "id -u; sleep 30"], 0)
        })
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().collect::<Vec<_>>()[1..],
        ["65534"; 4],
        "{uid_line}"
    );
    for path in [&agent_dir, &r.stdout_log, &r.stderr_log] {
        assert_eq!(
            std::fs::metadata(path).unwrap().uid(),
            65534,
            "{}",
            path.display()
        );
    }
    let s = sup.get_agent_status(&id("low")).unwrap();
    assert_eq!(s.user.as_deref(), Some("nobody"));
    let lines = common::wait_lines(&r.stdout_log, 1).await;
    assert_eq!(lines[0], "65534");
    sup.kill_agent(&id("low"), true).await.unwrap();
    wait_gone(pid).await;
    let err = sup
        .spawn_agent(SpawnRequest {
            user: Some("no-such-user-here".into()),
            ..request("ghost", &["true"], 0)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
