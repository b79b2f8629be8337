//! Pauses end to end: `corral pause` and `corral resume`, and a pause that
//! outlives a daemon killed with SIGKILL — checked in `/proc` (CPU time,
//! state `T`) and in the agent's cgroup (`frozen 1`).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A CPU-busy agent with a CPU-busy child.
const BUSY_PARENT: &str = "sh -c 'while :; do :; done' & while :; do :; done";

fn spawn_ok(env: &Env, args: &[&str]) {
    let mut all = vec!["spawn"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert!(out.status.success(), "corral {all:?}: {}", stderr(&out));
}

/// User CPU ticks of `pid` (field 14 of its stat).
fn utime(pid: i32) -> u64 {
    proc_stat(pid).unwrap()[11].parse().unwrap()
}

/// Asserts that `pid`'s CPU time does not move for a while.
fn cpu_stays(pid: i32, window: Duration) {
    let start = utime(pid);
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert_eq!(utime(pid), start, "pid {pid} used CPU while paused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `pid`'s CPU time moves.
fn cpu_moves(pid: i32) {
    let start = utime(pid);
    eventually(DEADLINE, &format!("pid {pid} uses CPU"), || {
        (utime(pid) > start).then_some(())
    });
}

/// The only child of `pid`, once it has one.
fn child_of(pid: i32) -> i32 {
    eventually(DEADLINE, &format!("pid {pid} has a child"), || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| proc_stat(*p).is_some_and(|s| s[1] == pid.to_string()))
    })
}

/// Waits until none of `pids` is in `/proc`, reaping those that end up as
/// our zombies (an orphan of an agent the killed daemon left to us).
fn reap_until_gone(pids: &[i32]) {
    eventually(DEADLINE, &format!("{pids:?} are gone"), || {
        for p in pids {
            if proc_stat(*p).is_some_and(|s| s[0] == "Z" && s[1] == me().to_string()) {
                // SAFETY: a plain syscall on our own zombie child.
                unsafe { libc::waitpid(*p, std::ptr::null_mut(), 0) };
            }
        }
        pids.iter().all(|p| proc_stat(*p).is_none()).then_some(())
    });
}

/// Whether the tree of `agent` (`pids`) is frozen: its cgroup leaf says
/// `frozen 1`, or — without one — every process is stopped (state `T`).
fn frozen(env: &Env, agent: &str, pids: &[i32]) -> bool {
    match env.cgroup_subtree() {
        Some(subtree) if !env.no_cgroups => {
            std::fs::read_to_string(subtree.join(format!("{agent}.1")).join("cgroup.events"))
                .unwrap()
                .contains("frozen 1")
        }
        _ => pids
            .iter()
            .all(|p| proc_stat(*p).is_some_and(|s| s[0] == "T")),
    }
}

fn a_pause_survives_a_daemon_killed_with_sigkill(env: Env) {
    spawn_ok(&env, &["busy", "--", "sh", "-c", BUSY_PARENT]);
    let pid = env.json(&["status", "busy"])["pid"].as_i64().unwrap() as i32;
    let child = child_of(pid);
    cpu_moves(child);

    let out = env.run(&["pause", "busy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let method = if env.no_cgroups { "signals" } else { "cgroup" };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("busy paused ({method}, 2 processes)\n")
    );
    eventually(DEADLINE, "the tree is frozen", || {
        frozen(&env, "busy", &[pid, child]).then_some(())
    });
    cpu_stays(pid, Duration::from_millis(300));
    cpu_stays(child, Duration::from_millis(300));
    let s = env.json(&["status", "busy"]);
    assert_eq!(
        (&s["state"], &s["health"]),
        (&"paused".into(), &"paused".into()),
        "{s}"
    );

    // The daemon dies; the agent stays frozen, and the next daemon keeps it so.
    let old = env.crash_daemon();
    // The agent is our child now (we are a subreaper), and its child once
    // the agent is gone.
    let reaper = InitReaper::new(vec![pid]);
    assert!(frozen(&env, "busy", &[pid, child]));
    cpu_stays(child, Duration::from_millis(300));
    let s = env.json(&["status", "busy"]);
    assert_ne!(env.daemon_pid(), old, "a new daemon");
    assert_eq!(s["pid"], pid);
    assert_eq!(
        (&s["state"], &s["health"]),
        (&"paused".into(), &"paused".into()),
        "{s}"
    );
    assert!(frozen(&env, "busy", &[pid, child]));
    cpu_stays(pid, Duration::from_millis(300));
    cpu_stays(child, Duration::from_millis(300));

    let resumed = env.json(&["resume", "busy"]);
    assert_eq!(resumed[0]["outcome"], "resumed", "{resumed}");
    assert_eq!(resumed[0]["state"], "running", "{resumed}");
    cpu_moves(pid);
    cpu_moves(child);
    let s = env.json(&["status", "busy"]);
    assert_eq!(
        (&s["state"], &s["health"]),
        (&"running".into(), &"healthy".into()),
        "{s}"
    );

    let stopped = env.json(&["stop", "busy"]);
    assert_eq!(stopped[0]["stage"], "term", "{stopped}");
    drop(reaper);
    reap_until_gone(&[pid, child]);
    env.finish();
}

#[test]
fn a_pause_survives_a_daemon_killed_with_sigkill_cgroup() {
    let env = Env::new();
    require_root("cgroup containment needs a writable cgroup2 hierarchy");
    a_pause_survives_a_daemon_killed_with_sigkill(env);
}

#[test]
fn a_pause_survives_a_daemon_killed_with_sigkill_process_group() {
    a_pause_survives_a_daemon_killed_with_sigkill(Env::without_cgroups());
}

#[test]
fn pause_and_resume_by_id_subtree_and_all() {
    let env = Env::new();
    for id in ["t.a", "t.b"] {
        spawn_ok(&env, &[id, "--", "sh", "-c", "while :; do :; done"]);
    }
    spawn_ok(&env, &["t.done", "--", "true"]);
    env.json(&["wait", "t.done"]);

    // A subtree: what runs is paused, what has ended is left out.
    let out = env.run(&["pause", "t.*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("t.a paused ("), "{text}");
    assert!(lines[1].starts_with("t.b paused ("), "{text}");
    let again = env.run(&["pause", "t.a"]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "t.a already paused\n"
    );

    // One id that cannot be paused: one error line naming its state, exit 1.
    let out = env.run(&["pause", "t.done"]);
    assert_one_error_line(
        &out,
        "agent t.done is ended: only a running agent can be paused",
    );
    assert_eq!(out.status.code(), Some(1));
    let out = env.run(&["resume", "nosuch"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = env.run(&["pause"]);
    assert_eq!(out.status.code(), Some(2), "a target or --all");

    let all = env.json(&["resume", "--all"]);
    let outcomes: Vec<(&str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["agent_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("t.a", "resumed"), ("t.b", "resumed")], "{all}");
    let out = env.run(&["resume", "t.a"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "t.a not paused (running)\n"
    );
    let events = env.run(&["events", "t.a"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(text.contains("paused"), "{text}");
    env.finish();
}
