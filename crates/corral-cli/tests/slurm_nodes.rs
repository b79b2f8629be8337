//! Agents on a Slurm cluster of several nodes: the 3-node cluster that
//! `scripts/slurm-local.sh start --nodes 3` runs on this machine, each node
//! (n1, n2, n3) a `slurmd` in a network and UTS namespace of its own. What
//! corral says about where a job runs is checked against the engine
//! (`squeue`) and the kernel (`/proc/PID/ns/net` against the node's
//! namespace, the hostname in its UTS namespace).
//!
//! These tests need that cluster: without it they fail, saying how to start
//! it (`.ci/run` starts it, and leaves these tests out, saying so in its
//! summary, only where it cannot). They reach it with `SLURM_CONF` (the
//! cluster's own config), which the daemon their commands start inherits;
//! the single-node cluster of `tests/slurm.rs` runs beside it, untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, Env};
use serde_json::Value;

/// Jobs take up to a second or two to be scheduled, cancelled and cleaned up.
const SLURM_DEADLINE: Duration = Duration::from_secs(30);
/// The cluster's nodes.
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// The controller's address on the cluster's bridge: this host, as the nodes see it.
const CONTROLLER: &str = "10.77.0.1";
const START: &str =
    "bash scripts/slurm-local.sh install && bash scripts/slurm-local.sh start --nodes 3";

/// The multi-node cluster's slurm.conf.
fn conf() -> PathBuf {
    let dir = std::env::var_os("SLURM_LOCAL_MULTI_DIR")
        .map_or_else(|| PathBuf::from("/run/corral-slurm-multi"), PathBuf::from);
    dir.join("slurm.conf")
}

/// A Slurm client command for the multi-node cluster, bounded in time.
fn slurm(args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("5")
        .args(args)
        .env("SLURM_CONF", conf())
        .output()
        .unwrap()
}

/// An env whose commands (and daemon) use the 3-node cluster; fails, saying
/// how to start it, unless n1, n2 and n3 all accept work.
fn cluster() -> Env {
    assert!(
        conf().exists(),
        "these tests need the 3-node Slurm cluster ({} is missing): {START}",
        conf().display()
    );
    let out = slurm(&["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"]);
    let states = String::from_utf8_lossy(&out.stdout).into_owned();
    // Busy states count: other tests' jobs may be running or completing.
    let usable = |node: &str| {
        states.lines().any(|l| {
            l.split_once(' ').is_some_and(|(n, s)| {
                n == node
                    && ["idle", "mixed", "allocated", "completing"]
                        .iter()
                        .any(|ok| s.starts_with(ok))
            })
        })
    };
    assert!(
        NODES.iter().all(|n| usable(n)),
        "these tests need the 3-node Slurm cluster, nodes n1 n2 n3 up (sinfo: {:?}, {:?}): {START}",
        states.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Env::new().with_var("SLURM_CONF", conf().to_str().unwrap())
}

/// An agent id private to this test process.
fn id(name: &str) -> String {
    format!("t{}.{name}", std::process::id())
}

/// The nodes share this host's process table: a job's processes are here too.
fn procs_of(id: &str) -> Vec<i32> {
    common::agent_processes(id)
}

/// Waits until no process of agent `id` is left on any node.
fn assert_nothing_left(id: &str) {
    common::assert_nothing_left(id, SLURM_DEADLINE);
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + SLURM_DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The engine's state word and node for a job (`None` once it has forgotten it).
fn engine_job(job_id: &str) -> Option<(String, String)> {
    let out = slurm(&["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %N"]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (state, node) = text.split_once(' ').unwrap_or((&text, ""));
    (!state.is_empty()).then(|| (state.to_owned(), node.to_owned()))
}

/// Waits until the engine no longer runs the job.
fn assert_job_ended(job_id: &str) {
    wait_until(&format!("the engine to end job {job_id}"), || {
        engine_job(job_id).is_none_or(|(s, _)| s != "RUNNING" && s != "COMPLETING")
    });
}

/// The network namespace a path names: (device, inode) of the nsfs file.
fn netns(path: &str) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.dev(), m.ino())
}

/// A node's network namespace, as the cluster script made it.
fn node_netns(node: &str) -> (u64, u64) {
    netns(&format!("/run/netns/corral-{node}"))
}

/// The hostname in `pid`'s UTS namespace.
fn hostname_of(pid: i32) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn job_id(status: &Value) -> String {
    status["placement"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {status}"))
        .to_owned()
}

/// `GET path` on the daemon's socket (HTTP/1.0: the answer ends when the
/// connection does), its JSON body.
fn get(env: &Env, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(env.state.join("corral.sock")).unwrap();
    write!(sock, "GET {path} HTTP/1.0\r\nHost: corral\r\n\r\n").unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn ids(listing: &Value) -> BTreeSet<String> {
    listing.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn agents_pinned_to_each_node_run_there_and_ps_node_lists_them() {
    let env = cluster();
    let local = id("local");
    let out = env.run(&["spawn", &local, "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let on: BTreeMap<&str, String> = NODES.iter().map(|n| (*n, id(&format!("on.{n}")))).collect();
    for (node, agent) in &on {
        let out = env.run(&[
            "spawn", agent, "--slurm", "--nodes", node, "--", "sleep", "300",
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(&format!(" on {node},")), "{said}");
    }

    let ps = env.json(&["ps"]);
    let mut namespaces = BTreeSet::new();
    let mut jobs = Vec::new();
    for (node, agent) in &on {
        let s = &ps[agent];
        // corral's word: its status, and the status and ps text.
        assert_eq!(s["placement"]["node"], *node, "{s}");
        assert_eq!(s["persistent_status"], "running", "{s}");
        let job = job_id(s);
        let text = env.run(&["status", agent]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.lines().any(|l| l.starts_with("placement")
                && l.ends_with(&format!("slurm job {job} on {node}"))),
            "{text}"
        );
        // The engine's word.
        assert_eq!(
            engine_job(&job),
            Some(("RUNNING".to_owned(), (*node).to_owned()))
        );
        // The kernel's: the job's process is in that node's network and UTS
        // namespaces, under the node's slurmstepd.
        wait_until(&format!("the process of {agent}"), || {
            procs_of(agent).len() == 1
        });
        let pid = procs_of(agent)[0];
        assert_eq!(
            netns(&format!("/proc/{pid}/ns/net")),
            node_netns(node),
            "{agent} (pid {pid}) is not in {node}'s network namespace"
        );
        assert_eq!(hostname_of(pid), *node);
        let parent: i32 = common::proc_stat(pid).unwrap()[1].parse().unwrap();
        assert!(
            common::cmdline(parent).contains("slurmstepd"),
            "the job's parent is {}",
            common::cmdline(parent)
        );
        namespaces.insert(node_netns(node));
        jobs.push(job);
    }
    assert_eq!(namespaces.len(), 3, "three nodes, three namespaces");
    assert!(
        !namespaces.contains(&netns("/proc/self/ns/net")),
        "no node shares this host's network namespace"
    );

    // ps --node: only the agents placed on those nodes (not the local one).
    assert_eq!(
        ids(&env.json(&["ps", "--node", "n2"])),
        BTreeSet::from([on["n2"].clone()])
    );
    assert_eq!(
        ids(&env.json(&["ps", "--node", "n1", "--node", "n3"])),
        BTreeSet::from([on["n1"].clone(), on["n3"].clone()])
    );
    let table = env.run(&["ps", "--node", "n2", "--wide"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.lines().count(), 2, "a title and one row: {table}");
    assert!(
        table.contains(&on["n2"]) && table.contains(" on n2"),
        "{table}"
    );
    let none = env.run(&["ps", "--node", "n9"]);
    assert_eq!(String::from_utf8_lossy(&none.stdout), "no agent matches\n");
    // The daemon filters: the listing's node parameter, comma-separated.
    let listing = get(&env, "/v1/agents?node=n3,n9&fields=state");
    assert_eq!(ids(&listing), BTreeSet::from([on["n3"].clone()]));

    let stop = env.json(&["stop", "--all", "--stop-timeouts", "2,2,2"]);
    assert_eq!(stop.as_array().unwrap().len(), 4, "{stop}");
    for agent in on.values().chain([&local]) {
        assert_eq!(
            env.json(&["status", agent])["persistent_status"],
            "cancelled"
        );
        assert_nothing_left(agent);
    }
    for job in &jobs {
        assert_job_ended(job);
    }
    env.finish();
}

#[test]
fn agents_too_big_to_share_a_node_land_on_different_nodes() {
    let env = cluster();
    // Each node has 256 CPUs: two 200-CPU jobs never fit on one.
    let prefix = id("big");
    let out = env.run(&[
        "spawn", &prefix, "--count", "3", "--slurm", "--cpus", "200", "--", "sleep", "300",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let agents: Vec<String> = (1..=3).map(|i| format!("{prefix}.{i}")).collect();
    let mut placed = BTreeMap::new();
    wait_until("three running jobs", || {
        let ps = env.json(&["ps", &format!("{prefix}.*")]);
        placed = agents
            .iter()
            .filter(|a| ps[a.as_str()]["persistent_status"] == "running")
            .map(|a| {
                let s = &ps[a.as_str()];
                (
                    a.clone(),
                    (
                        job_id(s),
                        s["placement"]["node"].as_str().unwrap_or("").to_owned(),
                    ),
                )
            })
            .collect();
        placed.len() == 3
    });
    let nodes: BTreeSet<&str> = placed.values().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(NODES), "{placed:?}");
    for (agent, (job, node)) in &placed {
        assert_eq!(
            engine_job(job),
            Some(("RUNNING".to_owned(), node.clone())),
            "{agent}"
        );
        // Each node's listing has its one agent.
        assert_eq!(
            ids(&env.json(&["ps", &format!("{prefix}.*"), "--node", node])),
            BTreeSet::from([agent.clone()])
        );
    }
    let stop = env.json(&["stop", &format!("{prefix}.*"), "--stop-timeouts", "2,2,2"]);
    assert_eq!(stop.as_array().unwrap().len(), 3, "{stop}");
    for (agent, (job, _)) in &placed {
        assert_nothing_left(agent);
        assert_job_ended(job);
    }
    env.finish();
}

#[test]
fn an_agent_on_a_node_reaches_the_daemon_over_the_bridge_not_the_hosts_loopback() {
    let env = cluster();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    // The daemon serves TCP on the controller's bridge address, which the
    // nodes reach; something also listens on this host's loopback.
    let port = std::net::TcpListener::bind((CONTROLLER, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("{CONTROLLER}:{port}");
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = loopback.local_addr().unwrap().port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", lport)).is_ok());
    let mut daemon = env
        .cmd(&[
            "--token-file",
            token.to_str().unwrap(),
            "daemon",
            "--listen",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + DEADLINE;
    while !env.run(&["--no-autostart", "summary"]).status.success() {
        assert!(Instant::now() < end, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(20));
    }

    // On n2, the job reports progress through CORRAL_URL (progress is taken
    // once its run is verified: until then, it tries again), then tries this
    // host's loopback listener.
    let a = id("caller");
    let script = format!(
        "until '{bin}' progress 60 --message \"from $(hostname) via $CORRAL_URL\"; do sleep 0.2; done; \
         if bash -c ': </dev/tcp/127.0.0.1/{lport}' 2>/dev/null; then echo loopback reached; \
         else echo loopback refused; fi; exec sleep 300",
        bin = common::bin().display()
    );
    let out = env.run(&[
        "spawn", &a, "--slurm", "--nodes", "n2", "--", "sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let s = env.wait_for(&a, "progress from the node", |s| s["progress"] == 60);
    assert_eq!(s["progress_message"], format!("from n2 via {addr}"), "{s}");
    let mut said = String::new();
    wait_until("the loopback check", || {
        said = String::from_utf8_lossy(&env.run(&["logs", &a]).stdout).into_owned();
        said.contains("loopback")
    });
    assert_eq!(said.trim(), "loopback refused", "n2's 127.0.0.1 is its own");

    let job = job_id(&s);
    let report = env.json(&["stop", &a, "--stop-timeouts", "2,2,2"]);
    assert_eq!(report[0]["persistent_status"], "cancelled", "{report}");
    assert_nothing_left(&a);
    assert_job_ended(&job);
    // SAFETY: kill(2) on our own unreaped child's pid.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
    drop(loopback);
    env.finish();
}

/// `corral top` in a tmux window of its own; its screen once `ok` holds.
fn top_screen(env: &Env, ok: impl Fn(&str) -> bool) -> String {
    let dir = env.dir.as_ref().unwrap().path();
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(dir.join("tmux.sock"))
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .output()
    };
    let command = format!(
        "exec '{}' --no-autostart --state-dir '{}' top",
        common::bin().display(),
        env.state.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "20",
        &command,
    ]);
    assert!(
        started.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs tmux (Debian/Ubuntu: apt-get install tmux): {started:?}"
    );
    let end = Instant::now() + DEADLINE;
    let screen = loop {
        let out = tmux(&["capture-pane", "-p", "-t", "top"]).unwrap();
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if ok(&screen) || Instant::now() >= end {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = tmux(&["kill-session", "-t", "top"]);
    let _ = tmux(&["kill-server"]);
    screen
}

#[test]
fn top_has_a_node_column_while_agents_are_on_nodes() {
    let env = cluster();
    let local = id("here");
    let out = env.run(&["spawn", &local, "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Only local agents: no NODE column.
    let screen = top_screen(&env, |s| s.contains(&local));
    assert!(
        screen.contains(&local) && !screen.contains("NODE"),
        "{screen}"
    );

    let (a1, a3) = (id("top.n1"), id("top.n3"));
    for (agent, node) in [(&a1, "n1"), (&a3, "n3")] {
        let out = env.run(&[
            "spawn", agent, "--slurm", "--nodes", node, "--", "sleep", "300",
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    let row = |screen: &str, agent: &str| -> Vec<String> {
        screen
            .lines()
            .find(|l| l.contains(agent))
            .unwrap_or_default()
            .trim_matches(|c| c == '│' || c == ' ' || c == '▶')
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let screen = top_screen(&env, |s| {
        s.contains("NODE") && s.contains(&a1) && s.contains(&a3)
    });
    let titles = screen
        .lines()
        .find(|l| l.contains(" ID "))
        .unwrap_or_default()
        .to_owned();
    assert!(titles.contains(" PID NODE "), "{screen}");
    // ID, PID, NODE: the node a job runs on, `-` on this host.
    assert_eq!(row(&screen, &a1)[1..3], ["-", "n1"], "{screen}");
    assert_eq!(row(&screen, &a3)[1..3], ["-", "n3"], "{screen}");
    assert_eq!(row(&screen, &local)[2], "-", "{screen}");

    let stop = env.json(&["stop", "--all", "--stop-timeouts", "2,2,2"]);
    assert_eq!(stop.as_array().unwrap().len(), 3, "{stop}");
    for agent in [&a1, &a3, &local] {
        assert_nothing_left(agent);
    }
    env.finish();
}
