//! Agents placed on a real Slurm cluster (a single node on this host, started
//! by `scripts/slurm-local.sh`), through the CLI and a daemon, checked against
//! what the engine and `/proc` hold — never against corral's word alone.
//!
//! These tests need the cluster: without it they fail, saying how to start it
//! (`.ci/run` starts it, and leaves these tests out, saying so in its summary,
//! only where the engine cannot be installed). Every agent id carries the test
//! process's pid, so parallel tests and earlier runs never meet.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Env};
use serde_json::Value;

/// Jobs take up to a second or two to be scheduled, cancelled and cleaned up.
const SLURM_DEADLINE: Duration = Duration::from_secs(30);

/// Fails unless a Slurm cluster answers here.
fn cluster() {
    let out = Command::new("timeout")
        .args(["5", "sinfo", "-h", "-p", "debug", "-o", "%T"])
        .output();
    let state = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    // Busy states count: other tests' jobs may be running or completing.
    assert!(
        ["idle", "mixed", "allocated", "completing"]
            .iter()
            .any(|s| state.starts_with(s)),
        "these tests need a running Slurm cluster (node state {state:?}, {:?}): \
         bash scripts/slurm-local.sh install && bash scripts/slurm-local.sh start",
        out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
    );
}

/// An agent id private to this test process.
fn id(name: &str) -> String {
    format!("t{}.{name}", std::process::id())
}

fn hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn procs_of(id: &str) -> Vec<i32> {
    common::agent_processes(id)
}

/// Waits until no process of agent `id` is left on this host.
fn assert_nothing_left(id: &str) {
    common::assert_nothing_left(id, SLURM_DEADLINE);
}

/// The engine's state word for a job (`None` once it has forgotten the job).
fn engine_state(job_id: &str) -> Option<String> {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", job_id, "-o", "%T"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn job_id(status: &Value) -> String {
    status["placement"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {status}"))
        .to_owned()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + SLURM_DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agents_on_slurm_and_on_this_host_show_the_same_fields() {
    cluster();
    let env = Env::new();
    let (local, remote) = (id("local"), id("remote"));
    let out = env.run(&["spawn", &local, "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = env.run(&["spawn", &remote, "--slurm", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("slurm job") && said.contains("running"),
        "{said}"
    );

    let ps = env.json(&["ps"]);
    let (l, r) = (&ps[&local], &ps[&remote]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(l), keys(r), "the same fields for both");
    assert!(l["pid"].is_i64() && l["placement"].is_null());
    assert!(r["pid"].is_null(), "{r}");
    assert_eq!(r["placement"]["engine"], "slurm");
    assert_eq!(r["placement"]["node"], hostname().as_str());
    assert_eq!(r["persistent_status"], "running");
    assert_eq!(r["process_alive"], true);
    assert_eq!(r["health"], "healthy");
    // The engine and the process table agree: the job runs, under slurmstepd.
    let job = job_id(r);
    assert_eq!(engine_state(&job).as_deref(), Some("RUNNING"));
    let procs = procs_of(&remote);
    assert_eq!(procs.len(), 1, "{procs:?}");
    let parent = common::proc_stat(procs[0]).unwrap()[1]
        .parse::<i32>()
        .unwrap();
    assert!(
        common::cmdline(parent).contains("slurmstepd"),
        "the job's parent is {}",
        common::cmdline(parent)
    );
    // Its id is in its environment, and it can report progress through the socket.
    let progress = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "progress",
            "40",
            "--message",
            "from the job",
            "--agent",
            &remote,
        ])
        .env("CORRAL_SOCKET", env.state.join("corral.sock"))
        .output()
        .unwrap();
    assert!(progress.status.success(), "{}", common::stderr(&progress));
    assert_eq!(env.json(&["status", &remote])["progress"], 40);
    // Logs come through the job's output files.
    let out = env.run(&[
        "spawn",
        &id("hello"),
        "--slurm",
        "--",
        "sh",
        "-c",
        "echo hello from $CORRAL_AGENT_ID",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let hello = id("hello");
    env.wait_for(&hello, "completed", |s| {
        s["persistent_status"] == "completed"
    });
    let logs = env.run(&["logs", &hello]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout).trim(),
        format!("hello from {hello}")
    );

    let stop = env.json(&["stop", "--all", "--stop-timeouts", "2,2,2"]);
    // The agents still running (the one that completed is not stopped again).
    assert_eq!(stop.as_array().unwrap().len(), 2, "{stop}");
    assert_eq!(
        env.json(&["status", &remote])["persistent_status"],
        "cancelled"
    );
    assert_nothing_left(&remote);
    assert_nothing_left(&local);
    wait_until("the engine to end the job", || {
        engine_state(&job).is_none_or(|s| s != "RUNNING" && s != "COMPLETING")
    });
    env.finish();
}

#[test]
fn a_job_that_exits_3_reports_3_and_failed() {
    cluster();
    let env = Env::new();
    let a = id("exit3");
    let out = env.run(&[
        "spawn",
        &a,
        "--slurm",
        "--verify-ms",
        "3000",
        "--",
        "sh",
        "-c",
        "echo about to fail >&2; exit 3",
    ]);
    assert!(
        !out.status.success(),
        "a job that fails in its window fails the spawn"
    );
    let err = common::stderr(&out);
    assert!(
        err.contains("code 3") && err.contains("about to fail"),
        "{err}"
    );
    let s = env.json(&["status", &a]);
    assert_eq!(s["exit_code"], 3, "{s}");
    assert_eq!(s["persistent_status"], "failed");
    assert_eq!(s["health"], "failed");
    assert_eq!(s["process_alive"], false);
    // `wait` passes the code on.
    let wait = env.run(&["wait", &a, "--timeout", "10s"]);
    assert_eq!(wait.status.code(), Some(3));
    // A program that does not exist on the node: 127 from the shell, failed.
    let b = id("missing");
    let out = env.run(&[
        "spawn",
        &b,
        "--slurm",
        "--verify-ms",
        "3000",
        "--",
        "/no/such/program",
    ]);
    assert!(!out.status.success());
    assert_eq!(env.json(&["status", &b])["exit_code"], 127);
    env.finish();
}

#[test]
fn a_term_ignoring_job_goes_through_all_three_stages_and_leaves_nothing() {
    cluster();
    let env = Env::new();
    let a = id("stubborn");
    let out = env.run(&[
        "spawn",
        &a,
        "--slurm",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.2; done",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_until("the job's processes", || !procs_of(&a).is_empty());
    let began = Instant::now();
    let report = env.json(&["stop", &a, "--stop-timeouts", "0.5,0.5,5"]);
    let took = began.elapsed();
    assert_eq!(report[0]["stage"], "kill", "{report}");
    assert_eq!(report[0]["persistent_status"], "cancelled");
    assert_eq!(report[0]["exit_signal"], 9, "{report}");
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
    // Not the engine's word only: nothing of it is in the process table.
    assert_nothing_left(&a);
    let events = env.run(&["events", "--json"]);
    let stages: Vec<String> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["agent_id"] == a.as_str() && e["kind"] == "stop_stage")
        .map(|e| e["stage"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(stages, ["term", "second_term", "kill"], "{stages:?}");
    env.finish();
}

#[test]
fn a_jobs_first_stage_goes_out_at_once_and_force_kills_at_once() {
    cluster();
    let env = Env::new();
    // A job that obeys SIGTERM, with a long first wait: its stop ends at the
    // first stage, long before that wait is over.
    let calm = id("calm");
    let out = env.run(&["spawn", &calm, "--slurm", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_until("the job's process", || !procs_of(&calm).is_empty());
    let began = Instant::now();
    let report = env.json(&["stop", &calm, "--stop-timeouts", "30,1,1"]);
    assert_eq!(report[0]["stage"], "term", "{report}");
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "the first SIGTERM waited: {:?}",
        began.elapsed()
    );
    assert_nothing_left(&calm);
    // A TERM-ignoring job killed with --force: SIGKILL at once.
    let stubborn = id("forced");
    let out = env.run(&[
        "spawn",
        &stubborn,
        "--slurm",
        "--stop-timeouts",
        "30,30,5",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.2; done",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_until("the job's processes", || !procs_of(&stubborn).is_empty());
    let began = Instant::now();
    let killed = env.json(&["kill", &stubborn, "--force"]);
    assert_eq!(killed["killed"], true, "{killed}");
    assert_eq!(killed["report"]["stage"], "kill", "{killed}");
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    assert_nothing_left(&stubborn);
    env.finish();
}

#[test]
fn a_job_tree_with_setsid_and_double_fork_leaves_nothing() {
    cluster();
    let env = Env::new();
    let a = id("tree");
    let out = env.run(&[
        "spawn",
        &a,
        "--slurm",
        "--",
        "sh",
        "-c",
        "setsid sleep 300 & (sleep 301 &) ; exec sleep 302",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_until("three processes", || procs_of(&a).len() >= 3);
    let report = env.json(&["stop", &a, "--stop-timeouts", "0.5,0.5,5"]);
    assert_eq!(report[0]["persistent_status"], "cancelled", "{report}");
    assert_nothing_left(&a);
    env.finish();
}

#[test]
fn a_queued_job_says_why_and_a_stop_takes_it_out_of_the_queue() {
    cluster();
    let env = Env::new();
    let a = id("queued");
    let began = Instant::now();
    let out = env.run(&[
        "spawn",
        &a,
        "--slurm",
        "--partition",
        "closed",
        "--",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(began.elapsed() < DEADLINE);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("queued: PartitionDown"), "{said}");
    let s = env.json(&["status", &a]);
    assert_eq!(s["persistent_status"], "spawning");
    assert_eq!(s["process_status"], "pending");
    assert_eq!(s["placement"]["pending_reason"], "PartitionDown");
    let job = job_id(&s);
    assert_eq!(engine_state(&job).as_deref(), Some("PENDING"));
    let report = env.json(&["stop", &a]);
    assert_eq!(report[0]["persistent_status"], "cancelled", "{report}");
    wait_until("the engine to drop the job", || {
        engine_state(&job).is_none_or(|s| s == "CANCELLED")
    });
    assert!(procs_of(&a).is_empty());
    env.finish();
}

#[test]
fn a_crashed_daemon_readopts_jobs_and_learns_how_one_ended_meanwhile() {
    cluster();
    let env = Env::new();
    let (stays, ends, gone) = (id("stays"), id("ends"), id("gone"));
    let go = env.state.parent().unwrap().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; exit 7",
        go.display()
    );
    let gone_script = script.replace("exit 7", "exit 5");
    for (agent, cmd) in [
        (&stays, vec!["sleep", "300"]),
        (&ends, vec!["sh", "-c", script.as_str()]),
        (&gone, vec!["sh", "-c", gone_script.as_str()]),
    ] {
        let mut args = vec!["spawn", agent.as_str(), "--slurm", "--"];
        args.extend(cmd);
        let out = env.run(&args);
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    let before = env.json(&["ps"]);
    let crashed = env.crash_daemon();
    // While no daemon runs: one job ends with 7, another ends and the
    // controller forgets it (MinJobAge), leaving only its completion log.
    std::fs::write(&go, b"").unwrap();
    let ends_job = job_id(&before[&ends]);
    wait_until("the job to end", || {
        engine_state(&ends_job).is_none_or(|s| s == "FAILED")
    });
    let gone_job = job_id(&before[&gone]);
    let min_job_age = Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        min_job_age
            .lines()
            .any(|l| l.starts_with("MinJobAge") && l.trim_end().ends_with("= 10 sec")),
        "this test needs MinJobAge=10 (scripts/slurm-local.sh sets it)"
    );
    let end = Instant::now() + Duration::from_secs(60);
    while engine_state(&gone_job).is_some() {
        assert!(
            Instant::now() < end,
            "job {gone_job} never left the controller"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let after = env.json(&["ps"]);
    assert_ne!(env.daemon_pid(), crashed);
    let s = &after[&stays];
    assert_eq!(s["persistent_status"], "running", "{s}");
    assert_eq!(
        s["placement"]["job_id"],
        before[&stays]["placement"]["job_id"]
    );
    assert_eq!(procs_of(&stays).len(), 1);
    let e = &after[&ends];
    assert_eq!(e["persistent_status"], "failed", "{e}");
    assert_eq!(e["exit_code"], 7, "the real code, not lost: {e}");
    let g = &after[&gone];
    assert_eq!(g["exit_code"], 5, "from the completion log: {g}");
    assert_eq!(g["persistent_status"], "failed");

    let report = env.json(&["stop", &stays]);
    assert_eq!(report[0]["persistent_status"], "cancelled");
    assert_nothing_left(&stays);
    env.finish();
}

#[test]
fn a_hundred_agents_on_slurm_stop_with_stop_all() {
    cluster();
    let env = Env::new();
    let prefix = id("many");
    let out = env.run(&[
        "spawn",
        &prefix,
        "--count",
        "100",
        "--slurm",
        "--verify-ms",
        "0",
        "--",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let all = |ps: &Value, status: &str| {
        ps.as_object()
            .unwrap()
            .values()
            .filter(|s| s["persistent_status"] == status)
            .count()
    };
    wait_until("100 running jobs", || {
        all(&env.json(&["ps"]), "running") == 100
    });
    let ids: Vec<String> = (1..=100).map(|i| format!("{prefix}.{i}")).collect();
    wait_until("100 job processes", || {
        ids.iter().filter(|a| !procs_of(a).is_empty()).count() == 100
    });
    let began = Instant::now();
    let report = env.json(&["stop", "--all", "--stop-timeouts", "5,5,5"]);
    eprintln!("stop --all of 100 Slurm agents: {:?}", began.elapsed());
    assert_eq!(report.as_array().unwrap().len(), 100);
    assert_eq!(all(&env.json(&["ps"]), "cancelled"), 100);
    for a in &ids {
        assert_nothing_left(a);
    }
    env.finish();
}

#[test]
fn requests_slurm_cannot_serve_are_refused_with_the_reason() {
    cluster();
    let env = Env::new();
    let out = env.run(&[
        "spawn",
        &id("u"),
        "--slurm",
        "--user",
        "nobody",
        "--",
        "true",
    ]);
    common::assert_one_error_line(&out, "user");
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["spawn", &id("m"), "--slurm", "--memory", "10", "--", "true"]);
    common::assert_one_error_line(&out, "placement.slurm.mem_mb");
    let out = env.run(&[
        "spawn",
        &id("p"),
        "--slurm",
        "--partition",
        "nosuchpartition",
        "--",
        "true",
    ]);
    common::assert_one_error_line(&out, "Invalid partition name");
    let s = env.json(&["status", &id("p")]);
    assert_eq!(s["persistent_status"], "failed");
    env.finish();
}
