//! Fan-out: many agents in one request, checked against `/proc`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::Value;

#[test]
fn a_batch_answers_in_order_and_a_bad_entry_fails_alone() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let lines = [
        r#"{"agent_id": "b.ok1", "command": ["sleep", "30"]}"#,
        r#"{"agent_id": "b.missing", "command": ["/no/such/program"]}"#,
        r#"{"agent_id": "../bad", "command": ["true"]}"#,
        r#"{"agent_id": "b.ok2", "command": ["sleep", "30"], "verify_ms": 0}"#,
        r#"{"agent_id": "b.ok1", "command": ["sleep", "30"]}"#,
        r#"{"agent_id": "b.dies", "command": ["sh", "-c", "echo boom >&2; exit 5"]}"#,
    ];
    let file = dir.join("batch.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = env.run(&["--json", "spawn", "--from", file.to_str().unwrap()]);
    assert!(!out.status.success(), "some entries failed");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["b.ok1", "b.missing", "../bad", "b.ok2", "b.ok1", "b.dies"],
        "request order"
    );
    assert_eq!(results[0]["status"], "running", "{answer:#}");
    assert_eq!(results[1]["error"]["code"], "spawn_failed");
    assert_eq!(results[2]["error"]["code"], "invalid");
    assert_eq!(results[3]["status"], "running");
    // The same id twice in one batch: one runs, the other is a conflict.
    assert_eq!(results[4]["error"]["code"], "conflict");
    assert_eq!(results[5]["status"], "failed");
    assert_eq!(results[5]["exit_code"], 5);
    assert!(results[5]["error"].as_str().unwrap().contains("boom"));
    for i in [0, 3] {
        let pid = results[i]["pid"].as_i64().unwrap() as i32;
        assert!(proc_stat(pid).is_some(), "{} runs", ids[i]);
    }
    env.finish();
}

#[test]
fn a_thousand_at_once_start_verified_and_leave_nothing_after_stop_all() {
    let env = Env::new();
    let out = env.run(&[
        "--json", "spawn", "many", "--count", "1000", "--", "sleep", "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pids: Vec<i32> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "running", "{r}");
            r["pid"].as_i64().unwrap() as i32
        })
        .collect();
    assert_eq!(pids.len(), 1000);
    for (i, pid) in pids.iter().enumerate() {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let want = format!("CORRAL_AGENT_ID=many.{}", i + 1);
        assert!(
            environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()),
            "pid {pid} is many.{}",
            i + 1
        );
    }
    let stop = env.run(&["stop", "--all"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    for pid in &pids {
        wait_gone(*pid);
    }
    let ps = env.json(&["ps"]);
    assert!(
        ps.as_object()
            .unwrap()
            .values()
            .all(|s| s["persistent_status"] == "cancelled")
    );
    env.finish();
}
