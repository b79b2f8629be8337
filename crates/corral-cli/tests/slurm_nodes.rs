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

/// Live (non-zombie) processes in `node`'s network namespace: its slurmd,
/// slurmstepd and job processes, with their start times (field 22 of stat).
fn node_processes(node: &str) -> Vec<(i32, String, u64)> {
    let ns = node_netns(node);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = common::proc_stat(pid)?;
            let start = stat.get(19)?.parse().ok()?;
            let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (stat[0] != "Z" && (meta.dev(), meta.ino()) == ns)
                .then(|| (pid, comm.trim().to_owned(), start))
        })
        .collect()
}

/// SIGKILL to `pid` if it is still the process that started at `start`
/// (through a pidfd: the check and the signal name the same process).
fn kill_identified(pid: i32, start: u64) {
    // SAFETY: plain syscalls on an integer pid and a pidfd this function owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return; // gone already
    }
    let same = common::proc_stat(pid).and_then(|s| s.get(19).and_then(|t| t.parse::<u64>().ok()))
        == Some(start);
    if same {
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
    unsafe { libc::close(fd) };
}

/// The node dies, as a machine that loses power: its slurmd and every
/// slurmstepd first (so nothing reports the jobs' ends to the controller),
/// then the jobs' processes, which a dead node takes with it. corral does
/// not kill them: on a real cluster it could not even see them; these test
/// nodes only share this host's process table. Waits until none is left in
/// the process table (PID 1, their reaper, is slow here).
fn kill_node(node: &str) {
    let all = node_processes(node);
    assert!(
        all.iter().any(|(_, comm, _)| comm == "slurmd"),
        "{node} has no slurmd: {all:?}"
    );
    let (daemons, jobs): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|(_, comm, _)| comm == "slurmd" || comm == "slurmstepd");
    for (pid, _, start) in daemons.iter().chain(&jobs) {
        kill_identified(*pid, *start);
    }
    wait_until(&format!("every process of {node} to be gone"), || {
        all.iter().all(|(pid, _, start)| {
            common::proc_stat(*pid)
                .is_none_or(|s| s.get(19).and_then(|t| t.parse().ok()) != Some(*start))
        })
    });
}

/// Brings the node back when dropped, also when a test fails midway (the
/// next tests need it).
struct NodeBack(String);

impl Drop for NodeBack {
    fn drop(&mut self) {
        start_node(&self.0);
    }
}

/// `env.wait_for` with the engine's pace (a node's failure takes seconds to be seen).
fn wait_status(env: &Env, agent: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut s = Value::Null;
    wait_until(what, || {
        s = env.json(&["status", agent]);
        pred(&s)
    });
    s
}

/// Brings a failed node back: its slurmd again, resumed (the cluster script).
fn start_node(node: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm-local.sh");
    // The node's slurmd outlives this test, as the cluster's other daemons
    // do: the script starts it while this process is no subreaper, so that
    // PID 1, not this test's clean-up, inherits it when the script exits.
    // SAFETY: prctl on this process's own attribute.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    let out = Command::new("bash")
        .arg(script)
        .args(["start-node", node])
        .output();
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "start-node {node}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
}

/// The node a process runs on: the node whose network namespace it is in.
fn node_of(pid: i32) -> Option<&'static str> {
    let ns = netns(&format!("/proc/{pid}/ns/net"));
    NODES.iter().copied().find(|n| node_netns(n) == ns)
}

/// The agent's one process, once it runs, and the node it runs on.
fn the_process(agent: &str) -> (i32, &'static str) {
    let mut pids = Vec::new();
    wait_until(&format!("the one process of {agent}"), || {
        pids = procs_of(agent);
        pids.len() == 1
    });
    let node = node_of(pids[0]).unwrap_or_else(|| panic!("{agent}'s process is on no node"));
    (pids[0], node)
}

/// Events of `agent` of these kinds, in order.
fn events_of(env: &Env, agent: &str, kinds: &[&str]) -> Vec<Value> {
    let out = env.run(&["events", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["agent_id"] == agent && kinds.iter().any(|k| e["kind"] == *k))
        .collect()
}

#[test]
fn a_failed_node_ends_its_jobs_node_fail_the_restart_policy_moves_on_and_the_node_comes_back() {
    let env = cluster();
    // Not pinned: its next run goes wherever the engine has room.
    let mover = id("failover");
    let out = env.run(&[
        "spawn",
        &mover,
        "--slurm",
        "--restart",
        "on-failure",
        "--backoff",
        "0.2,1",
        "--",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let first = env.json(&["status", &mover]);
    let dead = first["placement"]["node"].as_str().unwrap().to_owned();
    let old_job = job_id(&first);
    // Pinned to the same node, never restarted.
    let pinned = id("pinned");
    let out = env.run(&[
        "spawn", &pinned, "--slurm", "--nodes", &dead, "--", "sleep", "300",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let pinned_job = job_id(&env.json(&["status", &pinned]));
    let (old_pid, on) = the_process(&mover);
    assert_eq!(on, dead);
    assert_eq!(the_process(&pinned).1, dead);

    let revive = NodeBack(dead.clone());
    kill_node(&dead);
    // The controller finds the node dead after SlurmdTimeout and ends its jobs NODE_FAIL.
    let again = wait_status(&env, &mover, "a second run, running", |s| {
        s["run"] == 2 && s["persistent_status"] == "running"
    });
    let live = again["placement"]["node"].as_str().unwrap().to_owned();
    assert_ne!(live, dead, "{again}");
    let new_job = job_id(&again);
    assert_ne!(new_job, old_job);
    assert_eq!(again["restarts"], 1, "{again}");
    // The first run, as corral recorded it.
    let runs = env.json(&["runs", &mover]);
    let run1 = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run"] == 1)
        .unwrap_or_else(|| panic!("{runs}"));
    assert_eq!(run1["persistent_status"], "failed", "{run1}");
    let why = run1["end_reason"].as_str().unwrap_or("");
    assert!(
        why.contains(&format!("the job's node {dead} failed (NODE_FAIL)")),
        "{run1}"
    );
    let p = wait_status(&env, &pinned, "the pinned agent to end", |s| {
        s["state"] == "ended"
    });
    assert_eq!(p["persistent_status"], "failed", "{p}");
    assert_eq!(p["restarts"], 0, "restart never: {p}");
    assert!(
        p["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("node {dead} failed (NODE_FAIL)"))),
        "{p}"
    );
    // The engine's word, and the kernel's.
    for job in [&old_job, &pinned_job] {
        let state = engine_job(job).map(|(s, _)| s);
        let sacct = slurm(&["sacct", "-c", "-n", "-P", "-j", job, "--format=State"]);
        let logged = String::from_utf8_lossy(&sacct.stdout).into_owned();
        assert!(
            state.as_deref() == Some("NODE_FAIL") || logged.contains("NODE_FAIL"),
            "job {job}: squeue {state:?}, sacct {logged:?}"
        );
    }
    assert_eq!(
        engine_job(&new_job),
        Some(("RUNNING".to_owned(), live.clone()))
    );
    let (new_pid, on) = the_process(&mover);
    assert_eq!(on, live);
    assert_ne!(new_pid, old_pid);
    assert!(common::proc_stat(old_pid).is_none_or(|s| s[0] == "Z"));
    assert_nothing_left(&pinned);

    // The node comes back and takes work again.
    // (scripts/slurm-local.sh start-node: its slurmd again, and resume.)
    drop(revive);
    let back = id("back");
    let out = env.run(&[
        "spawn", &back, "--slurm", "--nodes", &dead, "--", "sleep", "300",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let s = env.json(&["status", &back]);
    assert_eq!(s["placement"]["node"], dead.as_str(), "{s}");
    assert_eq!(the_process(&back).1, dead);

    let stop = env.json(&["stop", "--all", "--stop-timeouts", "2,2,2"]);
    assert_eq!(stop.as_array().unwrap().len(), 2, "the live ones: {stop}");
    for agent in [&mover, &pinned, &back] {
        assert_nothing_left(agent);
    }
    assert_job_ended(&new_job);
    env.finish();
}

#[test]
fn a_requeued_job_takes_the_same_run_back_to_starting_then_running() {
    let env = cluster();
    let a = id("requeued");
    let out = env.run(&["spawn", &a, "--slurm", "--requeue", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let s = env.json(&["status", &a]);
    let job = job_id(&s);
    let node = s["placement"]["node"].as_str().unwrap().to_owned();
    let (first_pid, on) = the_process(&a);
    assert_eq!(on, node);

    let out = slurm(&["scontrol", "requeue", &job]);
    assert!(
        out.status.success(),
        "scontrol requeue: {}",
        common::stderr(&out)
    );
    let s = wait_status(&env, &a, "the run back to starting", |s| {
        s["state"] == "starting"
    });
    assert_eq!(s["run"], 1, "the same run: {s}");
    assert_eq!(s["persistent_status"], "spawning", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    assert_eq!(s["placement"]["job_id"], job.as_str(), "the same job: {s}");
    assert!(s["placement"]["node"].is_null(), "{s}");
    // The engine queued it again; its processes on the node are gone.
    wait_until("the engine to queue the job again", || {
        engine_job(&job).is_some_and(|(st, _)| st == "PENDING")
    });
    assert_nothing_left(&a);
    assert!(common::proc_stat(first_pid).is_none_or(|s| s[0] == "Z"));
    let requeued = events_of(&env, &a, &["job_requeued"]);
    assert_eq!(requeued.len(), 1, "{requeued:?}");
    assert_eq!(requeued[0]["job_id"], job.as_str());
    assert_eq!(requeued[0]["node"], node.as_str());
    assert_eq!(requeued[0]["run"], 1);

    // Slurm holds a requeued job (BeginTime, ~2 min): let it start now, on
    // another node (the node it left may refuse the same job id again until
    // its job credential expires, which the hold outlasts).
    let out = slurm(&[
        "scontrol",
        "update",
        &format!("jobid={job}"),
        "starttime=now",
        &format!("excnodelist={node}"),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let s = wait_status(&env, &a, "the run running again", |s| {
        s["state"] == "running" && s["persistent_status"] == "running"
    });
    assert_eq!(s["run"], 1, "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    let left = node;
    let node = s["placement"]["node"].as_str().unwrap().to_owned();
    assert_ne!(node, left, "{s}");
    assert_eq!(engine_job(&job), Some(("RUNNING".to_owned(), node.clone())));
    let (pid, on) = the_process(&a);
    assert_eq!(on, node);
    assert_ne!(pid, first_pid);
    // The run's states, as its events say: running, starting, running.
    let states: Vec<String> = events_of(&env, &a, &["state"])
        .iter()
        .filter_map(|e| e["state"].as_str().map(str::to_owned))
        .collect();
    let tail: Vec<&str> = states
        .iter()
        .map(String::as_str)
        .skip_while(|s| *s != "running")
        .collect();
    assert_eq!(tail, ["running", "starting", "running"], "{states:?}");

    let report = env.json(&["stop", &a, "--stop-timeouts", "2,2,2"]);
    assert_eq!(report[0]["persistent_status"], "cancelled", "{report}");
    assert_nothing_left(&a);
    assert_job_ended(&job);
    env.finish();
}

#[test]
fn logs_of_an_agent_on_a_node_are_read_through_the_api() {
    let env = cluster();
    let a = id("talks");
    let script = "for i in 1 2 3 4 5; do echo \"line $i from $(hostname)\"; done; \
                  echo \"oops on $(hostname)\" >&2; exec sleep 300";
    let out = env.run(&[
        "spawn", &a, "--slurm", "--nodes", "n2", "--", "sh", "-c", script,
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (_, on) = the_process(&a);
    assert_eq!(on, "n2");
    let want: String = (1..=5).map(|i| format!("line {i} from n2\n")).collect();
    let mut got = String::new();
    wait_until("the agent's five lines", || {
        got = String::from_utf8_lossy(&env.run(&["logs", &a]).stdout).into_owned();
        got == want
    });
    let err = env.run(&["logs", &a, "--stderr"]);
    assert_eq!(String::from_utf8_lossy(&err.stdout), "oops on n2\n");
    // What the API served is what the job wrote, in the run's log file.
    let s = env.json(&["status", &a]);
    let file = std::fs::read_to_string(s["stdout_log"].as_str().unwrap()).unwrap();
    assert_eq!(file, want);

    let report = env.json(&["stop", &a, "--stop-timeouts", "2,2,2"]);
    assert_eq!(report[0]["persistent_status"], "cancelled", "{report}");
    assert_nothing_left(&a);
    env.finish();
}

#[test]
fn a_crashed_daemon_readopts_jobs_on_every_node_and_learns_each_ones_exit() {
    let env = cluster();
    let go = env.state.parent().unwrap().join("go");
    let mut stays = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for (i, node) in NODES.iter().enumerate() {
        let (s, e) = (id(&format!("stays.{node}")), id(&format!("ends.{node}")));
        let code = 11 + i;
        let script = format!(
            "while [ ! -e {} ]; do sleep 0.1; done; exit {code}",
            go.display()
        );
        for (agent, cmd) in [
            (&s, vec!["sleep", "300"]),
            (&e, vec!["sh", "-c", script.as_str()]),
        ] {
            let mut args = vec!["spawn", agent.as_str(), "--slurm", "--nodes", node, "--"];
            args.extend(cmd);
            let out = env.run(&args);
            assert!(out.status.success(), "{}", common::stderr(&out));
        }
        stays.insert(*node, s);
        ends.insert(*node, (e, code));
    }
    let before = env.json(&["ps"]);
    for (node, agent) in &stays {
        assert_eq!(the_process(agent).1, *node);
    }
    let crashed = env.crash_daemon();
    // While no daemon runs, one agent ends on each node, each with its own code.
    std::fs::write(&go, b"").unwrap();
    for (agent, _) in ends.values() {
        let job = job_id(&before[agent.as_str()]);
        wait_until(&format!("job {job} to end"), || {
            engine_job(&job).is_none_or(|(s, _)| s == "FAILED")
        });
        assert_nothing_left(agent);
    }

    let after = env.json(&["ps"]);
    assert_ne!(env.daemon_pid(), crashed);
    for (node, agent) in &stays {
        let s = &after[agent.as_str()];
        assert_eq!(s["persistent_status"], "running", "{s}");
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(
            s["placement"]["job_id"],
            before[agent.as_str()]["placement"]["job_id"]
        );
        assert_eq!(s["placement"]["node"], *node, "{s}");
        assert_eq!(the_process(agent).1, *node);
        assert_eq!(
            engine_job(&job_id(s)),
            Some(("RUNNING".to_owned(), (*node).to_owned()))
        );
    }
    for (node, (agent, code)) in &ends {
        let s = &after[agent.as_str()];
        assert_eq!(s["persistent_status"], "failed", "{s}");
        assert_eq!(s["exit_code"], *code, "the real code, not lost: {s}");
        assert_eq!(s["placement"]["node"], *node, "{s}");
    }

    let stop = env.json(&["stop", "--all", "--stop-timeouts", "2,2,2"]);
    assert_eq!(stop.as_array().unwrap().len(), 3, "the live ones: {stop}");
    for agent in stays.values() {
        assert_nothing_left(agent);
    }
    env.finish();
}
