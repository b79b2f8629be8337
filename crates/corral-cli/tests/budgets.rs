//! Team budgets (`corral team`): a team over its memory budget loses its
//! largest agent and keeps the others; a spawn over `max_agents` is refused
//! and leaves nothing, under concurrent spawns too; budgets outlive a
//! daemon killed with SIGKILL. Checked against the OS: which processes run,
//! what they hold in memory (`/proc/<pid>/status`), what is left.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The system's Python (not a version manager's shim, which would be
/// another process in the tree): the memory helpers' interpreter.
fn python() -> &'static str {
    let p = "/usr/bin/python3";
    assert!(
        Path::new(p).exists(),
        "this test needs {p} to run helpers that hold memory"
    );
    p
}

/// A helper that allocates and touches `mib` MiB, says so, then sleeps.
fn holder(mib: u32) -> String {
    format!(
        "import sys, time\nb = b'x' * ({mib} << 20)\nprint('holding', len(b), flush=True)\ntime.sleep(300)\n"
    )
}

/// Spawns a helper holding `mib` MiB; its pid. With `over`, the helper is
/// the one that takes its team over a budget: the sampler may stop it
/// inside its verification window already, so its spawn may answer failed.
fn spawn_holder(env: &Env, id: &str, mib: u32, over: bool) -> i32 {
    let code = holder(mib);
    let out = env.run(&["spawn", id, "--", python(), "-c", &code]);
    assert!(over || out.status.success(), "{}", stderr(&out));
    env.json(&["status", id])["pid"].as_i64().unwrap() as i32
}

/// Resident memory of one process, MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn live(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s[0] != "Z")
}

#[test]
fn a_team_over_its_memory_budget_loses_its_largest_agent_and_keeps_the_others() {
    let env = Env::new();
    // 10 + 20 MiB (and each interpreter's own ~10) stay well under 100; the
    // third, holding 80, takes the team over it — and is then its largest.
    let out = env.run(&["team", "set", "T", "--memory", "100"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let small = spawn_holder(&env, "T.1", 10, false);
    let middle = spawn_holder(&env, "T.2", 20, false);
    // Outside the team: never counted, never stopped.
    let outsider = spawn_holder(&env, "U", 60, false);
    eventually(DEADLINE, "the helpers hold their memory", || {
        (rss_mib(small) >= 10.0 && rss_mib(middle) >= 20.0).then_some(())
    });
    let team = env.json(&["team", "show", "T"]);
    assert_eq!(team["over"], serde_json::json!([]), "{team}");
    assert_eq!(team["enforcement"], "sampler");

    let large = spawn_holder(&env, "T.3", 80, true);
    // The OS: the largest helper goes, the others stay.
    eventually(Duration::from_secs(20), "T.3's process to be gone", || {
        proc_stat(large).is_none().then_some(())
    });
    let s = env.wait_for("T.3", "its end", |s| s["state"] == "ended");
    assert_eq!(s["persistent_status"], "failed", "{s}");
    let reason = s["end_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("team T over its memory budget: ") && reason.contains("of 100 MiB"),
        "{reason}"
    );
    assert!(live(small) && live(middle) && live(outsider));
    // The event says which budget, the team's usage and what was done.
    let out = env.run(&["events", "T.3", "--json"]);
    let budget: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "budget")
        .collect();
    assert_eq!(budget.len(), 1, "{budget:?}");
    let e = &budget[0];
    assert_eq!(e["team"], "T");
    assert_eq!(e["budget"], "memory_mb");
    assert_eq!(e["limit"], 100.0);
    assert_eq!(e["action"], "stop");
    assert!(e["usage"].as_f64().unwrap() > 100.0, "{e}");
    assert!(e["agent_usage"].as_f64().unwrap() > 40.0, "{e}");
    let others = env.run(&["events", "T.*", "--json"]);
    let n = String::from_utf8_lossy(&others.stdout)
        .lines()
        .filter(|l| l.contains("\"kind\":\"budget\""))
        .count();
    assert_eq!(n, 1, "one agent stopped for the team");

    // The next samples see the freed memory: the team is under its budget,
    // and nobody else is stopped for it.
    let team = eventually(Duration::from_secs(10), "the team back under", || {
        let t = env.json(&["team", "show", "T"]);
        (t["usage"]["agents"] == 2 && t["over"] == serde_json::json!([])).then_some(t)
    });
    let used = team["usage"]["memory_mb"].as_f64().unwrap();
    let by_proc = rss_mib(small) + rss_mib(middle);
    assert!(
        (used - by_proc).abs() < 10.0,
        "corral says {used} MiB, /proc says {by_proc}"
    );
    assert!(live(small) && live(middle) && live(outsider));
    for id in ["T.1", "T.2"] {
        assert_eq!(env.json(&["status", id])["state"], "running");
    }
    env.finish();
    for pid in [small, middle, outsider] {
        assert!(proc_stat(pid).is_none());
    }
}

#[test]
fn a_spawn_over_max_agents_is_refused_and_leaves_nothing() {
    let env = Env::new();
    let out = env.run(&["team", "set", "M", "--max-agents", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The team's own id counts: M is the lead of team M.
    for id in ["M", "M.1"] {
        let out = env.run(&["spawn", id, "--", "sleep", "300"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = env.run(&["spawn", "M.2", "--", "sleep", "300"]);
    assert_one_error_line(
        &out,
        "team M is at its budget of 2 live agents (2 live now)",
    );
    assert_eq!(out.status.code(), Some(1));
    // Nothing of it: no record, no process, no dir.
    let out = env.run(&["status", "M.2"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(agent_processes("M.2").is_empty());
    assert!(!env.state.join("agents").join("M.2").exists());
    // A batch: each entry refused alone, with the code.
    let out = env.run(&[
        "--json", "spawn", "M.b", "--count", "2", "--", "sleep", "300",
    ]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or("spawned"))
        .collect();
    assert_eq!(codes, ["budget", "budget"], "{answer}");
    // A restart of a live member is not a new agent.
    let out = env.run(&["restart", "M.1", "--stop-timeouts", "1,1,1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // An ended member frees its place.
    let out = env.run(&["stop", "M.1", "--stop-timeouts", "1,1,1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["spawn", "M.2", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // …and coming back, it is a new one again.
    let out = env.run(&["restart", "M.1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("budget"), "{}", stderr(&out));
    let team = env.json(&["team", "show", "M"]);
    assert_eq!(team["usage"]["agents"], 2, "{team}");
    let live: Vec<i32> = ["M", "M.2"]
        .iter()
        .flat_map(|id| agent_processes(id))
        .collect();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(agent_processes("M.1").is_empty());
    env.finish();
}

#[test]
fn concurrent_spawns_never_take_the_last_place_twice() {
    let env = Env::new();
    let out = env.run(&["team", "set", "C", "--max-agents", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=8)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    let id = format!("C.{i}");
                    let out = env.run(&["spawn", &id, "--verify-ms", "0", "--", "sleep", "300"]);
                    (id, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let spawned: Vec<&String> = results
        .iter()
        .filter(|(_, o)| o.status.success())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(spawned.len(), 3, "exactly the budget: {spawned:?}");
    for (id, out) in results.iter().filter(|(_, o)| !o.status.success()) {
        assert!(
            stderr(out).contains("team C is at its budget of 3"),
            "{id}: {}",
            stderr(out)
        );
        assert!(agent_processes(id).is_empty(), "{id} runs");
    }
    // The OS: three agents run, no more.
    let running: usize = (1..=8)
        .map(|i| agent_processes(&format!("C.{i}")).len())
        .sum();
    assert_eq!(running, 3);
    let ps = env.json(&["ps", "C.*"]);
    assert_eq!(ps.as_object().unwrap().len(), 3, "{ps}");
    env.finish();
}

#[test]
fn budgets_outlive_a_daemon_killed_with_sigkill() {
    let env = Env::new();
    let out = env.run(&[
        "team",
        "set",
        "K",
        "--memory",
        "512",
        "--cpu",
        "150",
        "--pids",
        "64",
        "--max-agents",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["spawn", "K.1", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent = env.json(&["status", "K.1"])["pid"].as_i64().unwrap() as i32;
    let daemon = env.crash_daemon();
    assert!(live(agent), "the agent outlives its daemon");
    // A new daemon (autostarted) has the budgets, and enforces them.
    let team = env.json(&["team", "show", "K"]);
    assert_ne!(env.daemon_pid(), daemon);
    assert_eq!(
        team["budget"],
        serde_json::json!({"memory_mb": 512.0, "cpu_percent": 150.0, "pids": 64, "max_agents": 1}),
        "{team}"
    );
    assert_eq!(team["usage"]["agents"], 1, "{team}");
    let out = env.run(&["spawn", "K.2", "--", "sleep", "300"]);
    assert_one_error_line(&out, "team K is at its budget of 1 live agent (1 live now)");
    assert!(agent_processes("K.2").is_empty());
    // Removed budgets stay removed, across a crash too.
    let out = env.run(&["team", "rm", "K"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.crash_daemon();
    let teams = env.json(&["team", "ls"]);
    assert_eq!(teams, serde_json::json!([]));
    let out = env.run(&["spawn", "K.2", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.finish();
    assert!(proc_stat(agent).is_none());
}

#[test]
fn the_team_commands_say_what_they_did() {
    let env = Env::new();
    let out = env.run(&["team", "set", "W", "--memory", "256", "--max-agents", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("team      W\n"), "{text}");
    assert!(text.contains("memory    -/256.0M"), "{text}");
    assert!(text.contains("agents    0/4"), "{text}");
    assert!(
        text.contains("enforced  sampler (max_agents: at spawn)"),
        "{text}"
    );
    assert!(text.contains("no members"), "{text}");
    let out = env.run(&["spawn", "W.1", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = env.json(&["status", "W.1"])["pid"].as_i64().unwrap() as i32;

    let out = env.run(&["team", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TEAM", "MEMORY", "CPU", "PIDS", "AGENTS", "OVER", "ENFORCED"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "W");
    assert!(row[1].ends_with("/256.0M"), "{text}");
    assert_eq!(row[4], "1/4");
    assert_eq!(row[5], "-");
    assert_eq!(row[6], "sampler");

    // `ps` keeps its table, and shows the teams' under it.
    let out = env.run(&["ps"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (agents, teams) = text
        .split_once("\n\n")
        .expect("a teams table under the agents'");
    assert!(agents.starts_with("ID "), "{text}");
    assert_eq!(agents.lines().count(), 2, "{text}");
    assert!(teams.starts_with("TEAM "), "{text}");
    assert!(teams.lines().nth(1).unwrap().starts_with("W "), "{text}");
    // A selector elsewhere leaves the team out; --json is the agents alone.
    let out = env.run(&["ps", "X.*"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("TEAM"));
    assert!(env.json(&["ps"]).get("W.1").is_some());

    let show = env.json(&["team", "show", "W"]);
    assert_eq!(show["members"][0]["agent_id"], "W.1");
    // The member's figures are its tree's, as /proc has them.
    let mem = show["members"][0]["memory_mb"].as_f64().unwrap();
    assert!(
        (mem - rss_mib(pid)).abs() < 2.0,
        "{mem} vs {}",
        rss_mib(pid)
    );
    let text = String::from_utf8_lossy(&env.run(&["team", "show", "W"]).stdout).into_owned();
    assert!(text.contains("MEMBER"), "{text}");
    assert!(text.contains("W.1"), "{text}");

    // Bad input: exit 2, one line naming the field.
    let out = env.run(&["team", "set", "W"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_error_line(&out, "give at least one of --memory");
    let out = env.run(&["team", "set", "W", "--memory", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_error_line(&out, "memory_mb must be more than 0");
    let out = env.run(&["team", "set", "W", "--max-agents", "0"]);
    assert_one_error_line(&out, "max_agents must be 1–");
    let out = env.run(&["team", "show", "nobody"]);
    assert_eq!(out.status.code(), Some(4));
    assert_one_error_line(&out, "team nobody has no budget set and no agent");

    let out = env.run(&["team", "rm", "W"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "team W: budgets removed\n"
    );
    let out = env.run(&["team", "rm", "W"]);
    assert_eq!(out.status.code(), Some(4));
    let out = env.run(&["team", "ls"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no team budgets\n");
    let out = env.run(&["ps"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("TEAM"));
    env.finish();
    assert!(proc_stat(pid).is_none());
}

/// Threads of one process, from `/proc/<pid>/status`.
fn threads(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A helper that starts `n` sleeping threads, then sleeps (`over`: as for
/// [`spawn_holder`]).
fn threaded(env: &Env, id: &str, n: u32, over: bool) -> i32 {
    let code = format!(
        "import threading, time\nfor _ in range({n}):\n    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\ntime.sleep(300)\n"
    );
    let out = env.run(&["spawn", id, "--", python(), "-c", &code]);
    assert!(over || out.status.success(), "{}", stderr(&out));
    env.json(&["status", id])["pid"].as_i64().unwrap() as i32
}

#[test]
fn a_team_over_its_pids_budget_loses_the_agent_with_the_most_tasks() {
    let env = Env::new();
    let out = env.run(&["team", "set", "P", "--pids", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let few = threaded(&env, "P.1", 4, false);
    eventually(DEADLINE, "P.1's threads", || {
        (threads(few) == 5).then_some(())
    });
    // 5 tasks, then 31 more: over 20 once the second has 16, when it has the most.
    let many = threaded(&env, "P.2", 30, true);
    eventually(Duration::from_secs(20), "P.2's process to be gone", || {
        proc_stat(many).is_none().then_some(())
    });
    let s = env.wait_for("P.2", "its end", |s| s["state"] == "ended");
    let reason = s["end_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("team P over its pids budget: ")
            && reason.contains("its agent with the most tasks, P.2"),
        "{reason}"
    );
    assert!(live(few));
    assert_eq!(threads(few), 5);
    let team = eventually(DEADLINE, "the team back under", || {
        let t = env.json(&["team", "show", "P"]);
        (t["usage"]["agents"] == 1 && t["over"] == serde_json::json!([])).then_some(t)
    });
    assert_eq!(team["usage"]["pids"], 5, "{team}");
    env.finish();
    assert!(proc_stat(few).is_none());
}

/// A member that ignores SIGTERM and was spawned with ten-minute stop waits
/// (an agent may choose those for its own helpers) cannot hold its team's
/// budget off: the budget's stop caps the waits (5, 2, 2 s), and a member
/// already being stopped slowly for another reason is killed.
#[test]
fn a_members_own_long_stop_waits_do_not_hold_its_teams_budget_off() {
    let env = Env::new();
    let out = env.run(&["team", "set", "W", "--memory", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stubborn = |mib: u32| {
        format!(
            "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
             b = b'x' * ({mib} << 20)\nprint('holding', flush=True)\ntime.sleep(600)\n"
        )
    };
    // A slow stop for another reason is under way when the team goes over.
    let code = stubborn(30);
    let out = env.run(&[
        "spawn",
        "W.slow",
        "--stop-timeouts",
        "600,600,600",
        "--",
        python(),
        "-c",
        &code,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let slow = env.json(&["status", "W.slow"])["pid"].as_i64().unwrap() as i32;
    let mut stop = env
        .cmd(&["stop", "W.slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for("W.slow", "stopping", |s| s["state"] == "stopping");
    let started = std::time::Instant::now();
    let code = stubborn(60);
    let _ = env.run(&[
        "spawn",
        "W.hog",
        "--stop-timeouts",
        "600,600,600",
        "--",
        python(),
        "-c",
        &code,
    ]);
    let hog = env.json(&["status", "W.hog"])["pid"].as_i64().unwrap() as i32;
    // The hog is the largest: its budget stop reaches SIGKILL within 5 + 2 s.
    eventually(Duration::from_secs(20), "the hog to be gone", || {
        (!live(hog)).then_some(())
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the budget's stop took {took:?}"
    );
    let s = env.json(&["status", "W.hog"]);
    assert_eq!(s["persistent_status"], "failed", "{s}");
    assert!(
        s["end_reason"]
            .as_str()
            .unwrap()
            .contains("over its memory budget"),
        "{s}"
    );
    // The slow member, still over with the hog gone? 30 MiB of 60: under.
    // It is killed only if the team stays over; here it keeps its slow stop.
    assert!(live(slow), "the slow member was not the one over");
    let out = env.run(&["kill", "W.slow", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = stop.wait();
    env.finish();
}
