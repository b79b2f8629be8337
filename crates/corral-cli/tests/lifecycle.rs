//! One lifecycle from id to last descendant, end to end through the daemon:
//! stops that survive a crashed daemon, leftovers stopped before a run ends,
//! stops that can be seen, agents registered before they run, zombies shown
//! as zombies, and durations that cannot overflow. Every check is made
//! against `/proc` as well as against what corral says.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn spawn_ok(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["--json", "spawn"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert!(out.status.success(), "corral {all:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pid_of(s: &Value) -> i32 {
    s["pid"].as_i64().unwrap() as i32
}

fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s[0] != "Z")
}

/// Waits until `path` holds a pid (written by a process of an agent).
fn pid_in(path: &Path) -> i32 {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < end, "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until an agent has written `ready` to its stdout log.
fn ready(log: &Path) {
    let end = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < end, "{} never said ready", log.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET path` on the daemon's socket; the body.
fn http_get(env: &Env, path: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(env.state.join("corral.sock")).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Item 1: a stop is durable. TERM-ignoring agents with a restart policy are
/// stopped; the daemon is killed in the second stage; the next daemon
/// finishes every stop, records each as the user's (`cancelled`), and plans
/// no restart.
#[test]
fn a_stop_under_way_survives_a_killed_daemon_and_ends_cancelled_never_restarted() {
    let env = Env::new();
    const N: usize = 200;
    let script = "trap '' TERM; echo ready; exec sleep 300";
    spawn_ok(
        &env,
        &[
            "st",
            "--count",
            &N.to_string(),
            "--restart",
            "on-failure",
            "--backoff",
            "0.1,0.1",
            "--stop-timeouts",
            "0.5,4,2",
            "--verify-ms",
            "0",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let all = env.json(&["ps"]);
    let pids: Vec<i32> = agent_pids(&all).into_values().collect();
    assert_eq!(pids.len(), N);
    // Every agent ignores SIGTERM before the stop begins.
    for s in all.as_object().unwrap().values() {
        ready(Path::new(s["stdout_log"].as_str().unwrap()));
    }
    let reaper = InitReaper::new(pids.clone());
    let mut stopper = env.cmd(&["stop", "--all"]).spawn().unwrap();
    // Every stop reaches its second stage (on record before its signal).
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let all = env.json(&["ps"]);
        let second = all
            .as_object()
            .unwrap()
            .values()
            .filter(|s| s["state"] == "stopping" && s["stop"]["stage"] == "second_term")
            .count();
        if second == N {
            break;
        }
        assert!(Instant::now() < end, "{second} of {N} in the second stage");
        std::thread::sleep(Duration::from_millis(50));
    }
    env.crash_daemon();
    let _ = stopper.wait();
    for pid in &pids {
        assert!(alive(*pid), "{pid} died with the daemon (TERM is ignored)");
    }
    // The next daemon resumes each stop at the stored stage: SIGKILL when
    // the second stage's wait is over, whatever the daemon's downtime.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let all = env.json(&["ps"]);
        // Ended, and reaped by their parent (our reaper, standing in for
        // init): until then each is rightly a zombie.
        let ended = all
            .as_object()
            .unwrap()
            .values()
            .filter(|s| s["state"] == "ended" && s["is_zombie"] == false)
            .count();
        if ended == N {
            for (id, s) in all.as_object().unwrap() {
                assert_eq!(s["persistent_status"], "cancelled", "{id}: {s}");
                assert_eq!(s["health"], "cancelled", "{id}: {s}");
                assert_eq!(s["run"], 1, "{id} was restarted: {s}");
                assert_eq!(s["next_restart_at"], Value::Null, "{id}: {s}");
                assert_eq!(s["exit_signal"], 9, "{id}: {s}");
            }
            break;
        }
        assert!(Instant::now() < end, "{ended} of {N} ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &pids {
        wait_gone(*pid);
    }
    drop(reaper);
    env.finish();
}

/// Item 2: what an ended main process leaves behind is stopped before the
/// run ends, and corral never forgets an agent while a process of it lives.
#[test]
fn leftovers_are_stopped_before_the_run_ends_and_never_forgotten() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    // A leftover that goes at the first SIGTERM.
    let f1 = dir.join("df1.pid");
    // The main process waits until its leftover has written its pid (a stop
    // of leftovers begins the moment the main exits).
    let script = format!(
        "(setsid sh -c 'echo $$ > {f}; exec sleep 999' &); \
         while [ ! -s {f} ]; do sleep 0.01; done; exit 0",
        f = f1.display()
    );
    spawn_ok(
        &env,
        &["df1", "--verify-ms", "0", "--", "sh", "-c", &script],
    );
    let leftover = pid_in(&f1);
    let s = env.wait_for("df1", "ended", |s| s["state"] == "ended");
    assert!(
        proc_stat(leftover).is_none(),
        "the leftover {leftover} lives on"
    );
    assert_eq!(s["exit_code"], 0, "{s}");
    assert_eq!(s["health"], "completed", "{s}");
    let reason = s["end_reason"].as_str().unwrap();
    assert!(reason.contains("1 leftover process stopped"), "{reason}");

    // A leftover that ignores SIGTERM, with long waits: the agent stays
    // `stopping` (cause leftovers) and cannot be forgotten until it is gone.
    let f2 = dir.join("df2.pid");
    let script = format!(
        "(setsid sh -c 'trap \"\" TERM; echo $$ > {f}; exec sleep 999' &); \
         while [ ! -s {f} ]; do sleep 0.01; done; exit 0",
        f = f2.display()
    );
    spawn_ok(
        &env,
        &[
            "df2",
            "--verify-ms",
            "0",
            "--stop-timeouts",
            "60,60,60",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let stubborn = pid_in(&f2);
    let s = env.wait_for("df2", "a stop of its leftovers", |s| {
        s["state"] == "stopping" && s["stop"]["cause"] == "leftovers"
    });
    assert_eq!(s["exit_code"], 0, "the main's own exit: {s}");
    assert!(alive(stubborn));
    let rm = env.run(&["rm", "df2"]);
    assert_one_error_line(&rm, "stopping");
    assert!(alive(stubborn), "rm left it alone");
    let prune = env.json(&["prune"]);
    assert!(
        !prune["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "df2"),
        "{prune}"
    );
    // `stop --all` reaches it; forced, it goes at once.
    let reports = env.json(&["stop", "--all", "--force"]);
    let r = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent_id"] == "df2")
        .unwrap();
    assert_eq!(r["stage"], "kill", "{r}");
    assert!(
        proc_stat(stubborn).is_none(),
        "{stubborn} survived the stop's answer"
    );
    let s = env.json(&["status", "df2"]);
    assert_eq!(s["state"], "ended", "{s}");
    assert_eq!(s["health"], "completed", "the main had completed: {s}");
    let gone = env.json(&["rm", "df2"]);
    assert_eq!(gone["removed"][0], "df2");
    env.finish();
}

/// Item 3: a stop can be seen while it runs (state, stage, cause, deadline —
/// in the status, `ps` and `/metrics`), and a user's stop ends `cancelled`.
#[test]
fn a_stop_is_visible_while_it_runs_and_a_users_stop_ends_cancelled() {
    let env = Env::new();
    let r = spawn_ok(
        &env,
        &[
            "vis",
            "--stop-timeouts",
            "30,0.2,1",
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo ready; exec sleep 300",
        ],
    );
    ready(Path::new(r["stdout_log"].as_str().unwrap()));
    let pid = pid_of(&env.json(&["status", "vis"]));
    let mut stopper = env.cmd(&["--json", "stop", "vis"]).spawn().unwrap();
    let s = env.wait_for("vis", "stopping", |s| s["state"] == "stopping");
    assert_eq!(s["stop"]["stage"], "term", "{s}");
    assert_eq!(s["stop"]["cause"], "user", "{s}");
    assert!(s["stop"]["began_at"].is_string(), "{s}");
    assert!(s["stop"]["stage_deadline_at"].is_string(), "{s}");
    assert_eq!(s["health"], "healthy", "still alive: {s}");
    let ps = env.run(&["ps"]);
    let table = String::from_utf8_lossy(&ps.stdout);
    let row = table.lines().find(|l| l.starts_with("vis ")).unwrap();
    assert!(row.contains("stopping"), "{table}");
    let metrics = http_get(&env, "/metrics");
    assert!(
        metrics.contains("corral_agents{state=\"stopping\"} 1"),
        "{metrics}"
    );
    // A faster stop joins it: SIGKILL at once.
    let forced = env.json(&["stop", "vis", "--force"]);
    assert_eq!(forced[0]["stage"], "kill", "{forced}");
    let _ = stopper.wait();
    assert!(proc_stat(pid).is_none());
    let s = env.json(&["status", "vis"]);
    assert_eq!(s["state"], "ended", "{s}");
    assert_eq!(s["stop"], Value::Null, "{s}");
    assert_eq!(s["persistent_status"], "cancelled", "{s}");
    assert_eq!(
        s["health"], "cancelled",
        "a user's stop is not a failure: {s}"
    );
    let metrics = http_get(&env, "/metrics");
    assert!(
        metrics.contains("corral_agents{state=\"ended\"} 1"),
        "{metrics}"
    );
    env.finish();
}

/// Item 4: an agent's id, status and progress route exist before its process
/// does: agents that report progress in their first instruction, under
/// `set -e`, are never told `not_found`.
#[test]
fn agents_reporting_progress_first_thing_find_themselves() {
    let env = Env::new();
    let corral = env!("CARGO_BIN_EXE_corral");
    let script = format!("set -e; {corral} progress 10; exec sleep 300");
    for batch in 0..3 {
        let prefix = format!("rp{batch}");
        spawn_ok(&env, &[&prefix, "--count", "20", "--", "sh", "-c", &script]);
        for i in 1..=20 {
            let id = format!("{prefix}.{i}");
            let s = env.wait_for(&id, "progress 10", |s| {
                s["progress"] == 10 || s["process_alive"] == false
            });
            assert_eq!(s["progress"], 10, "{id}: {s}");
            assert_eq!(s["process_alive"], true, "{id} died: {s}");
        }
    }
    env.finish();
}

/// Item 5: a re-adopted agent whose parent does not reap it is a zombie, and
/// is reported as one — with its real exit status — until it is reaped.
#[test]
fn a_zombie_under_a_foreign_parent_is_called_a_zombie_until_reaped() {
    let env = Env::new();
    spawn_ok(&env, &["z", "--", "sleep", "300"]);
    let pid = pid_of(&env.json(&["status", "z"]));
    env.crash_daemon();
    // The agent is now our child (we are a subreaper); the next daemon
    // re-adopts it. Kill it and do not reap it: a zombie of ours.
    let s = env.json(&["status", "z"]);
    assert_eq!(s["state"], "running", "{s}");
    // SAFETY: a plain syscall; the pid is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // A zombie at once (a live look at the process), with its end on record soon.
    let s = env.wait_for("z", "a recorded zombie", |s| {
        s["is_zombie"] == true && s["state"] == "ended"
    });
    assert_eq!(proc_stat(pid).unwrap()[0], "Z", "/proc agrees");
    assert_eq!(s["process_status"], "zombie", "{s}");
    assert_eq!(s["health"], "zombie", "{s}");
    assert_eq!(s["exit_signal"], 9, "its real end: {s}");
    assert_eq!(s["state"], "ended", "{s}");
    // Its end is on record: nothing for corral to reap or record.
    assert_eq!(env.json(&["reap"]), serde_json::json!([]));
    kill_and_reap(pid, 0);
    let s = env.wait_for("z", "reaped", |s| s["is_zombie"] == false);
    assert_eq!(s["process_status"], "dead", "{s}");
    assert_eq!(s["health"], "failed", "{s}");
    env.finish();
}

/// Item 6: every duration is bounded; a huge one is a clear error naming the
/// field, and the daemon goes on.
#[test]
fn huge_durations_are_refused_naming_the_field_and_nothing_panics() {
    let env = Env::new();
    spawn_ok(&env, &["ok", "--", "sleep", "300"]);
    let out = env.run(&[
        "spawn",
        "huge",
        "--max-runtime",
        "9500000000000000000s",
        "--",
        "sleep",
        "1",
    ]);
    assert_one_error_line(&out, "max_runtime_s");
    for body in [
        r#"{"agent_id": "h1", "command": ["sleep", "1"], "max_runtime_s": 1e300}"#,
        r#"{"agent_id": "h2", "command": ["sleep", "1"], "restart": {"backoff_s": [1, 1e300]}}"#,
        r#"{"agent_id": "h3", "command": ["sleep", "1"], "stop_timeouts": [1, 1, 1e300]}"#,
    ] {
        let out = env
            .cmd(&["spawn", "--from", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(body.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success(), "{body} was taken");
        let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(text.contains("invalid"), "{text}");
    }
    let s = env.json(&["status", "ok"]);
    assert_eq!(
        s["process_alive"], true,
        "the daemon and its agents go on: {s}"
    );
    let stop = env.json(&["stop", "ok"]);
    assert_eq!(stop[0]["stage"], "term");
    env.finish();
}
