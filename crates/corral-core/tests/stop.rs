//! Staged stops of whole process trees, checked against `/proc`: nothing an
//! agent started survives its stop, and no zombie is left.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{Cleanup, proc_stat, request, wait_gone, wait_lines, wait_status};
use corral_core::{
    AgentId, CleanupOptions, Config, Error, PersistentStatus, Selector, StopStage, Supervisor,
};

/// A TERM-ignoring agent: the ignored disposition is inherited by its `sleep`s too.
const STUBBORN: &[&str] = &[
    "sh",
    "-c",
    "trap '' TERM; echo ready; while :; do sleep 0.05; done",
];

both_containments!(
    a_cooperative_agent_stops_at_the_first_term_in_well_under_a_second,
    a_term_ignoring_agent_dies_in_the_kill_stage,
    force_skips_the_term_stages,
    a_whole_tree_with_escaped_grandchildren_leaves_nothing,
    twenty_stubborn_agents_stop_in_about_one_grace_period,
    a_selector_stops_only_its_subtree_and_unknown_ids_are_errors,
    an_agent_that_exits_on_its_own_during_a_stop_is_cancelled_once,
    what_a_main_process_leaves_behind_is_stopped_before_its_run_ends,
);

/// Starts a TERM-ignoring agent and waits until its trap is set.
async fn spawn_stubborn(sup: &Supervisor, id: &str) -> corral_core::SpawnResponse {
    let r = sup.spawn_agent(request(id, STUBBORN, 50)).await.unwrap();
    wait_lines(&r.stdout_log, 1).await;
    r
}

/// A subreaping supervisor in a temp dir, and the guard that leaves nothing behind.
/// Keep all three alive for the whole test (the guard is dropped last).
async fn setup(cgroups: bool) -> (Cleanup, tempfile::TempDir, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.cgroups = cgroups;
    config.sample_interval = Duration::from_millis(200);
    let sup = Supervisor::open(config).await.unwrap();
    let cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    (cleanup, dir, sup)
}

/// The cgroup the OS has `pid` in (its `0::` line).
fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

/// Checks, against /proc, that the agent is contained as its status says, and
/// returns its leaf directory when it is in a cgroup.
fn check_containment(
    sup: &Supervisor,
    id: &str,
    pid: i32,
    cgroups: bool,
) -> Option<std::path::PathBuf> {
    let s = sup.get_agent_status(&AgentId::new(id).unwrap()).unwrap();
    let cg = cgroup_of(pid);
    if s.containment == "cgroup" {
        assert!(cgroups, "cgroups were disabled");
        let leaf_name = cg.rsplit('/').next().unwrap_or_default();
        assert!(
            leaf_name.starts_with(&format!("{id}.")),
            "{pid} is in {cg}, not its own leaf"
        );
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .map(|l| l.split_whitespace().nth(4).unwrap().to_owned())
            .unwrap();
        Some(std::path::PathBuf::from(format!("{mount}{cg}")))
    } else {
        assert_eq!(s.containment, "process-group");
        if cgroups {
            eprintln!("no usable cgroup2 hierarchy here: the cgroup variant ran the fallback");
        }
        None
    }
}

fn one(id: &str) -> Selector {
    Selector::One(AgentId::new(id).unwrap())
}

fn staged(t: f64) -> CleanupOptions {
    CleanupOptions {
        force: false,
        stop_timeouts: Some(vec![t, t, t]),
    }
}

async fn a_cooperative_agent_stops_at_the_first_term_in_well_under_a_second(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = sup
        .spawn_agent(request("coop", &["sleep", "300"], 50))
        .await
        .unwrap();
    let reports = sup
        .cleanup(Some(&one("coop")), CleanupOptions::default())
        .await
        .unwrap();
    let rep = &reports[0];
    assert_eq!(rep.stage, StopStage::Term);
    assert!(rep.duration_ms < 500.0, "{rep:?}");
    assert_eq!(rep.exit_signal, Some(15));
    assert_eq!(rep.persistent_status, PersistentStatus::Cancelled);
    assert!(
        proc_stat(r.pid.unwrap()).is_none(),
        "gone when the stop returns"
    );
    let s = sup
        .get_agent_status(&AgentId::new("coop").unwrap())
        .unwrap();
    assert_eq!(s.persistent_status, PersistentStatus::Cancelled);
    assert!(s.end_reason.unwrap().contains("stopped on request"));
}

async fn a_term_ignoring_agent_dies_in_the_kill_stage(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = spawn_stubborn(&sup, "stubborn").await;
    let began = Instant::now();
    let reports = sup
        .cleanup(Some(&one("stubborn")), staged(0.3))
        .await
        .unwrap();
    let took = began.elapsed();
    let rep = &reports[0];
    assert_eq!(rep.stage, StopStage::Kill, "{rep:?}");
    assert_eq!(rep.exit_signal, Some(9));
    assert!(
        took >= Duration::from_millis(580) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(proc_stat(r.pid.unwrap()).is_none());
}

async fn force_skips_the_term_stages(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = spawn_stubborn(&sup, "stubborn").await;
    let opts = CleanupOptions {
        force: true,
        stop_timeouts: Some(vec![10.0, 10.0, 10.0]),
    };
    let rep = sup
        .cleanup(Some(&one("stubborn")), opts)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rep.stage, StopStage::Kill);
    assert!(rep.duration_ms < 1000.0, "{rep:?}");
    assert!(proc_stat(r.pid.unwrap()).is_none());
}

async fn a_whole_tree_with_escaped_grandchildren_leaves_nothing(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    // Two background children, a setsid grandchild, a double-forked grandchild
    // (parent exits at once) and a double-forked setsid grandchild; each prints its pid.
    let script = "sleep 300 & echo $!; sleep 300 & echo $!; setsid sleep 300 & echo $!; \
                  sh -c 'sleep 300 & echo $!'; sh -c 'setsid sleep 300 & echo $!'; wait";
    let r = sup
        .spawn_agent(request("tree", &["sh", "-c", script], 50))
        .await
        .unwrap();
    let pids: Vec<i32> = wait_lines(&r.stdout_log, 5)
        .await
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    for pid in &pids {
        assert!(proc_stat(*pid).is_some(), "{pid} runs before the stop");
    }
    let leaf = check_containment(&sup, "tree", r.pid.unwrap(), cgroups);
    if leaf.is_some() {
        for pid in &pids {
            assert!(
                cgroup_of(*pid).contains("/tree."),
                "{pid} is in the agent's cgroup"
            );
        }
    }
    let setsid_pid = pids[2];
    let stat = proc_stat(setsid_pid).unwrap();
    assert_eq!(
        stat[3],
        setsid_pid.to_string(),
        "the setsid grandchild left the agent's session"
    );
    let rep = sup
        .cleanup(Some(&one("tree")), staged(2.0))
        .await
        .unwrap()
        .remove(0);
    assert!(rep.descendants_killed.unwrap() >= 5, "{rep:?}");
    assert_eq!(rep.stage, StopStage::Term, "{rep:?}");
    for pid in pids.iter().chain([&r.pid.unwrap()]) {
        assert!(
            proc_stat(*pid).is_none(),
            "pid {pid} survived the stop of its agent"
        );
    }
}

async fn twenty_stubborn_agents_stop_in_about_one_grace_period(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let mut pids = Vec::new();
    for i in 0..20 {
        let r = sup
            .spawn_agent(request(&format!("s{i}"), STUBBORN, 0))
            .await
            .unwrap();
        wait_lines(&r.stdout_log, 1).await;
        pids.push(r.pid.unwrap());
    }
    let began = Instant::now();
    let reports = sup.cleanup(None, staged(0.3)).await.unwrap();
    let took = began.elapsed();
    assert_eq!(reports.len(), 20);
    assert!(
        reports.iter().all(|r| r.stage == StopStage::Kill),
        "{reports:?}"
    );
    // One sequence is 0.6 s of TERM stages; twenty in a row would be 12 s.
    assert!(took < Duration::from_secs(3), "{took:?}");
    for pid in pids {
        assert!(proc_stat(pid).is_none(), "{pid}");
    }
}

async fn a_selector_stops_only_its_subtree_and_unknown_ids_are_errors(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let mut pids = std::collections::BTreeMap::new();
    for id in ["L1", "L1.a", "L1.a.x", "L10", "L2.a"] {
        let r = sup
            .spawn_agent(request(id, &["sleep", "300"], 10))
            .await
            .unwrap();
        pids.insert(id, r.pid.unwrap());
    }
    let sel = Selector::parse("L1.*").unwrap();
    let reports = sup
        .cleanup(Some(&sel), CleanupOptions::default())
        .await
        .unwrap();
    let stopped: Vec<&str> = reports.iter().map(|r| r.agent_id.as_str()).collect();
    assert_eq!(stopped, ["L1", "L1.a", "L1.a.x"]);
    for id in ["L1", "L1.a", "L1.a.x"] {
        assert!(proc_stat(pids[id]).is_none(), "{id}");
    }
    for id in ["L10", "L2.a"] {
        assert!(proc_stat(pids[id]).is_some(), "{id} must keep running");
        let s = sup.get_agent_status(&AgentId::new(id).unwrap()).unwrap();
        assert_eq!(s.persistent_status, PersistentStatus::Running);
    }
    let err = sup
        .cleanup(Some(&one("nobody")), CleanupOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // Stopping an agent that already ended is a no-op that says so.
    let again = sup
        .cleanup(Some(&one("L1")), CleanupOptions::default())
        .await
        .unwrap();
    assert_eq!(again[0].stage, StopStage::AlreadyEnded);

    sup.cleanup(None, CleanupOptions::default()).await.unwrap();
    for pid in pids.values() {
        wait_gone(*pid).await;
    }
}

async fn an_agent_that_exits_on_its_own_during_a_stop_is_cancelled_once(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let r = sup
        .spawn_agent(request(
            "quitter",
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 0.05; done",
            ],
            50,
        ))
        .await
        .unwrap();
    let rep = sup
        .cleanup(Some(&one("quitter")), staged(2.0))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rep.stage, StopStage::Term);
    assert_eq!(rep.exit_code, Some(0));
    let s = wait_status(&sup, "quitter", PersistentStatus::Cancelled).await;
    assert_eq!(s.exit_code, Some(0));
    wait_gone(r.pid.unwrap()).await;
}

async fn what_a_main_process_leaves_behind_is_stopped_before_its_run_ends(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    // A background child, a setsid grandchild and a double-forked setsid
    // grandchild (its parent gone at once), each printing its pid; then the
    // main process exits 0.
    let script = "sleep 300 & echo $!; setsid sleep 300 & echo $!; \
                  sh -c 'setsid sleep 300 & echo $!'; exit 0";
    let r = sup
        .spawn_agent(request("left", &["sh", "-c", script], 0))
        .await
        .unwrap();
    let pids: Vec<i32> = wait_lines(&r.stdout_log, 3)
        .await
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    let s = wait_status(&sup, "left", PersistentStatus::Completed).await;
    assert_eq!(s.exit_code, Some(0), "{s:?}");
    // The run is over only once nothing of it is left.
    let mut ended = sup.get_agent_status(&one_id("left")).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while ended.state != corral_core::AgentState::Ended {
        assert!(Instant::now() < end, "never ended: {ended:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        ended = sup.get_agent_status(&one_id("left")).unwrap();
    }
    for pid in pids.iter().chain([&r.pid.unwrap()]) {
        assert!(
            proc_stat(*pid).is_none(),
            "pid {pid} is still in /proc after the run ended"
        );
    }
    let reason = ended.end_reason.unwrap_or_default();
    assert!(
        reason.contains("exited with code 0") && reason.contains("leftover processes stopped"),
        "{reason}"
    );
    // Nothing is left to stop: a stop says so.
    let rep = sup
        .cleanup(Some(&one("left")), staged(1.0))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rep.stage, StopStage::AlreadyEnded, "{rep:?}");
}

fn one_id(id: &str) -> AgentId {
    AgentId::new(id).unwrap()
}

/// A member the stop has seen in the agent's cgroup that a root agent then
/// moves to another cgroup is still the agent's: once the leaf is empty, the
/// stop signals it where it is (SIGKILL in the kill stage) and ends — it does
/// not wait for it for ever.
#[tokio::test]
async fn a_member_moved_out_of_the_leaf_during_a_stop_is_still_stopped() {
    let (_cleanup, _dir, sup) = setup(true).await;
    let Some(subtree) = sup.cgroup_subtree().map(std::path::PathBuf::from) else {
        panic!("this test needs cgroup containment (a writable cgroup2 hierarchy, as root)");
    };
    // The main waits; its child ignores SIGTERM and prints its pid.
    let script = "sh -c \"trap '' TERM; echo \\$\\$; exec sleep 300\" & wait";
    let r = sup
        .spawn_agent(request("mover", &["sh", "-c", script], 50))
        .await
        .unwrap();
    let main = r.pid.unwrap();
    let child: i32 = wait_lines(&r.stdout_log, 1).await[0].parse().unwrap();
    assert!(check_containment(&sup, "mover", main, true).is_some());
    let stopper = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.cleanup(Some(&one("mover")), staged(0.3)).await })
    };
    // The first stage looks at the leaf (the child is seen) before its
    // SIGTERM ends the main; then the child leaves the leaf.
    wait_gone(main).await;
    let elsewhere = subtree.join(format!("elsewhere-{}", std::process::id()));
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("cgroup.procs"), child.to_string()).unwrap();
    assert!(cgroup_of(child).ends_with(&format!("/elsewhere-{}", std::process::id())));
    let report = tokio::time::timeout(Duration::from_secs(10), stopper)
        .await
        .expect("the stop ended")
        .unwrap()
        .unwrap()
        .remove(0);
    assert_eq!(report.stage, StopStage::Kill, "{report:?}");
    wait_gone(child).await;
    // Removed here, or by the daemon's sweep of empty leaves in its subtree;
    // the kernel may take a moment to let go of a cgroup just emptied.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(&elsewhere) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => assert!(Instant::now() < end, "cannot remove {elsewhere:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
