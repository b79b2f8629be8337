//! Delegation: an agent runs its own helpers through the socket corral gave it
//! (`CORRAL_SOCKET`), and works on its own team (`ID.*`) and nothing else —
//! on the daemon's own socket, and on the agent socket as another user, where
//! its children run as that user too. Checked against the OS: the helpers'
//! processes, their uids, and what is left in `/proc`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// What an agent's script wrote to its stdout, once it wrote `finished`
/// (written `fin""ished` in the script, so its command line, which its
/// `ps` output may quote, does not count).
fn script_output(env: &Env, id: &str) -> String {
    let s = env.json(&["status", id]);
    let log = PathBuf::from(s["stdout_log"].as_str().unwrap());
    eventually(
        Duration::from_secs(30),
        "the agent's script to finish",
        || {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            t.contains("finished").then_some(t)
        },
    )
}

fn pid_of(env: &Env, id: &str) -> i32 {
    env.json(&["status", id])["pid"].as_i64().unwrap() as i32
}

fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The script of a coordinator agent `me` that tries what it may and may not do.
fn coordinator(me: &str) -> String {
    let c = bin();
    let c = c.to_str().unwrap();
    format!(
        "{c} spawn {me}.helper -- sleep 300; echo spawn_own=$?; \
         {c} spawn L2.2.x -- sleep 300 2>&1; echo spawn_other=$?; \
         {c} spawn L3 -- sleep 300 2>&1; echo spawn_top=$?; \
         {c} --json ps | tr -d '\\n '; echo; \
         {c} stop L2.2 --stop-timeouts 1,1,1 2>&1; echo stop_other=$?; \
         {c} summary 2>&1; echo summary=$?; \
         {c} stop {me}.helper --stop-timeouts 1,1,1; echo stop_own=$?; \
         {c} spawn {me}.second -- sleep 300; echo spawn_second=$?; \
         echo fin\"\"ished; exec sleep 300"
    )
}

#[test]
fn an_agent_works_on_its_own_team_and_nothing_else() {
    let env = Env::new();
    let out = env.run(&["spawn", "L2.2", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sibling = pid_of(&env, "L2.2");
    let out = env.run(&["spawn", "L2.1", "--", "sh", "-c", &coordinator("L2.1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = script_output(&env, "L2.1");

    assert!(text.contains("spawn_own=0"), "{text}");
    for refused in ["spawn_other", "spawn_top", "stop_other", "summary"] {
        assert!(
            !text.contains(&format!("{refused}=0")),
            "{refused} must be refused: {text}"
        );
    }
    for refusal in [
        "it may spawn only below itself (L2.1.…), not L2.2.x",
        "it may spawn only below itself (L2.1.…), not L3",
        "may work only on agents under its own id (L2.1.*): not L2.2",
        "GET /v1/summary is the owner's",
    ] {
        assert!(text.contains(refusal), "missing {refusal:?}: {text}");
    }
    // Its `ps` saw its team only.
    assert!(text.contains("\"L2.1.helper\""), "{text}");
    assert!(!text.contains("\"L2.2\""), "{text}");
    assert!(
        text.contains("stop_own=0") && text.contains("spawn_second=0"),
        "{text}"
    );

    // The OS agrees: the sibling runs untouched, nothing was spawned outside.
    assert!(proc_stat(sibling).is_some_and(|s| s[0] != "Z"));
    let all = env.json(&["ps"]);
    let ids: Vec<&String> = all.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["L2.1", "L2.1.helper", "L2.1.second", "L2.2"]);
    let second = pid_of(&env, "L2.1.second");
    assert!(proc_stat(second).is_some());
    assert_eq!(
        env.json(&["status", "L2.1.helper"])["persistent_status"],
        "cancelled"
    );
    env.finish();
    assert!(proc_stat(second).is_none());
}

#[test]
fn an_agent_of_another_user_delegates_as_that_user() {
    require_root("the coordinator runs as nobody through the agent socket");
    let env = Env::new();
    let out = env.run(&["spawn", "L2.2", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = bin();
    let c = c.to_str().unwrap();
    let script = format!(
        "{c} spawn L2.1.helper -- sleep 300; echo spawn_own=$?; \
         {c} spawn L2.1.root --user root -- sleep 300 2>&1; echo spawn_root=$?; \
         {c} stop L2.2 2>&1; echo stop_other=$?; \
         echo fin\"\"ished; exec sleep 300"
    );
    let out = env.run(&[
        "spawn", "L2.1", "--user", "nobody", "--cwd", "/", "--", "sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = script_output(&env, "L2.1");
    assert!(text.contains("spawn_own=0"), "{text}");
    assert!(!text.contains("spawn_root=0"), "{text}");
    assert!(text.contains("its parent's user"), "{text}");
    assert!(!text.contains("stop_other=0"), "{text}");
    // Its helper runs as nobody, like its parent: never as root.
    let helper = pid_of(&env, "L2.1.helper");
    assert_eq!(uid_of(helper), 65534);
    assert_eq!(uid_of(pid_of(&env, "L2.1")), 65534);
    assert_eq!(
        env.json(&["status", "L2.2"])["persistent_status"],
        "running"
    );
    env.finish();
    assert!(proc_stat(helper).is_none());
}

/// What a caller inside an agent sends is read as the route reads it: a body
/// in another shape (serde takes a struct's fields as an array too), an
/// `agent_dir`, or `all` never slips past the team's bounds.
#[test]
fn bodies_in_any_shape_stay_within_the_team() {
    let env = Env::new();
    let out = env.run(&["spawn", "victim", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let victim = pid_of(&env, "victim");
    let outside = env.dir.as_ref().unwrap().path().join("outside");
    let script = format!(
        r#"
import json, os, socket
def call(method, path, body):
    s = socket.socket(socket.AF_UNIX); s.connect(os.environ["CORRAL_SOCKET"])
    data = json.dumps(body).encode()
    s.sendall(f"{{method}} {{path}} HTTP/1.1\r\nHost: corral\r\nContent-Type: application/json\r\nContent-Length: {{len(data)}}\r\nConnection: close\r\n\r\n".encode() + data)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    return answer.split(b" ")[1].decode()
cmd = ["sleep", "300"]
print("batch_array", call("POST", "/v1/agents/batch", [[{{"agent_id": "evil", "command": cmd}}]]))
print("spawn_array", call("POST", "/v1/agents", ["team.x", cmd]))
print("restart_array", call("POST", "/v1/restart", [False, "victim"]))
print("stop_array", call("POST", "/v1/stop", [True]))
print("stop_all", call("POST", "/v1/stop", {{"all": True}}))
print("agent_dir", call("POST", "/v1/agents", {{"agent_id": "team.d", "command": cmd, "agent_dir": "{outside}"}}))
print("own", call("POST", "/v1/agents", {{"agent_id": "team.ok", "command": cmd}}))
print("fin" + "ished", flush=True)
os.execvp("sleep", ["sleep", "300"])
"#,
        outside = outside.display()
    );
    let out = env.run(&["spawn", "team", "--", "python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = script_output(&env, "team");
    for (what, code) in [
        ("batch_array", "400"),
        ("spawn_array", "400"),
        ("restart_array", "400"),
        ("stop_array", "400"),
        ("stop_all", "403"),
        ("agent_dir", "403"),
        ("own", "201"),
    ] {
        assert!(
            text.contains(&format!("{what} {code}")),
            "{what} should answer {code}: {text}"
        );
    }
    // The OS agrees: the victim runs as it did, nothing was made outside.
    assert_eq!(pid_of(&env, "victim"), victim);
    assert!(proc_stat(victim).is_some_and(|s| s[0] != "Z"));
    assert!(!outside.exists());
    let all = env.json(&["ps"]);
    let ids: Vec<&String> = all.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["team", "team.ok", "victim"]);
    env.finish();
}

/// A coordinator (as nobody, through the agent socket) starts three helpers,
/// one of which starts a helper of its own; stopping the coordinator stops
/// its whole team first — nothing of it is left in `/proc` — and each helper
/// ends `cancelled`, stopped with its parent.
#[test]
fn stopping_a_coordinator_stops_its_whole_team_first() {
    require_root("the coordinator runs as nobody through the agent socket");
    let env = Env::new();
    let c = bin();
    let c = c.to_str().unwrap();
    let script = format!(
        "{c} spawn L2.h1 -- sleep 300 && {c} spawn L2.h2 -- sleep 300 && \
         {c} spawn L2.h3 -- sh -c '{c} spawn L2.h3.sub -- sleep 300 && exec sleep 300' && \
         echo fin\"\"ished; exec sleep 300"
    );
    let out = env.run(&[
        "spawn", "L2", "--user", "nobody", "--cwd", "/", "--", "sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    script_output(&env, "L2");
    let team = ["L2.h1", "L2.h2", "L2.h3", "L2.h3.sub"];
    eventually(Duration::from_secs(30), "the helper's own helper", || {
        env.json(&["ps"]).get("L2.h3.sub").map(|_| ())
    });
    let pids: Vec<i32> = std::iter::once("L2")
        .chain(team)
        .map(|id| pid_of(&env, id))
        .collect();
    for pid in &pids {
        assert_eq!(uid_of(*pid), 65534, "pid {pid} of the team is not nobody's");
    }

    let out = env.run(&["stop", "L2", "--stop-timeouts", "2,2,2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for pid in &pids {
        assert!(proc_stat(*pid).is_none(), "pid {pid} of the team is left");
    }
    for id in team {
        let s = env.json(&["status", id]);
        assert_eq!(s["persistent_status"], "cancelled", "{id}: {s}");
        let reason = s["end_reason"].as_str().unwrap();
        assert!(reason.contains("with its parent agent"), "{id}: {reason}");
    }
    let s = env.json(&["status", "L2"]);
    assert_eq!(s["persistent_status"], "cancelled", "{s}");
    env.finish();
}

/// A coordinator pauses and resumes its own helper (its CPU time stops, then
/// moves again, read in `/proc`), and may pause neither itself nor another
/// team's agent.
#[test]
fn a_coordinator_pauses_and_resumes_its_helpers_only() {
    let env = Env::new();
    let out = env.run(&["spawn", "other", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let go = env.dir.as_ref().unwrap().path().join("go");
    let c = bin();
    let c = c.to_str().unwrap();
    let script = format!(
        "{c} spawn C.busy -- sh -c 'while :; do :; done' >/dev/null; \
         {c} pause C.busy >/dev/null; echo pause_own=$?; \
         {c} pause C 2>&1; echo pause_self=$?; \
         {c} pause other 2>&1; echo pause_other=$?; \
         {c} pause --all 2>&1; echo pause_all=$?; \
         echo paus\"\"ed; while [ ! -e {go} ]; do sleep 0.05; done; \
         {c} resume C.busy >/dev/null; echo resume_own=$?; \
         echo fin\"\"ished; exec sleep 300",
        go = go.display()
    );
    let out = env.run(&["spawn", "C", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = PathBuf::from(
        env.json(&["status", "C"])["stdout_log"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let text = eventually(Duration::from_secs(30), "the pauses", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("paused\n").then_some(t)
    });
    assert!(text.contains("pause_own=0"), "{text}");
    for refused in ["pause_self", "pause_other", "pause_all"] {
        assert!(!text.contains(&format!("{refused}=0")), "{refused}: {text}");
    }
    assert!(
        text.contains("only agents below itself (C.…), not C"),
        "{text}"
    );
    let busy = pid_of(&env, "C.busy");
    let utime = || proc_stat(busy).unwrap()[11].parse::<u64>().unwrap();
    assert_eq!(env.json(&["status", "C.busy"])["state"], "paused");
    let before = utime();
    std::thread::sleep(Duration::from_millis(300)); // a window in which a running loop would use CPU
    assert_eq!(utime(), before, "the paused helper used CPU");
    assert_eq!(env.json(&["status", "other"])["state"], "running");

    std::fs::write(&go, "").unwrap();
    let text = script_output(&env, "C");
    assert!(text.contains("resume_own=0"), "{text}");
    eventually(DEADLINE, "the resumed helper to use CPU", || {
        (utime() > before).then_some(())
    });
    env.finish();
    assert!(proc_stat(busy).is_none());
}

/// A coordinator that ends while no daemon runs: the next daemon records its
/// end and stops the helpers it left (cause `parent`); nothing of the team
/// is left in `/proc`.
#[test]
fn a_coordinator_that_ended_while_no_daemon_ran_takes_its_team_along() {
    let env = Env::new();
    let go = env.dir.as_ref().unwrap().path().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 0",
        go.display()
    );
    let out = env.run(&["spawn", "lead", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    for h in ["lead.a", "lead.b.c"] {
        let out = env.run(&["spawn", h, "--", "sleep", "300"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let pids: Vec<i32> = ["lead", "lead.a", "lead.b.c"]
        .iter()
        .map(|id| pid_of(&env, id))
        .collect();
    env.crash_daemon();
    let reaper = InitReaper::new(pids.clone());
    std::fs::write(&go, "").unwrap();
    wait_gone(pids[0]);

    // The next command starts a daemon, which finds the coordinator ended.
    let s = env.json(&["status", "lead"]);
    assert_eq!(s["state"], "ended", "{s}");
    for pid in &pids[1..] {
        wait_gone(*pid);
    }
    for id in ["lead.a", "lead.b.c"] {
        let s = env.wait_for(id, "ended", |s| s["state"] == "ended");
        assert_eq!(s["persistent_status"], "cancelled", "{id}: {s}");
        let reason = s["end_reason"].as_str().unwrap();
        assert!(reason.contains("with its parent agent"), "{id}: {reason}");
    }
    drop(reaper);
    env.finish();
}

/// An agent may read its own team's budgets (they cap its spawns), not set
/// or remove them — nor read another team's; its spawns count against its
/// team's `max_agents`.
#[test]
fn an_agent_reads_its_teams_budgets_and_cannot_change_them() {
    let env = Env::new();
    for (team, max) in [("L7", "2"), ("L8", "5")] {
        let out = env.run(&["team", "set", team, "--max-agents", max, "--memory", "4096"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let c = bin();
    let c = c.to_str().unwrap();
    let script = format!(
        "{c} --json team show L7 | tr -d '\\n '; echo; echo show_own=$?; \
         {c} team show L8 2>&1; echo show_other=$?; \
         {c} team set L7 --max-agents 10 2>&1; echo set_own=$?; \
         {c} team rm L7 2>&1; echo rm_own=$?; \
         {c} team ls 2>&1; echo ls=$?; \
         {c} spawn L7.a -- sleep 300; echo spawn_a=$?; \
         {c} spawn L7.b -- sleep 300 2>&1; echo spawn_b=$?; \
         echo fin\"\"ished; exec sleep 300"
    );
    let out = env.run(&["spawn", "L7", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = script_output(&env, "L7");
    assert!(text.contains("show_own=0"), "{text}");
    assert!(text.contains("\"max_agents\":2"), "{text}");
    for refused in ["show_other", "set_own", "rm_own", "ls"] {
        assert!(
            !text.contains(&format!("{refused}=0")),
            "{refused} must be refused: {text}"
        );
    }
    for refusal in [
        "team L8 is neither one it belongs to nor within its own",
        "PUT /v1/teams/L7: a team's budgets are the owner's to set",
        "DELETE /v1/teams/L7: a team's budgets are the owner's to set",
        "GET /v1/teams is the owner's",
        "team L7 is at its budget of 2 live agents (2 live now)",
    ] {
        assert!(text.contains(refusal), "missing {refusal:?}: {text}");
    }
    assert!(text.contains("spawn_a=0"), "{text}");
    // The budgets are as the owner set them; the OS runs L7 and L7.a only.
    let team = env.json(&["team", "show", "L7"]);
    assert_eq!(team["budget"]["max_agents"], 2, "{team}");
    assert_eq!(team["usage"]["agents"], 2, "{team}");
    assert_eq!(agent_processes("L7.a").len(), 1);
    assert!(agent_processes("L7.b").is_empty());
    env.finish();
}

/// The README's worked example, as written: `examples/coordinator/lead.sh`
/// starts three helpers of its own; the team's memory budget stops the
/// runaway (and only it); a pause freezes the team, a resume lets it go on;
/// stopping the coordinator leaves nothing of the team in `/proc`.
#[test]
fn the_coordinator_example_runs_as_the_readme_says() {
    let bin_dir = bin().parent().unwrap().to_str().unwrap().to_owned();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let env = Env::new().with_var("PATH", &path);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lead = repo.join("examples/coordinator/lead.sh");
    let out = env.run(&[
        "team",
        "set",
        "lead",
        "--memory",
        "120",
        "--max-agents",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["spawn", "lead", "--", "sh", lead.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let s = eventually(Duration::from_secs(30), "the runaway to be stopped", || {
        // Not there until the coordinator has spawned it.
        let out = env.run(&["--json", "status", "lead.helper3"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.success() && s["state"] == "ended").then_some(s)
    });
    assert_eq!(s["persistent_status"], "failed", "{s}");
    let reason = s["end_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("team lead over its memory budget:") && reason.contains("lead.helper3"),
        "{reason}"
    );
    let helpers = [pid_of(&env, "lead.helper1"), pid_of(&env, "lead.helper2")];
    for pid in helpers {
        assert!(
            proc_stat(pid).is_some_and(|s| s[0] != "Z"),
            "helper {pid} was stopped too"
        );
    }

    let out = env.run(&["pause", "lead.*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for id in ["lead", "lead.helper1", "lead.helper2"] {
        assert_eq!(env.json(&["status", id])["state"], "paused", "{id}");
    }
    let out = env.run(&["resume", "lead.*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lead_pid = pid_of(&env, "lead");
    let out = env.run(&["stop", "lead"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for pid in helpers.iter().chain([&lead_pid]) {
        assert!(proc_stat(*pid).is_none(), "pid {pid} of the team is left");
    }
    for id in ["lead.helper1", "lead.helper2"] {
        assert_eq!(
            env.json(&["status", id])["persistent_status"],
            "cancelled",
            "{id}"
        );
    }
    env.finish();
}

/// Reading a team above it, an agent sees the team's budget and usage but
/// only the members within its own subtree: not its siblings.
#[test]
fn an_agent_reading_a_team_above_it_sees_no_sibling() {
    let env = Env::new();
    let out = env.run(&["team", "set", "T9", "--memory", "4096"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for id in ["T9", "T9.sib"] {
        let out = env.run(&["spawn", id, "--", "sleep", "300"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let c = bin();
    let c = c.to_str().unwrap();
    let script = format!(
        "{c} spawn T9.me.h -- sleep 300 >/dev/null; {c} --json team show T9 | tr -d '\\n '; echo; \
         echo fin\"\"ished; exec sleep 300"
    );
    let out = env.run(&["spawn", "T9.me", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = script_output(&env, "T9.me");
    let line = text.lines().find(|l| l.starts_with('{')).expect(&text);
    let team: serde_json::Value = serde_json::from_str(line).unwrap();
    let members: Vec<&str> = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["T9.me", "T9.me.h"], "{team}");
    assert_eq!(team["usage"]["agents"], 4, "{team}");
    // The owner sees them all.
    let all = env.json(&["team", "show", "T9"]);
    assert_eq!(all["members"].as_array().unwrap().len(), 4, "{all}");
    env.finish();
}
