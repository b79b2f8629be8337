//! `env -i setsid` after a double fork, through the daemon without cgroups:
//! as root the process-events connector attributes the escaped process and
//! `stop` ends it; as an ordinary user (no connector) the stop report says a
//! process may have escaped, naming it. The escaped process is found by
//! walking `/proc`, never through corral.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The escaped process's parent (a subshell) exits at once.
const DOUBLE_FORKED: &str = "(env -i setsid sleep 300 &) ; exec sleep 300";

fn start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).and_then(|s| s[19].parse().ok())
}

fn has_agent_id(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|kv| kv.starts_with(b"CORRAL_AGENT_ID="))
}

/// The orphaned `sleep 300` the agent's subshell left: a child of the
/// daemon, in a session of its own, without `CORRAL_AGENT_ID`.
fn escaped_sleep(daemon: i32, agent: i32) -> (i32, u64) {
    let end = Instant::now() + DEADLINE;
    loop {
        for pid in std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            let Some(s) = proc_stat(pid) else { continue };
            if s[0] != "Z"
                && s[1] == daemon.to_string()
                && s[3] == pid.to_string()
                && pid != agent
                && cmdline(pid).trim_end() == "sleep 300"
                && !has_agent_id(pid)
                && let Some(start) = start_ticks(pid)
            {
                return (pid, start);
            }
        }
        assert!(
            Instant::now() < end,
            "no escaped sleep under daemon {daemon}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(p: (i32, u64)) -> bool {
    start_ticks(p.0) != Some(p.1)
}

/// Kills an escaped process through a pidfd (identity checked) and waits
/// until its daemon's orphan sweep has reaped it.
fn kill_escaped(p: (i32, u64)) {
    // SAFETY: plain syscalls on an integer pid; the pidfd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, p.0, 0) as i32;
        if fd >= 0 {
            if start_ticks(p.0) == Some(p.1) {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<u8>(),
                    0,
                );
            }
            libc::close(fd);
        }
    }
    let end = Instant::now() + DEADLINE;
    while !gone(p) {
        assert!(Instant::now() < end, "escaped {} never went", p.0);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn as_root_a_double_forked_escape_is_stopped_with_its_agent() {
    require_root("the process-events connector needs CAP_NET_ADMIN");
    let env = Env::without_cgroups();
    let out = env.run(&["spawn", "esc", "--", "sh", "-c", DOUBLE_FORKED]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = env.json(&["status", "esc"]);
    assert_eq!(s["containment"], "process-group");
    let agent = s["pid"].as_i64().unwrap() as i32;
    let escaped = escaped_sleep(env.daemon_pid(), agent);
    let reports = env.json(&["stop", "esc", "--stop-timeouts", "2,2,2"]);
    assert_eq!(reports[0]["stage"], "term", "{reports}");
    assert!(
        gone(escaped),
        "escaped pid {} survived the stop: {reports}",
        escaped.0
    );
    assert!(proc_stat(agent).is_none());
    assert_eq!(reports[0]["complete"], true, "{reports}");
    assert_eq!(reports[0]["incomplete_reason"], Value::Null, "{reports}");
    assert!(
        std::fs::read_to_string(env.state.join("daemon.log"))
            .unwrap()
            .contains("process-events connector"),
        "the daemon's log says how trees are followed"
    );
    env.finish();
}

#[test]
fn as_an_ordinary_user_a_stop_says_an_escape_could_not_be_excluded() {
    require_root("it switches to uid 65534 with setpriv");
    let env = Env::without_cgroups();
    let top = env.dir.as_ref().unwrap().path();
    std::os::unix::fs::chown(top, Some(65534), Some(65534)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_corral"))
            .arg("--state-dir")
            .arg(&env.state)
            .args(args)
            .env("HOME", top)
            .env("CORRAL_NO_CGROUPS", "1")
            .env_remove("CORRAL_AGENT_ID")
            .env_remove("CORRAL_SOCKET")
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = as_nobody(&all);
        assert!(out.status.success(), "corral {args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let out = as_nobody(&[
        "spawn",
        "esc",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        DOUBLE_FORKED,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = json(&["status", "esc"]);
    assert_eq!(s["containment"], "process-group");
    let agent = s["pid"].as_i64().unwrap() as i32;
    let daemon = env.daemon_pid();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{daemon}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .nth(1),
        Some("65534"),
        "the daemon runs as nobody"
    );
    let escaped = escaped_sleep(daemon, agent);
    let reports = json(&["stop", "esc", "--stop-timeouts", "2,2,2"]);
    assert!(proc_stat(agent).is_none());
    assert_eq!(reports[0]["complete"], false, "{reports}");
    let why = reports[0]["incomplete_reason"].as_str().unwrap();
    assert!(
        why.contains("without the process-events connector cannot see descendants that left the session and cleared their environment"),
        "{why}"
    );
    assert!(
        why.contains(&escaped.0.to_string()),
        "names the orphan: {why}"
    );
    // The report's warning is real: the escaped process still runs.
    assert!(!gone(escaped), "{reports}");
    kill_escaped(escaped);
    // The human-readable stop says it too, on stderr.
    let out = as_nobody(&[
        "spawn",
        "again",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        DOUBLE_FORKED,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent = json(&["status", "again"])["pid"].as_i64().unwrap() as i32;
    let escaped = escaped_sleep(daemon, agent);
    let out = as_nobody(&["stop", "again", "--stop-timeouts", "2,2,2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("again: the tree may not be whole"),
        "{}",
        stderr(&out)
    );
    kill_escaped(escaped);
    let stop = as_nobody(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    env.finish();
}
