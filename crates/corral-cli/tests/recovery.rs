//! Durable state and crash recovery, end to end: the daemon is killed with
//! SIGKILL and restarted (through the CLI's autostart), and what it then
//! reports is checked against `/proc`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::*;

fn spawn_ok(env: &Env, args: &[&str]) {
    let mut all = vec!["spawn"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert!(out.status.success(), "corral {all:?}: {}", stderr(&out));
}

#[test]
fn agents_outlive_a_killed_daemon_and_are_readopted() {
    let env = Env::new();
    for i in 0..5 {
        spawn_ok(&env, &[&format!("w{i}"), "--", "sleep", "300"]);
    }
    let before = agent_pids(&env.json(&["ps"]));
    let old = env.crash_daemon();
    for (id, pid) in &before {
        assert!(
            proc_stat(*pid).is_some_and(|s| s[0] != "Z"),
            "{id} ({pid}) died with the daemon"
        );
    }
    assert!(
        env.state.join("corral.sock").exists(),
        "a killed daemon leaves its socket"
    );
    let reaper = InitReaper::new(before.values().copied().collect());

    // The next command starts a new daemon, which re-adopts every agent.
    let after = env.json(&["ps"]);
    assert_ne!(env.daemon_pid(), old);
    assert_eq!(agent_pids(&after), before, "same agents, same pids");
    for s in after.as_object().unwrap().values() {
        assert_eq!(s["persistent_status"], "running");
        assert_eq!(s["process_alive"], true);
        assert_eq!(s["health"], "healthy");
    }
    let reports = env.json(&["stop", "--all"]);
    assert_eq!(reports.as_array().unwrap().len(), 5);
    for r in reports.as_array().unwrap() {
        assert_eq!(r["stage"], "term", "{r}");
    }
    for pid in before.values() {
        wait_gone(*pid);
    }
    for id in before.keys() {
        let s = env.json(&["status", id]);
        assert_eq!(s["persistent_status"], "cancelled", "{s}");
    }
    drop(reaper);
    env.finish();
}

#[test]
fn an_agent_that_ends_while_no_daemon_runs_is_failed_with_the_reason() {
    let env = Env::new();
    spawn_ok(&env, &["gone", "--", "sleep", "300"]);
    let done = env.run(&["spawn", "done", "--", "sh", "-c", "exit 3"]);
    assert!(!done.status.success(), "it failed inside its window");
    let pid = env.json(&["status", "gone"])["pid"].as_i64().unwrap() as i32;
    env.crash_daemon();
    kill_and_reap(pid, libc::SIGKILL); // ends, and is reaped, with no daemon to see it
    let s = env.json(&["status", "gone"]);
    assert_eq!(s["persistent_status"], "failed");
    assert_eq!(s["health"], "unknown");
    assert_eq!(s["exit_code"], serde_json::Value::Null);
    assert!(
        s["end_reason"]
            .as_str()
            .unwrap()
            .contains("while no corral daemon was running"),
        "{s}"
    );
    // History and exit codes of finished agents survive the crash.
    let d = env.json(&["status", "done"]);
    assert_eq!(
        (d["persistent_status"].as_str(), d["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    env.finish();
}

#[test]
fn a_reused_pid_is_never_taken_for_the_agent_nor_signalled() {
    let env = Env::new();
    spawn_ok(&env, &["victim", "--", "sleep", "300"]);
    let pid = env.json(&["status", "victim"])["pid"].as_i64().unwrap() as i32;
    env.crash_daemon();
    kill_and_reap(pid, libc::SIGKILL);
    // Start a stranger on the same pid: the kernel hands out ns_last_pid + 1 next.
    let mut stranger = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        if child.id() as i32 == pid {
            stranger = Some(child);
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let Some(mut stranger) = stranger else {
        eprintln!("could not steer the next pid to {pid} (busy machine); nothing to check");
        env.finish();
        return;
    };
    let s = env.json(&["status", "victim"]);
    assert_eq!(s["persistent_status"], "failed", "{s}");
    assert_eq!(s["process_alive"], false);
    assert_eq!(s["health"], "unknown");
    let stop = env.json(&["stop", "victim"]);
    assert_eq!(stop[0]["stage"], "already_ended");
    let kill = env.run(&["kill", "victim", "--force"]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger on pid {pid} must be untouched"
    );
    assert_eq!(proc_stat(pid).unwrap()[0], "S");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    env.finish();
}

#[test]
fn a_readopted_agent_reports_its_real_exit_code() {
    let env = Env::new();
    let go = env.dir.as_ref().unwrap().path().join("go");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.02; done; exit 42",
        go.display()
    );
    spawn_ok(&env, &["answer", "--", "sh", "-c", &script]);
    let pid = env.json(&["status", "answer"])["pid"].as_i64().unwrap() as i32;
    env.crash_daemon();
    let reaper = InitReaper::new(vec![pid]);
    assert_eq!(
        env.json(&["status", "answer"])["process_alive"],
        true,
        "re-adopted"
    );
    std::fs::write(&go, "").unwrap();
    // Its end, and — once its parent (our reaper, standing in for init) has
    // reaped it — no longer a zombie.
    let s = env.wait_for("answer", "its end", |s| {
        s["persistent_status"] != "running" && s["is_zombie"] == false
    });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let (major, minor) = {
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    if (major, minor) < (6, 15) {
        eprintln!("kernel {release} has no PIDFD_INFO_EXIT; the exit code is rightly unknown");
        assert_eq!(s["exit_code"], serde_json::Value::Null);
    } else {
        assert_eq!(s["exit_code"], 42, "{s}");
        assert_eq!(s["persistent_status"], "failed");
        assert_eq!(s["health"], "failed");
    }
    drop(reaper);
    env.finish();
}

#[test]
fn rm_and_prune_forget_ended_agents_only() {
    let env = Env::new();
    spawn_ok(&env, &["keep", "--", "sleep", "300"]);
    spawn_ok(&env, &["old", "--", "true"]);
    spawn_ok(&env, &["older", "--", "true"]);
    let busy = env.run(&["rm", "keep"]);
    assert!(!busy.status.success());
    assert!(
        stderr(&busy).contains("is still running"),
        "{}",
        stderr(&busy)
    );
    let rm = env.json(&["rm", "old"]);
    assert_eq!(rm["removed"], serde_json::json!(["old"]));
    assert!(
        !env.state.join("agents/old").exists(),
        "its logs went with it"
    );
    assert!(!env.run(&["status", "old"]).status.success());
    let pruned = env.json(&["prune"]);
    assert_eq!(pruned["removed"], serde_json::json!(["older"]));
    let left = env.json(&["ps"]);
    assert_eq!(
        left.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["keep"]
    );
    env.finish();
}

#[test]
fn a_crash_in_the_middle_of_spawning_loses_and_leaks_nothing() {
    let env = Env::new();
    assert!(env.run(&["ps"]).status.success(), "start the daemon");
    // Eight spawners at once, 25 agents each, so that spawns are in flight when the daemon dies.
    let spawners: Vec<_> = (0..8)
        .map(|t| {
            let state = env.state.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for i in 0..25 {
                    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
                        .arg("--state-dir")
                        .arg(&state)
                        .args([
                            "--no-autostart",
                            "spawn",
                            &format!("s{t}.{i}"),
                            "--verify-ms",
                            "0",
                            "--",
                            "sleep",
                            "300",
                        ])
                        .output()
                        .unwrap();
                    if !out.status.success() {
                        break; // the daemon is gone
                    }
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    // Kill the daemon while spawns are in flight.
    let end = Instant::now() + DEADLINE;
    while env.state.join("agents").read_dir().map_or(0, |d| d.count()) < 30 {
        assert!(Instant::now() < end, "spawns did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    env.crash_daemon();
    let acknowledged: usize = spawners.into_iter().map(|s| s.join().unwrap()).sum();
    eprintln!("{acknowledged} spawns acknowledged before the crash");

    // Every process started under this state dir, found by its environment.
    let ours = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| {
            e.split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"CORRAL_AGENT_ID=s"))
        }) && proc_stat(pid).is_some_and(|s| s[0] != "Z")
    };
    let running: Vec<i32> = children().into_iter().filter(|p| ours(*p)).collect();
    let reaper = InitReaper::new(running.clone());
    let ps = env.json(&["ps"]);
    let all = ps.as_object().unwrap();
    assert!(
        all.len() >= acknowledged,
        "every acknowledged spawn is on record"
    );
    for (id, s) in all {
        let status = s["persistent_status"].as_str().unwrap();
        assert_ne!(status, "spawning", "{id} left half-spawned: {s}");
        if status == "running" {
            assert_eq!(s["process_alive"], true, "{id}: {s}");
        }
    }
    let known: std::collections::BTreeSet<i32> = all
        .values()
        .filter(|s| s["persistent_status"] == "running")
        .map(|s| s["pid"].as_i64().unwrap() as i32)
        .collect();
    for pid in &running {
        assert!(
            known.contains(pid),
            "process {pid} runs but the store does not know it"
        );
    }
    assert!(env.run(&["stop", "--all", "--force"]).status.success());
    for pid in running {
        wait_gone(pid);
    }
    drop(reaper);
    env.finish();
}

#[test]
fn a_planned_restart_survives_a_daemon_crash_and_nothing_starts_twice() {
    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "flaky",
        "--restart",
        "on-failure",
        "--max-restarts",
        "1",
        "--backoff",
        "2,2",
        "--verify-ms",
        "0",
        "--",
        "sh",
        "-c",
        "exit 1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planned = env.wait_for("flaky", "a planned restart", |s| {
        !s["next_restart_at"].is_null()
    });
    let planned_at = planned["next_restart_at"].as_str().unwrap().to_owned();
    assert_eq!(planned["run"], 1);
    env.crash_daemon();
    // The restarted daemon shows the same plan...
    let again = env.json(&["status", "flaky"]);
    assert_eq!(again["next_restart_at"], planned_at.as_str(), "{again}");
    assert_eq!(again["run"], 1);
    // ...keeps it, and starts exactly one run for it.
    let done = env.wait_for("flaky", "the crash loop", |s| {
        s["run"] == 2 && s["next_restart_at"].is_null() && s["persistent_status"] == "failed"
    });
    assert!(
        done["end_reason"].as_str().unwrap().contains("crash loop"),
        "{done}"
    );
    let runs = env.json(&["runs", "flaky"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "one restart, not two: {runs:?}");
    let at = |s: &str| humantime::parse_rfc3339_weak(s).unwrap();
    let started = at(runs[1]["started_at"].as_str().unwrap());
    let planned = at(&planned_at);
    assert!(started >= planned, "started before its time");
    assert!(
        started.duration_since(planned).unwrap() < Duration::from_millis(1500),
        "started late"
    );
    env.finish();
}
