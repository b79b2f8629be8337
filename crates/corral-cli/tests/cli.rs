//! The `corral` binary end to end: CLI → autostarted daemon → real agents,
//! with every claim checked against `/proc`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[test]
fn spawn_then_status_reports_the_seed_fields_with_their_types() {
    let env = Env::new();
    let out = env.run(&["spawn", "L2.1.1", "--label", "team=a", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = env.json(&["status", "L2.1.1"]);
    let pid = s["pid"].as_i64().unwrap() as i32;
    let stat = proc_stat(pid).expect("the agent runs");
    assert_eq!(stat[2], pid.to_string(), "own process group");
    assert_eq!(stat[3], pid.to_string(), "own session");
    for (field, kind) in [
        ("agent_id", "string"),
        ("pid", "number"),
        ("process_alive", "bool"),
        ("process_status", "string"),
        ("exit_code", "null"),
        ("is_zombie", "bool"),
        ("cpu_percent", "number"),
        ("memory_mb", "number"),
        ("runtime_seconds", "number"),
        ("num_threads", "number"),
        ("cmdline", "string"),
        ("health", "string"),
        ("persistent_status", "string"),
        ("started_at", "string"),
        ("progress", "null"),
    ] {
        let v = &s[field];
        let ok = match kind {
            "string" => v.is_string(),
            "number" => v.is_number(),
            "bool" => v.is_boolean(),
            _ => v.is_null(),
        };
        assert!(ok, "{field} should be {kind}: {v}");
    }
    assert_eq!(s["process_alive"], true);
    assert_eq!(s["health"], "healthy");
    assert_eq!(s["persistent_status"], "running");
    assert_eq!(s["process_status"], "sleeping");
    assert_eq!(s["cmdline"], "sleep 30");
    assert_eq!(s["labels"]["team"], "a");
    // cgroup where the machine offers a writable cgroup2 hierarchy, else process-group.
    let in_leaf = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .any(|l| l.starts_with("0::") && l.ends_with("/L2.1.1.1"));
    let expected = if in_leaf { "cgroup" } else { "process-group" };
    assert_eq!(s["containment"], expected);

    let all = env.json(&["ps"]);
    assert_eq!(all["L2.1.1"]["pid"], s["pid"]);
    let sum = env.json(&["summary"]);
    assert_eq!(
        (sum["total"].as_u64(), sum["running"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(env.run(&["health", "L2.1.1"]).status.success());

    let table = env.run(&["ps"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        text.contains("L2.1.1") && text.contains("healthy"),
        "{text}"
    );
    env.finish();
}

#[test]
fn exec_failures_and_early_deaths_exit_non_zero_with_the_reason() {
    let env = Env::new();
    assert_one_error_line(
        &env.run(&["spawn", "a", "--", "/nonexistent/agent"]),
        "No such file or directory",
    );
    let cwd_fail = env.run(&[
        "spawn",
        "b",
        "--cwd",
        "/nonexistent/dir",
        "--",
        "sleep",
        "1",
    ]);
    assert_one_error_line(&cwd_fail, "working directory /nonexistent/dir");
    let noexec = env.dir.as_ref().unwrap().path().join("script.sh");
    std::fs::write(&noexec, "#!/bin/sh\n").unwrap();
    assert_one_error_line(
        &env.run(&["spawn", "c", "--", noexec.to_str().unwrap()]),
        "Permission denied",
    );

    let dies = env.run(&[
        "spawn",
        "d",
        "--verify-ms",
        "3000",
        "--",
        "sh",
        "-c",
        "echo 'fatal: no token' >&2; exit 4",
    ]);
    assert!(!dies.status.success());
    assert!(
        stderr(&dies).contains("fatal: no token"),
        "{}",
        stderr(&dies)
    );
    assert!(
        stderr(&dies).contains("exited with code 4"),
        "{}",
        stderr(&dies)
    );
    let quick_ok = env.run(&["spawn", "e", "--verify-ms", "3000", "--", "true"]);
    assert!(
        quick_ok.status.success(),
        "completed with 0 inside the window is success"
    );

    for id in ["a", "b", "c"] {
        let s = env.json(&["status", id]);
        assert_eq!(s["persistent_status"], "failed", "{id}");
        assert_eq!(s["process_alive"], false);
    }
    assert_eq!(env.json(&["status", "d"])["exit_code"], 4);
    assert_eq!(env.json(&["status", "e"])["persistent_status"], "completed");
    assert!(
        !env.run(&["health", "d"]).status.success(),
        "health exits 1 when not healthy"
    );
    env.finish();
}

#[test]
fn exit_codes_become_completed_and_failed() {
    let env = Env::new();
    assert!(
        env.run(&[
            "spawn",
            "zero",
            "--verify-ms",
            "0",
            "--",
            "sh",
            "-c",
            "sleep 0.2; exit 0"
        ])
        .status
        .success()
    );
    assert!(
        env.run(&[
            "spawn",
            "three",
            "--verify-ms",
            "0",
            "--",
            "sh",
            "-c",
            "sleep 0.2; exit 3"
        ])
        .status
        .success()
    );
    let zero = env.wait_for("zero", "completed", |s| {
        s["persistent_status"] == "completed"
    });
    assert_eq!(
        (zero["exit_code"].as_i64(), zero["health"].as_str()),
        (Some(0), Some("completed"))
    );
    let three = env.wait_for("three", "failed", |s| s["persistent_status"] == "failed");
    assert_eq!(
        (three["exit_code"].as_i64(), three["health"].as_str()),
        (Some(3), Some("failed"))
    );
    let pid = three["pid"].as_i64().unwrap() as i32;
    assert!(proc_stat(pid).is_none(), "reaped, not a zombie");
    env.finish();
}

#[test]
fn bad_ids_are_rejected_and_the_daemon_keeps_serving() {
    let env = Env::new();
    let long = "x".repeat(300);
    for bad in ["../x", "", long.as_str(), "has space"] {
        let out = env.run(&["spawn", bad, "--", "sleep", "1"]);
        assert_one_error_line(&out, "invalid agent id");
    }
    assert_eq!(env.json(&["ps"]), serde_json::json!({}));
    assert!(!env.state.join("x").exists() && !env.state.join("agents/../x").exists());
    env.finish();
}

#[test]
fn a_running_id_cannot_be_spawned_twice_but_a_finished_one_can() {
    let env = Env::new();
    assert!(
        env.run(&["spawn", "w", "--", "sleep", "30"])
            .status
            .success()
    );
    assert_one_error_line(
        &env.run(&["spawn", "w", "--", "sleep", "30"]),
        "is still running",
    );
    let out = env.run(&["stop", "w", "--stop-timeouts", "1,1,1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_for("w", "cancelled", |s| s["persistent_status"] == "cancelled");
    assert!(
        env.run(&["spawn", "w", "--", "sleep", "30"])
            .status
            .success()
    );
    let s = env.json(&["status", "w"]);
    assert_eq!(
        (s["persistent_status"].as_str(), s["restarts"].as_u64()),
        (Some("running"), Some(1))
    );
    assert_one_error_line(&env.run(&["status", "nobody"]), "agent nobody not found");
    env.finish();
}

#[test]
fn logs_show_the_agents_output() {
    let env = Env::new();
    let script = "for i in 1 2 3 4 5; do echo out $i; done; echo problem >&2";
    assert!(
        env.run(&["spawn", "talker", "--", "sh", "-c", script])
            .status
            .success()
    );
    env.wait_for("talker", "completed", |s| {
        s["persistent_status"] == "completed"
    });
    let out = env.run(&["logs", "talker", "-n", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out 4\nout 5\n");
    let err = env.run(&["logs", "talker", "--stderr"]);
    assert_eq!(String::from_utf8_lossy(&err.stdout), "problem\n");
    let follow = env.run(&["logs", "talker", "-f"]);
    assert!(
        follow.status.success(),
        "follow ends once the agent has ended"
    );
    env.finish();
}

#[test]
fn progress_reported_from_inside_an_agent_shows_in_status() {
    let env = Env::new();
    let corral = env!("CARGO_BIN_EXE_corral");
    let script = format!("'{corral}' progress 42 --message indexing && sleep 30");
    assert!(
        env.run(&["spawn", "reporter", "--", "sh", "-c", &script])
            .status
            .success()
    );
    let s = env.wait_for("reporter", "progress", |s| s["progress"] == 42);
    assert_eq!(s["progress_message"], "indexing");
    let events = env.run(&["events", "--json"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|e| e["kind"] == "progress"
            && e["agent_id"] == "reporter"
            && e["progress"] == 42
            && e["message"] == "indexing"),
        "{lines:?}"
    );
    let bad = env.run(&["progress", "150", "--agent", "reporter"]);
    assert_one_error_line(&bad, "progress must be 0–100");
    env.finish();
}

#[test]
fn several_clis_at_once_start_exactly_one_daemon() {
    let env = Env::new();
    let clis: Vec<_> = (0..8)
        .map(|_| {
            env.cmd(&["--json", "ps"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for cli in clis {
        let out = cli.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
            serde_json::json!({})
        );
    }
    // Every daemon but the lock holder exits by itself (some may still be starting).
    let end = Instant::now() + DEADLINE;
    let daemons = loop {
        let daemons = env.daemons();
        if daemons.len() == 1 || Instant::now() > end {
            break daemons;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(daemons.len(), 1, "daemons: {daemons:?}");
    let lock = std::fs::read_to_string(env.state.join("corral.lock")).unwrap();
    assert_eq!(lock.trim(), daemons[0].to_string());
    let dir_mode = std::fs::metadata(&env.state).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&dir_mode.permissions()) & 0o777,
        0o700,
        "the state dir is private"
    );
    let mode = std::fs::metadata(env.state.join("corral.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // A second daemon on the same state dir refuses to start.
    let second = env.run(&["daemon"]);
    assert_eq!(second.status.code(), Some(3));
    assert!(
        stderr(&second).contains("already serves"),
        "{}",
        stderr(&second)
    );
    env.finish();
}

#[test]
fn no_autostart_fails_clearly_when_no_daemon_answers() {
    let env = Env::new();
    let out = env.run(&["--no-autostart", "ps"]);
    assert_one_error_line(&out, "no corral daemon answers");
    assert!(env.daemons().is_empty());
    assert!(!env.state.join("corral.sock").exists());
    env.finish();
}

#[test]
fn stop_kill_and_reap_through_the_daemon_leave_nothing() {
    stop_kill_and_reap(Env::new(), "cgroup");
}

#[test]
fn stop_kill_and_reap_without_cgroups_leave_nothing() {
    stop_kill_and_reap(Env::without_cgroups(), "process-group");
}

fn stop_kill_and_reap(env: Env, containment: &str) {
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - cgroup2 ");
    let containment = if cgroup2 {
        containment
    } else {
        "process-group"
    };
    let script = "sleep 300 & echo $!; sh -c 'setsid sleep 300 & echo $!'; wait";
    assert!(
        env.run(&["spawn", "team.a", "--", "sh", "-c", script])
            .status
            .success()
    );
    assert!(
        env.run(&[
            "spawn",
            "team.b",
            "--stop-timeouts",
            "10,10,10",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 300"
        ])
        .status
        .success()
    );
    let a = env.json(&["status", "team.a"]);
    assert_eq!(a["containment"], containment);
    let log = std::path::PathBuf::from(a["stdout_log"].as_str().unwrap());
    let end = Instant::now() + DEADLINE;
    let pids: Vec<i32> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break text.lines().map(|l| l.parse().unwrap()).collect();
        }
        assert!(Instant::now() < end, "the agent never printed its children");
        std::thread::sleep(Duration::from_millis(10));
    };
    let reports = env.json(&["stop", "team.a"]);
    assert_eq!(reports[0]["stage"], "term", "{reports}");
    assert!(
        reports[0]["descendants_killed"].as_u64().unwrap() >= 2,
        "{reports}"
    );
    for pid in pids.iter().chain([&(a["pid"].as_i64().unwrap() as i32)]) {
        assert!(proc_stat(*pid).is_none(), "pid {pid} survived");
    }
    let b = env.json(&["status", "team.b"]);
    let began = Instant::now();
    let killed = env.json(&["kill", "team.b", "--force"]);
    assert_eq!(killed["killed"], true);
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "force does not wait for TERM stages"
    );
    assert!(proc_stat(b["pid"].as_i64().unwrap() as i32).is_none());
    assert_eq!(env.json(&["reap"]), serde_json::json!([]));
    let unknown = env.run(&["stop", "nobody"]);
    assert_one_error_line(&unknown, "agent nobody not found");
    env.finish();
}

#[test]
fn tcp_serving_is_refused_without_a_long_enough_token() {
    let env = Env::new();
    let out = env.run(&["daemon", "--listen", "127.0.0.1:0"]);
    assert_one_error_line(&out, "needs --token-file");
    let token = env.dir.as_ref().unwrap().path().join("token");
    std::fs::write(&token, "short\n").unwrap();
    let out = env.run(&[
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_one_error_line(&out, "use at least 16");
    assert!(env.daemons().is_empty(), "no daemon was left running");
    env.finish();
}

#[test]
fn the_daemon_log_has_a_line_per_transition_and_stop_stage_with_id_and_pid() {
    let env = Env::new();
    assert!(
        env.run(&["spawn", "logged", "--", "sleep", "30"])
            .status
            .success()
    );
    let pid = env.json(&["status", "logged"])["pid"].as_i64().unwrap();
    assert!(env.run(&["stop", "logged"]).status.success());
    // The log is written by a background writer: poll until its last line is in.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(env.state.join("daemon.log")).unwrap();
        if log.contains("agent ended") || std::time::Instant::now() > end {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    for what in [
        "agent started",
        "agent running",
        "stop stage",
        "agent ended",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in {log}"));
        assert!(line.contains("agent_id=logged"), "{line}");
        assert!(line.contains(&format!("pid={pid}")), "{line}");
    }
    env.finish();
}

#[test]
fn the_cli_talks_to_a_tcp_daemon_with_its_token() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "ffffffffffffffffffffffffffffffff\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let token_arg = token.to_str().unwrap();
    let mut daemon = env
        .cmd(&["--token-file", token_arg, "daemon", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let remote = |token: &str, args: &[&str]| {
        let mut all = vec!["--url", addr.as_str(), "--token-file", token];
        all.extend_from_slice(args);
        env.run(&all)
    };
    let end = Instant::now() + DEADLINE;
    while !remote(token_arg, &["--json", "summary"]).status.success() {
        assert!(Instant::now() < end, "the TCP daemon never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
    let spawn = remote(token_arg, &["spawn", "remote", "--", "sleep", "30"]);
    assert!(spawn.status.success(), "{}", stderr(&spawn));
    let s: Value =
        serde_json::from_slice(&remote(token_arg, &["--json", "status", "remote"]).stdout).unwrap();
    assert!(proc_stat(s["pid"].as_i64().unwrap() as i32).is_some());
    assert_one_error_line(&remote(wrong.to_str().unwrap(), &["ps"]), "Bearer");
    assert!(
        remote(token_arg, &["stop", "--all", "--force"])
            .status
            .success()
    );
    // SIGTERM: the daemon removes its socket on the way out. Our own child, unreaped:
    // its pid cannot have been reused.
    // SAFETY: kill(2) on an integer pid.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
    env.finish();
}
