//! The library against real processes: every claim corral makes is checked
//! against what `/proc` holds. Each test stops what it started and checks that
//! no process or zombie of it remains.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_core::{
    AgentId, CleanupOptions, Config, Error, Health, PersistentStatus, ProgressUpdate, Supervisor,
};

mod common;
use common::{Cleanup, DEADLINE, proc_stat, request, wait_gone};

struct Harness {
    sup: Supervisor,
    dir: tempfile::TempDir,
    pids: Vec<i32>,
    /// Last field: dropped last, after the supervisor.
    _cleanup: Cleanup,
}

impl Harness {
    async fn new() -> Self {
        Self::with_sampling(Duration::from_millis(200)).await
    }

    async fn with_sampling(interval: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("state"));
        config.sample_interval = interval;
        let sup = Supervisor::open(config).await.unwrap();
        let cgroup_dir = sup.cgroup_subtree().map(Into::into);
        Self {
            sup,
            dir,
            pids: Vec::new(),
            _cleanup: Cleanup { cgroup: cgroup_dir },
        }
    }

    async fn spawn(
        &mut self,
        id: &str,
        argv: &[&str],
        verify_ms: u64,
    ) -> Result<corral_core::SpawnResponse, Error> {
        let r = self.sup.spawn_agent(request(id, argv, verify_ms)).await;
        if let Ok(resp) = &r {
            self.pids.push(resp.pid.unwrap());
        }
        r
    }

    fn status(&self, id: &str) -> corral_core::AgentStatus {
        self.sup
            .get_agent_status(&AgentId::new(id).unwrap())
            .unwrap()
    }

    async fn wait_status(&self, id: &str, want: PersistentStatus) -> corral_core::AgentStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.status(id);
            if s.persistent_status == want {
                return s;
            }
            assert!(Instant::now() < end, "{id} never became {want}: {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops everything and proves with /proc that nothing is left.
    async fn finish(self) {
        let opts = CleanupOptions {
            force: true,
            stop_timeouts: None,
        };
        self.sup.cleanup(None, opts).await.unwrap();
        for pid in &self.pids {
            wait_gone(*pid).await;
        }
        drop(self.dir);
    }
}

#[tokio::test]
async fn a_running_agent_is_reported_as_the_os_sees_it() {
    let mut h = Harness::new().await;
    let resp = h.spawn("L2.1.1", &["sleep", "30"], 100).await.unwrap();
    assert_eq!(resp.status, PersistentStatus::Running);
    let stat = proc_stat(resp.pid.unwrap()).expect("the agent exists in /proc");
    assert_eq!(stat[0], "S", "sleep sleeps");
    assert_eq!(
        stat[2],
        resp.pid.unwrap().to_string(),
        "leads its own process group"
    );
    assert_eq!(
        stat[3],
        resp.pid.unwrap().to_string(),
        "leads its own session"
    );
    assert_eq!(stat[1], std::process::id().to_string(), "is our child");

    let environ = std::fs::read(format!("/proc/{}/environ", resp.pid.unwrap())).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == b"CORRAL_AGENT_ID=L2.1.1")
    );
    let stdin = std::fs::read_link(format!("/proc/{}/fd/0", resp.pid.unwrap())).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    let stdout = std::fs::read_link(format!("/proc/{}/fd/1", resp.pid.unwrap())).unwrap();
    assert_eq!(stdout, resp.stdout_log);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", resp.pid.unwrap()))
        .unwrap()
        .count();
    assert_eq!(fds, 3, "only stdin, stdout and stderr are inherited");

    let s = h.status("L2.1.1");
    assert_eq!(s.pid, resp.pid);
    assert!(s.process_alive);
    assert!(!s.is_zombie);
    assert_eq!(s.process_status, "sleeping");
    assert_eq!(s.health, Health::Healthy);
    assert_eq!(s.persistent_status, PersistentStatus::Running);
    assert_eq!(s.cmdline, "sleep 30");
    assert_eq!(s.exit_code, None);
    assert_eq!(s.num_threads, 1);
    assert!(s.memory_mb > 0.0 && s.memory_mb < 50.0, "{}", s.memory_mb);
    assert!(s.runtime_seconds >= 0.0 && s.runtime_seconds < 10.0);
    assert!(
        humantime::parse_rfc3339(&s.started_at).is_ok(),
        "{}",
        s.started_at
    );
    assert!(
        h.sup
            .check_process_health(&AgentId::new("L2.1.1").unwrap())
            .unwrap()
    );
    let summary = h.sup.get_process_summary();
    assert_eq!((summary.total, summary.running), (1, 1));
    h.finish().await;
}

#[tokio::test]
async fn cpu_and_memory_agree_with_an_independent_proc_reading() {
    let mut h = Harness::with_sampling(Duration::from_millis(250)).await;
    // Touch every page of 64 MiB so it is resident, then spin.
    let script = "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('ready', flush=True)\nwhile True: pass\n";
    let resp = h
        .spawn("busy", &["python3", "-c", script], 100)
        .await
        .unwrap();
    let pid = resp.pid.unwrap();
    let stdout = resp.stdout_log.clone();
    let end = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&stdout)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < end, "agent never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ticks = |pid: i32| {
        let f = proc_stat(pid).unwrap();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let clk = 100.0; // USER_HZ: what /proc reports in on Linux.
    // Independent reading over a window that spans several of corral's
    // intervals, against the mean of corral's samples taken in that window
    // (each covers its own 250 ms: on a loaded machine one interval can differ
    // from the window's mean by more than the tolerance, the mean cannot).
    let (t0, c0) = (Instant::now(), ticks(pid));
    let mut samples: Vec<f64> = Vec::new();
    let mut last = None;
    while t0.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cpu = h.status("busy").cpu_percent;
        if last != Some(cpu) && t0.elapsed() > Duration::from_millis(250) {
            samples.push(cpu);
        }
        last = Some(cpu);
    }
    let (t1, c1) = (Instant::now(), ticks(pid));
    let independent_cpu = (c1 - c0) as f64 / clk / (t1 - t0).as_secs_f64() * 100.0;
    assert!(samples.len() >= 3, "corral sampled {} times", samples.len());
    let corral_cpu = samples.iter().sum::<f64>() / samples.len() as f64;
    let s = h.status("busy");
    let independent_mb = resident_mb(pid);

    // The spinner's share depends on how busy the machine is (a loaded
    // 2-core runner gives it well under a core); what it must have is enough
    // CPU for the comparison below to mean something.
    assert!(
        independent_cpu > 20.0,
        "a spinning agent uses CPU: {independent_cpu}"
    );
    assert!(
        (corral_cpu - independent_cpu).abs() < 20.0,
        "corral {corral_cpu} (mean of {samples:?}) vs /proc {independent_cpu}"
    );
    assert!(independent_mb > 64.0, "{independent_mb}");
    assert!(
        (s.memory_mb - independent_mb).abs() < 2.0,
        "corral {} vs /proc {independent_mb}",
        s.memory_mb
    );
    assert_eq!(s.process_status, "running");
    h.finish().await;
}

#[tokio::test]
async fn exec_failures_are_errors_with_the_os_reason() {
    let mut h = Harness::new().await;
    let err = h
        .spawn("missing", &["/nonexistent/bin/agent"], 100)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );

    let err = h
        .spawn("missing-in-path", &["no-such-program-corral"], 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found in PATH"), "{err}");

    let script = h.dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let err = h
        .spawn("noexec", &[script.to_str().unwrap()], 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");

    let mut req = request("badcwd", &["sleep", "5"], 100);
    req.cwd = Some("/nonexistent/dir".into());
    let err = h.sup.spawn_agent(req).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("working directory /nonexistent/dir"),
        "{err}"
    );

    for id in ["missing", "missing-in-path", "noexec", "badcwd"] {
        let s = h.status(id);
        assert_eq!(s.persistent_status, PersistentStatus::Failed, "{id}");
        assert!(!s.process_alive);
        assert_eq!(s.pid, None, "{id} never had a process");
        assert_eq!(s.health, Health::Failed);
        assert!(s.end_reason.unwrap().contains("cannot start"));
    }
    assert_eq!(h.sup.get_process_summary().running, 0);
    h.finish().await;
}

#[tokio::test]
async fn death_inside_the_window_is_failed_with_code_and_stderr_and_returns_early() {
    let mut h = Harness::new().await;
    let began = Instant::now();
    let resp = h
        .spawn(
            "dies",
            &[
                "sh",
                "-c",
                "echo starting; echo 'boom: config missing' >&2; exit 7",
            ],
            5000,
        )
        .await
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "the window must end when the agent does"
    );
    assert_eq!(resp.status, PersistentStatus::Failed);
    assert_eq!(resp.exit_code, Some(7));
    let error = resp.error.unwrap();
    assert!(error.contains("boom: config missing"), "{error}");
    assert!(error.contains("exited with code 7"), "{error}");
    assert!(
        proc_stat(resp.pid.unwrap()).is_none(),
        "reaped at once: no zombie"
    );
    let s = h.status("dies");
    assert_eq!(s.health, Health::Failed);
    assert!(!s.is_zombie);
    h.finish().await;
}

#[tokio::test]
async fn exit_zero_completes_and_exit_three_fails() {
    let mut h = Harness::new().await;
    h.spawn("ok", &["sh", "-c", "sleep 0.2; exit 0"], 0)
        .await
        .unwrap();
    h.spawn("bad", &["sh", "-c", "sleep 0.2; exit 3"], 0)
        .await
        .unwrap();
    let ok = h.wait_status("ok", PersistentStatus::Completed).await;
    assert_eq!((ok.exit_code, ok.health), (Some(0), Health::Completed));
    let bad = h.wait_status("bad", PersistentStatus::Failed).await;
    assert_eq!((bad.exit_code, bad.health), (Some(3), Health::Failed));
    assert!(bad.ended_at.is_some());
    assert!(proc_stat(ok.pid.unwrap()).is_none() && proc_stat(bad.pid.unwrap()).is_none());
    let sum = h.sup.get_process_summary();
    assert_eq!((sum.completed, sum.failed, sum.running), (1, 1, 0));
    h.finish().await;
}

#[tokio::test]
async fn a_signal_from_outside_is_a_failure_with_the_signal() {
    let mut h = Harness::new().await;
    let resp = h.spawn("victim", &["sleep", "30"], 100).await.unwrap();
    // Our own unreaped child: its pid cannot have been reused.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(resp.pid.unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let s = h.wait_status("victim", PersistentStatus::Failed).await;
    assert_eq!(s.exit_signal, Some(9));
    assert_eq!(s.exit_code, None);
    assert!(s.end_reason.unwrap().contains("SIGKILL"));
    h.finish().await;
}

#[tokio::test]
async fn bad_ids_are_rejected_and_leave_nothing() {
    let mut h = Harness::new().await;
    for bad in ["../x", "", &"a".repeat(300), "has space", "a/b", ".hidden"] {
        let err = h.spawn(bad, &["sleep", "5"], 100).await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{bad:?}: {err}");
    }
    assert!(h.sup.monitor_all_agents().is_empty());
    assert!(!h.dir.path().join("x").exists());
    h.finish().await;
}

#[tokio::test]
async fn a_live_id_conflicts_but_a_finished_one_runs_again() {
    let mut h = Harness::new().await;
    let first = h.spawn("worker", &["sleep", "30"], 50).await.unwrap();
    let err = h.spawn("worker", &["sleep", "30"], 50).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(&first.pid.unwrap().to_string()));

    let id = AgentId::new("worker").unwrap();
    let reports = h
        .sup
        .cleanup(
            Some(&corral_core::Selector::One(id.clone())),
            CleanupOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    wait_gone(first.pid.unwrap()).await;
    assert_eq!(
        h.status("worker").persistent_status,
        PersistentStatus::Cancelled
    );

    let second = h.spawn("worker", &["sh", "-c", "exit 0"], 0).await.unwrap();
    assert_ne!(second.pid, first.pid);
    let s = h.wait_status("worker", PersistentStatus::Completed).await;
    assert_eq!(s.restarts, 1);
    let history = h.sup.runs(&AgentId::new("worker").unwrap()).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].persistent_status, PersistentStatus::Cancelled);
    assert_eq!(history[1].persistent_status, PersistentStatus::Completed);
    assert_eq!((history[0].run, history[1].run), (1, 2));
    assert_ne!(
        history[0].stdout_log, history[1].stdout_log,
        "each run has its own logs"
    );
    h.finish().await;
}

#[tokio::test]
async fn concurrent_spawns_do_not_serialise_their_windows() {
    let mut h = Harness::new().await;
    let began = Instant::now();
    let mut spawns = tokio::task::JoinSet::new();
    for i in 0..8 {
        let sup = h.sup.clone();
        spawns.spawn(async move {
            sup.spawn_agent(request(&format!("p{i}"), &["sleep", "30"], 1000))
                .await
        });
    }
    while let Some(r) = spawns.join_next().await {
        let r = r.unwrap().unwrap();
        assert_eq!(r.status, PersistentStatus::Running);
        h.pids.push(r.pid.unwrap());
    }
    let elapsed = began.elapsed();
    // Serialised windows would take 8 s; parallel ones about one.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    h.finish().await;
}

#[tokio::test]
async fn progress_is_validated_and_kept() {
    let mut h = Harness::new().await;
    h.spawn("p", &["sleep", "30"], 10).await.unwrap();
    let id = AgentId::new("p").unwrap();
    let update = |progress, message: Option<&str>| ProgressUpdate {
        progress,
        message: message.map(Into::into),
    };
    h.sup
        .set_progress(&id, update(40, Some("indexing")), None)
        .await
        .unwrap();
    assert!(
        h.sup
            .set_progress(&id, update(101, None), None)
            .await
            .is_err()
    );
    assert!(
        h.sup
            .set_progress(&id, update(-1, None), None)
            .await
            .is_err()
    );
    let s = h.status("p");
    assert_eq!(
        (s.progress, s.progress_message.as_deref()),
        (Some(40), Some("indexing"))
    );
    let events = h.sup.events_since(0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, corral_core::EventBody::Progress(p) if p.progress == 40)),
        "the report is stored as an event"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_reopened_supervisor_keeps_history_and_readopts_the_living() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("state"));
    let sup = Supervisor::open(config.clone()).await.unwrap();
    let mut req = request("done", &["sh", "-c", "exit 5"], 2000);
    req.labels = BTreeMap::from([("team".into(), "x".into())]);
    let done = sup.spawn_agent(req).await.unwrap();
    assert_eq!(done.exit_code, Some(5));
    let live = sup
        .spawn_agent(request("live", &["sleep", "30"], 10))
        .await
        .unwrap();
    sup.shutdown();
    drop(sup);

    let again = Supervisor::open(config).await.unwrap();
    let d = again
        .get_agent_status(&AgentId::new("done").unwrap())
        .unwrap();
    assert_eq!(
        (d.persistent_status, d.exit_code),
        (PersistentStatus::Failed, Some(5))
    );
    assert_eq!(d.labels["team"], "x");
    let l = again
        .get_agent_status(&AgentId::new("live").unwrap())
        .unwrap();
    assert_eq!(l.pid, live.pid);
    assert!(l.process_alive, "re-adopted: {l:?}");
    assert_eq!(l.persistent_status, PersistentStatus::Running);
    again
        .cleanup(
            None,
            CleanupOptions {
                force: true,
                stop_timeouts: None,
            },
        )
        .await
        .unwrap();
    wait_gone(live.pid.unwrap()).await;
}

#[tokio::test]
async fn orphans_left_by_an_agent_are_reaped_when_they_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    let sup = Supervisor::open(config).await.unwrap();
    // The agent leaves a child behind and exits; the child outlives it briefly.
    let resp = sup
        .spawn_agent(request("parent", &["sh", "-c", "sleep 0.4 & echo $!"], 0))
        .await
        .unwrap();
    let id = AgentId::new("parent").unwrap();
    let end = Instant::now() + DEADLINE;
    while sup.get_agent_status(&id).unwrap().persistent_status != PersistentStatus::Completed {
        assert!(Instant::now() < end, "the agent never completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let orphan: i32 = std::fs::read_to_string(&resp.stdout_log)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if let Some(stat) = proc_stat(orphan) {
        assert_eq!(
            stat[1],
            std::process::id().to_string(),
            "reparented to the subreaper"
        );
    }
    // Without the reaper it would stay a zombie under us for good.
    wait_gone(orphan).await;
    wait_gone(resp.pid.unwrap()).await;
}

/// Spawns an agent that waits for the file it returns to exist, then makes
/// 64 MiB resident and prints a line.
async fn spawn_grower(
    h: &mut Harness,
    id: &str,
) -> (std::path::PathBuf, corral_core::SpawnResponse) {
    let go = h.dir.path().join(format!("{id}.go"));
    let script = format!(
        "import os, time\nwhile not os.path.exists({:?}): time.sleep(0.01)\nb = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('grown', flush=True)\ntime.sleep(300)\n",
        go.display().to_string()
    );
    let resp = h.spawn(id, &["python3", "-c", &script], 100).await.unwrap();
    (go, resp)
}

/// A process's resident memory as `/proc/<pid>/statm` says, MiB.
fn resident_mb(pid: i32) -> f64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let resident: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * 4096.0 / (1024.0 * 1024.0)
}

/// Nobody reading: the sampler scans the process table once every ten
/// intervals instead of every interval. A reader makes it pace up at once,
/// and a read through `fresh_figures` after the quiet spell reports what
/// `/proc` holds now, not what it held at the last resting pass.
#[tokio::test]
async fn the_sampler_rests_while_nobody_reads_and_a_fresh_read_is_current() {
    let mut h = Harness::with_sampling(Duration::from_millis(100)).await;
    let (go, resp) = spawn_grower(&mut h, "quiet").await;
    let pid = resp.pid.unwrap();
    let passes = || h.sup.counters().sampler_passes;

    // The spawn is no read; wait out any active window, then count full
    // passes over two seconds with nobody reading: at rest one a second
    // (a loaded machine makes fewer, never more), at full pace twenty.
    let quiet_from = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet_from {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t0, p0) = (Instant::now(), passes());
    while t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rested = passes() - p0;
    assert!(
        rested <= 4,
        "{rested} full passes in 2 s with nobody reading"
    );

    // It grows while nobody looks; the first fresh read sees it. (After
    // three intervals without a read, the last pass is either a resting one
    // taken after the growth, or too old, and then the read waits for a new
    // one: either way what it reports is what `/proc` holds.)
    std::fs::write(&go, "").unwrap();
    common::wait_lines(&resp.stdout_log, 1).await;
    let settled = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.sup.fresh_figures().await;
    let s = h.status("quiet");
    let independent_mb = resident_mb(pid);
    assert!(independent_mb > 64.0, "{independent_mb}");
    assert!(
        (s.memory_mb - independent_mb).abs() < 2.0,
        "corral {} vs /proc {independent_mb}",
        s.memory_mb
    );

    // Readers of every agent keep it at full pace.
    let (t0, p0) = (Instant::now(), passes());
    while t0.elapsed() < Duration::from_secs(1) {
        let _ = h.sup.monitor_all_agents();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paced = passes() - p0;
    assert!(paced >= 4, "only {paced} full passes in 1 s with a reader");
    h.finish().await;
}

/// A reader of one agent in a cgroup has it sampled alone: its figures are
/// fresh (they agree with `/proc` right after it grows) while the pass over
/// every process stays at rest.
#[tokio::test]
async fn reading_one_agent_samples_it_alone_and_leaves_the_sampler_at_rest() {
    let mut h = Harness::with_sampling(Duration::from_millis(100)).await;
    let (go, resp) = spawn_grower(&mut h, "alone").await;
    let pid = resp.pid.unwrap();
    let id = corral_core::AgentId::new("alone").unwrap();
    let s = h.status("alone");
    if s.containment != "cgroup" {
        panic!(
            "this test needs cgroup containment (a writable cgroup2 hierarchy, as root); got {}",
            s.containment
        );
    }
    // Wait out the spawn's active window, then read this one agent for two
    // seconds: at rest the full pass runs about once a second.
    let quiet_from = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet_from {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&go, "").unwrap();
    common::wait_lines(&resp.stdout_log, 1).await;
    // Past two intervals: the figures it has are either from after the
    // growth or old enough to be taken again.
    let settled = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let passes = || h.sup.counters().sampler_passes;
    let (t0, p0) = (Instant::now(), passes());
    let mut fresh = None;
    while t0.elapsed() < Duration::from_secs(2) {
        let s = h.sup.agent_status(&id).await.unwrap();
        fresh.get_or_insert(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full = passes() - p0;
    assert!(
        full <= 4,
        "{full} full passes in 2 s with one agent's reader"
    );
    let s = fresh.unwrap();
    let independent_mb = resident_mb(pid);
    assert!(independent_mb > 64.0, "{independent_mb}");
    assert!(
        (s.memory_mb - independent_mb).abs() < 2.0,
        "the first read after the growth: corral {} vs /proc {independent_mb}",
        s.memory_mb
    );
    let tree = s.tree.unwrap();
    assert_eq!(tree.processes, 1, "{tree:?}");
    assert!((tree.memory_mb - s.memory_mb).abs() < 0.01, "{tree:?}");
    h.finish().await;
}
