//! Descendants that leave their agent's session and clear their environment
//! (`env -i setsid`), with and without a double fork: a stop reaches them, or
//! — where the kernel does not let corral see them — its report says so. Each
//! escaped process is found before the stop by walking `/proc` (never through
//! corral) and checked by its identity (pid and start time) afterwards.
//!
//! These tests judge the test process's own children and orphans, so each
//! needs a process of its own: run them with `cargo nextest` (as the README
//! and CI do), not several at once under plain `cargo test`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::{Cleanup, DEADLINE, proc_stat, request, wait_gone};
use corral_core::{AgentId, CleanupOptions, Config, Selector, StopStage, Supervisor};

/// The escaped child's parent is the agent itself, which execs `sleep`.
const SETSID_CHILD: &str = "env -i setsid sh -c 'sleep 300' & exec sleep 300";
/// The escaped process's parent (a subshell) exits at once: it is an orphan
/// before the stop begins.
const DOUBLE_FORKED: &str = "(env -i setsid sleep 300 &) ; exec sleep 300";

fn require_root(what: &str) {
    // SAFETY: a plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root: {what}");
}

/// A subreaping supervisor in a temp dir; `cgroups: false` forces
/// process-group containment, `proc_events: false` keeps the process-events
/// connector off.
async fn setup(cgroups: bool, proc_events: bool) -> (Cleanup, tempfile::TempDir, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.cgroups = cgroups;
    config.proc_events = proc_events;
    config.sample_interval = Duration::from_millis(200);
    let sup = Supervisor::open(config).await.unwrap();
    let cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    (cleanup, dir, sup)
}

fn start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).and_then(|s| s[19].parse().ok())
}

/// Whether the process was started with `CORRAL_AGENT_ID` in its environment.
fn has_agent_id(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|kv| kv.starts_with(b"CORRAL_AGENT_ID="))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Whether `pid` descends from `ancestor` or is a child of this test process
/// (the subreaper its orphans are reparented to), other than `agent`.
fn from_agent(pid: i32, agent: i32) -> bool {
    let me = std::process::id() as i32;
    let mut at = pid;
    for _ in 0..64 {
        let Some(ppid) = proc_stat(at).and_then(|s| s[1].parse::<i32>().ok()) else {
            return false;
        };
        if ppid == agent || (ppid == me && at != agent) {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        at = ppid;
    }
    false
}

/// The escaped `sleep 300`: in another session than the agent's, without
/// `CORRAL_AGENT_ID`, a descendant of the agent or our orphan. Waited for with
/// a deadline; returned with its start time.
async fn escaped_sleep(agent: i32) -> (i32, u64) {
    let end = Instant::now() + DEADLINE;
    loop {
        for pid in all_pids() {
            let Some(stat) = proc_stat(pid) else { continue };
            if pid != agent
                && stat[0] != "Z"
                && stat[3] != agent.to_string()
                && cmdline(pid).trim_end() == "sleep 300"
                && !has_agent_id(pid)
                && from_agent(pid, agent)
                && let Some(start) = start_ticks(pid)
            {
                return (pid, start);
            }
        }
        assert!(Instant::now() < end, "no escaped sleep of agent {agent}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process (pid, start time) is not in /proc any more, zombie or not.
fn gone(p: (i32, u64)) -> bool {
    start_ticks(p.0) != Some(p.1)
}

fn one(id: &str) -> Selector {
    Selector::One(AgentId::new(id).unwrap())
}

fn staged() -> CleanupOptions {
    CleanupOptions {
        force: false,
        stop_timeouts: Some(vec![2.0, 2.0, 2.0]),
    }
}

/// Kills an escaped process by pid (through a pidfd, identity checked) and
/// waits until it is gone: it is this test's child by then, reaped by the
/// supervisor's orphan sweep or by the cleanup guard.
async fn kill_escaped(p: (i32, u64)) {
    let pid = rustix::process::Pid::from_raw(p.0).unwrap();
    if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        && start_ticks(p.0) == Some(p.1)
    {
        let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
    }
    let end = Instant::now() + DEADLINE;
    while !gone(p) {
        if proc_stat(p.0).is_some_and(|s| s[0] == "Z") {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        }
        assert!(Instant::now() < end, "escaped {} never went", p.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes a line to the FIFO once its reader has opened it (a non-blocking
/// open fails with `ENXIO` until then), with a deadline.
async fn open_gate(fifo: &std::path::Path) {
    let end = Instant::now() + DEADLINE;
    loop {
        match rustix::fs::open(
            fifo,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => {
                rustix::io::write(&fd, b"go\n").unwrap();
                return;
            }
            Err(rustix::io::Errno::NXIO) => {}
            Err(e) => panic!("open {}: {e}", fifo.display()),
        }
        assert!(Instant::now() < end, "nothing reads {}", fifo.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts `script` as agent `id`; returns its pid and its escaped sleep.
async fn start(sup: &Supervisor, id: &str, script: &str) -> (i32, (i32, u64)) {
    let r = sup
        .spawn_agent(request(id, &["sh", "-c", script], 50))
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let escaped = escaped_sleep(pid).await;
    (pid, escaped)
}

async fn connector_stops(script: &str) {
    require_root("the process-events connector needs CAP_NET_ADMIN");
    let (_cleanup, _dir, sup) = setup(false, true).await;
    let (pid, escaped) = start(&sup, "esc", script).await;
    let s = sup.get_agent_status(&AgentId::new("esc").unwrap()).unwrap();
    assert_eq!(s.containment, "process-group");
    let rep = sup
        .cleanup(Some(&one("esc")), staged())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rep.stage, StopStage::Term, "{rep:?}");
    assert!(
        gone(escaped),
        "escaped pid {} ({}) survived the stop of its agent: {rep:?}",
        escaped.0,
        cmdline(escaped.0)
    );
    wait_gone(pid).await;
    assert_eq!(rep.complete, Some(true), "{rep:?}");
    assert!(rep.incomplete_reason.is_none(), "{rep:?}");
}

#[tokio::test]
async fn a_setsid_child_with_a_cleared_environment_is_stopped_with_its_agent() {
    connector_stops(SETSID_CHILD).await;
}

#[tokio::test]
async fn a_double_forked_setsid_orphan_with_a_cleared_environment_is_stopped_with_its_agent() {
    connector_stops(DOUBLE_FORKED).await;
}

/// With the connector off, a double-forked escapee cannot be attributed: the
/// stop says so (naming it) instead of claiming the tree is gone.
#[tokio::test]
async fn without_the_connector_a_stop_says_an_orphan_may_have_escaped() {
    let (_cleanup, _dir, sup) = setup(false, false).await;
    let (pid, escaped) = start(&sup, "esc", DOUBLE_FORKED).await;
    let rep = sup
        .cleanup(Some(&one("esc")), staged())
        .await
        .unwrap()
        .remove(0);
    wait_gone(pid).await;
    assert_eq!(rep.complete, Some(false), "{rep:?}");
    let why = rep.incomplete_reason.clone().unwrap();
    assert!(
        why.contains("without the process-events connector cannot see descendants that left the session and cleared their environment"),
        "{why}"
    );
    assert!(
        why.contains(&escaped.0.to_string()),
        "names the orphan: {why}"
    );
    // What the report warns of is real: it still runs.
    assert!(!gone(escaped), "{rep:?}");
    kill_escaped(escaped).await;
}

/// With the connector off, an escapee whose parent is alive is still found
/// (the first look walks the tree before any signal), and with no orphan
/// unaccounted for the subreaping daemon can vouch for the whole tree.
#[tokio::test]
async fn without_the_connector_a_setsid_child_of_a_live_parent_is_still_stopped() {
    let (_cleanup, _dir, sup) = setup(false, false).await;
    let (pid, escaped) = start(&sup, "esc", SETSID_CHILD).await;
    let rep = sup
        .cleanup(Some(&one("esc")), staged())
        .await
        .unwrap()
        .remove(0);
    assert!(gone(escaped), "{rep:?}");
    wait_gone(pid).await;
    assert_eq!(rep.complete, Some(true), "{rep:?}");
}

/// A main process that exits leaves an escapee in another session without
/// an agent id: the run ends only once it is stopped too.
#[tokio::test]
async fn what_an_exiting_main_leaves_in_another_session_is_stopped_before_the_run_ends() {
    require_root("the process-events connector needs CAP_NET_ADMIN");
    let (_cleanup, dir, sup) = setup(false, true).await;
    // The main process exits once the test has found the escapee (a line
    // through a FIFO), so the escapee is seen before the run ends.
    let gate = dir.path().join("gate");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &gate,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let script = format!(
        "env -i setsid sh -c 'sleep 300' & read x < '{}'",
        gate.display()
    );
    let r = sup
        .spawn_agent(request("left", &["sh", "-c", &script], 0))
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let escaped = escaped_sleep(pid).await;
    open_gate(&gate).await;
    let id = AgentId::new("left").unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        let s = sup.get_agent_status(&id).unwrap();
        if s.state == corral_core::AgentState::Ended {
            let reason = s.end_reason.unwrap_or_default();
            assert!(reason.contains("leftover processes stopped"), "{reason}");
            break;
        }
        assert!(Instant::now() < end, "never ended: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone(escaped), "escaped pid {} outlived its run", escaped.0);
    wait_gone(pid).await;
}

/// A run adopted from an earlier daemon was not followed from its start:
/// whatever it left before then cannot be vouched for.
#[tokio::test]
async fn a_run_adopted_from_an_earlier_daemon_is_not_claimed_whole() {
    require_root("the process-events connector needs CAP_NET_ADMIN");
    let (_cleanup, dir, sup) = setup(false, true).await;
    let (pid, escaped) = start(&sup, "esc", DOUBLE_FORKED).await;
    sup.shutdown();
    drop(sup);
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.cgroups = false;
    let again = Supervisor::open(config).await.unwrap();
    let rep = again
        .cleanup(Some(&one("esc")), staged())
        .await
        .unwrap()
        .remove(0);
    wait_gone(pid).await;
    assert_eq!(rep.complete, Some(false), "{rep:?}");
    let why = rep.incomplete_reason.clone().unwrap();
    assert!(
        why.contains("did not follow this tree from its start"),
        "{why}"
    );
    // Still this process's child (the same process opened both), so its
    // orphans are ours: the one that escaped is named.
    assert!(why.contains(&escaped.0.to_string()), "{why}");
    kill_escaped(escaped).await;
}

/// Cgroup containment is unchanged: both escapes are in the agent's leaf,
/// are stopped with it, and the report says the tree was seen whole.
#[tokio::test]
async fn with_a_cgroup_both_escapes_are_stopped_and_the_tree_is_whole() {
    require_root("cgroup containment needs a writable cgroup2 hierarchy");
    let (_cleanup, _dir, sup) = setup(true, true).await;
    for (id, script) in [("a", SETSID_CHILD), ("b", DOUBLE_FORKED)] {
        let (pid, escaped) = start(&sup, id, script).await;
        let s = sup.get_agent_status(&AgentId::new(id).unwrap()).unwrap();
        assert_eq!(
            s.containment, "cgroup",
            "this machine offers no writable cgroup2 hierarchy"
        );
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", escaped.0)).unwrap();
        assert!(cg.contains(&format!("/{id}.")), "{cg}");
        let rep = sup
            .cleanup(Some(&one(id)), staged())
            .await
            .unwrap()
            .remove(0);
        assert!(gone(escaped), "{rep:?}");
        wait_gone(pid).await;
        assert_eq!(rep.complete, Some(true), "{rep:?}");
        assert!(rep.incomplete_reason.is_none(), "{rep:?}");
    }
}
