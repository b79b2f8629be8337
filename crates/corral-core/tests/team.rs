//! Teams in a stop, with real processes checked in `/proc`: stopping a parent
//! stops the agents below it first (deepest first, cause `parent`), a parent
//! whose run ends takes its team with it, a restart of the parent starts only
//! once the old team is gone, and nothing is spawned into a team being
//! stopped.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[macro_use]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cleanup, DEADLINE, proc_stat, request, wait_gone, wait_status};
use corral_core::{
    AgentId, AgentStatus, CleanupOptions, Config, Error, Health, PersistentStatus, RestartMode,
    RestartPolicy, Selector, Supervisor,
};

both_containments!(
    a_stop_of_a_parent_stops_its_team_first_deepest_first,
    a_parent_whose_run_ends_takes_its_team_with_it,
    a_restarted_parent_starts_once_its_old_team_is_gone_and_nothing_joins_a_team_being_stopped,
    a_parent_waiting_for_its_old_team_still_obeys_a_stop,
    a_parent_and_its_team_restarted_together_all_get_new_runs,
);

async fn setup(cgroups: bool) -> (Cleanup, tempfile::TempDir, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.cgroups = cgroups;
    let sup = Supervisor::open(config).await.unwrap();
    let cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    (cleanup, dir, sup)
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn status(sup: &Supervisor, agent: &str) -> AgentStatus {
    sup.get_agent_status(&id(agent)).unwrap()
}

/// `sh -c SCRIPT` as an agent's command.
fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Spawns `agent` running `sleep` and returns its pid.
async fn sleeper(sup: &Supervisor, agent: &str) -> i32 {
    sup.spawn_agent(request(agent, &["sleep", "1000"], 0))
        .await
        .unwrap()
        .pid
        .unwrap()
}

/// Polls until `what` holds, for up to the deadline.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A script that, on SIGTERM, writes which of the pids listed in `kids`
/// still had a `/proc` entry (zombies included), then exits 0.
fn parent_script(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "trap 'for p in $(cat {d}/kids); do [ -e /proc/$p ] && echo $p; done > {d}/alive; \
         echo done >> {d}/alive; exit 0' TERM; while :; do sleep 0.05; done"
    )
}

fn assert_stopped_with_parent(sup: &Supervisor, agent: &str) {
    let s = status(sup, agent);
    assert_eq!(s.persistent_status, PersistentStatus::Cancelled, "{s:?}");
    assert_eq!(s.health, Health::Cancelled, "{s:?}");
    let reason = s.end_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("with its parent agent"),
        "{agent}: {reason}"
    );
}

async fn a_stop_of_a_parent_stops_its_team_first_deepest_first(cgroups: bool) {
    let (_cleanup, dir, sup) = setup(cgroups).await;
    let mut req = request("t", &[], 0);
    req.command = sh(&parent_script(dir.path()));
    let parent = sup.spawn_agent(req).await.unwrap().pid.unwrap();
    let kids = [
        sleeper(&sup, "t.1").await,
        sleeper(&sup, "t.2").await,
        sleeper(&sup, "t.1.1").await,
    ];
    let stranger = sleeper(&sup, "tx").await; // an id that only starts like the team
    let sibling = sleeper(&sup, "t2.1").await;
    std::fs::write(
        dir.path().join("kids"),
        kids.iter().map(|p| format!("{p}\n")).collect::<String>(),
    )
    .unwrap();

    let reports = sup
        .cleanup(Some(&Selector::One(id("t"))), CleanupOptions::default())
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].agent_id, "t");
    for pid in kids.iter().chain([&parent]) {
        wait_gone(*pid).await;
    }
    // The parent was told to stop only once no member of its team was left.
    let alive = std::fs::read_to_string(dir.path().join("alive")).unwrap();
    assert_eq!(
        alive, "done\n",
        "team members alive at the parent's SIGTERM"
    );
    for member in ["t.1", "t.2", "t.1.1"] {
        assert_stopped_with_parent(&sup, member);
    }
    let s = status(&sup, "t");
    assert_eq!(s.persistent_status, PersistentStatus::Cancelled, "{s:?}");
    assert!(
        s.end_reason.as_deref().unwrap_or("").contains("on request"),
        "{s:?}"
    );
    // t.1.1 (deepest) ended before t.1.
    let end = |a: &str| status(&sup, a).ended_at.unwrap();
    assert!(
        end("t.1.1") <= end("t.1"),
        "{} > {}",
        end("t.1.1"),
        end("t.1")
    );
    // Ids that merely start with the same letters are not the team.
    for pid in [stranger, sibling] {
        assert!(
            proc_stat(pid).is_some_and(|s| s[0] != "Z"),
            "pid {pid} was stopped"
        );
    }
    sup.cleanup(None, CleanupOptions::default()).await.unwrap();
    wait_gone(stranger).await;
    wait_gone(sibling).await;
}

async fn a_parent_whose_run_ends_takes_its_team_with_it(cgroups: bool) {
    let (_cleanup, dir, sup) = setup(cgroups).await;
    let go = dir.path().join("go");
    let mut req = request("p", &[], 0);
    req.command = sh(&format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 0",
        go.display()
    ));
    let parent = sup.spawn_agent(req).await.unwrap().pid.unwrap();
    let kids = [sleeper(&sup, "p.a").await, sleeper(&sup, "p.b.c").await];
    std::fs::write(&go, "").unwrap();

    wait_status(&sup, "p", PersistentStatus::Completed).await;
    for pid in kids.iter().chain([&parent]) {
        wait_gone(*pid).await;
    }
    for member in ["p.a", "p.b.c"] {
        let s = wait_status(&sup, member, PersistentStatus::Cancelled).await;
        assert!(
            s.end_reason.as_deref().unwrap_or("").contains("parent"),
            "{s:?}"
        );
        assert!(!s.process_alive, "{s:?}");
    }
}

async fn a_restarted_parent_starts_once_its_old_team_is_gone_and_nothing_joins_a_team_being_stopped(
    cgroups: bool,
) {
    let (_cleanup, dir, sup) = setup(cgroups).await;
    let d = dir.path().display();
    // Run 1 waits for `go`, then fails; run 2 records whether the old helper
    // still had a /proc entry when it started, then stays.
    let mut req = request("r", &[], 0);
    req.command = sh(&format!(
        "if [ -e {d}/go ]; then if [ -e /proc/$(cat {d}/kid) ]; then echo alive; else echo gone; fi > {d}/seen; \
         exec sleep 1000; fi; while [ ! -e {d}/go ]; do sleep 0.05; done; exit 1"
    ));
    req.restart = Some(RestartPolicy {
        policy: RestartMode::OnFailure,
        backoff_s: [0.1, 0.1],
        ..RestartPolicy::default()
    });
    sup.spawn_agent(req).await.unwrap();
    // A helper that ignores SIGTERM: its stop takes the first two stages.
    let mut helper = request("r.h", &[], 0);
    helper.command = sh("trap '' TERM; while :; do sleep 0.05; done");
    helper.stop_timeouts = Some(vec![1.0, 1.0, 2.0]);
    let kid = sup.spawn_agent(helper).await.unwrap().pid.unwrap();
    std::fs::write(dir.path().join("kid"), kid.to_string()).unwrap();
    std::fs::write(dir.path().join("go"), "").unwrap();

    // While the helper is being stopped, nothing is spawned below `r`.
    until("the helper is stopping", || {
        status(&sup, "r.h").state == corral_core::AgentState::Stopping
    })
    .await;
    let refused = sup
        .spawn_agent(request("r.new", &["sleep", "1000"], 0))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::State { reason, .. } if reason.contains("r is being stopped")),
        "{refused:?}"
    );
    let elsewhere = sleeper(&sup, "rr").await; // not below `r`: spawned

    until("the parent's second run", || status(&sup, "r").run == 2).await;
    wait_gone(kid).await;
    let seen = dir.path().join("seen");
    until("the second run looked", || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "gone\n");
    assert_stopped_with_parent(&sup, "r.h");
    assert!(
        sup.get_agent_status(&id("r.new")).is_err(),
        "a refused spawn left a record"
    );

    sup.cleanup(None, CleanupOptions::default()).await.unwrap();
    wait_gone(elsewhere).await;
}

/// A parent waiting (in backoff) for its old run's team to be gone still
/// serves commands: a stop asked meanwhile is answered at once, and no new
/// run follows it.
async fn a_parent_waiting_for_its_old_team_still_obeys_a_stop(cgroups: bool) {
    let (_cleanup, dir, sup) = setup(cgroups).await;
    let go = dir.path().join("go");
    let mut req = request("b", &[], 0);
    req.command = sh(&format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 1",
        go.display()
    ));
    req.restart = Some(RestartPolicy {
        policy: RestartMode::Always,
        backoff_s: [0.1, 0.1],
        ..RestartPolicy::default()
    });
    sup.spawn_agent(req).await.unwrap();
    // A helper whose stop takes 8 s (it ignores SIGTERM).
    let mut helper = request("b.h", &[], 0);
    helper.command = sh("trap '' TERM; while :; do sleep 0.05; done");
    helper.stop_timeouts = Some(vec![8.0, 1.0, 1.0]);
    let kid = sup.spawn_agent(helper).await.unwrap().pid.unwrap();
    std::fs::write(&go, "").unwrap();
    until("the helper is stopping", || {
        status(&sup, "b.h").state == corral_core::AgentState::Stopping
    })
    .await;

    let asked = Instant::now();
    let stopping = {
        let sup = sup.clone();
        tokio::spawn(async move {
            sup.cleanup(Some(&Selector::One(id("b"))), CleanupOptions::default())
                .await
        })
    };
    // The planned restart is called off at once, not after the helper's 8 s.
    until("the parent's restart called off", || {
        let s = status(&sup, "b");
        s.state == corral_core::AgentState::Ended && s.next_restart_at.is_none()
    })
    .await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "calling the restart off took {took:?}"
    );
    // The stop is answered once the team is gone too.
    stopping.await.unwrap().unwrap();
    assert!(proc_stat(kid).is_none(), "the helper outlived the answer");
    let s = status(&sup, "b");
    assert_eq!(s.run, 1, "a new run followed the stop: {s:?}");
    assert_stopped_with_parent(&sup, "b.h");
    assert_eq!(status(&sup, "b").run, 1);
}

/// `restart 'q.*'` restarts the parent and the agents below it together:
/// every one gets a new run (the parent's stop does not refuse the others'
/// new runs), and none of the old processes is left.
async fn a_parent_and_its_team_restarted_together_all_get_new_runs(cgroups: bool) {
    let (_cleanup, _dir, sup) = setup(cgroups).await;
    let ids = ["q", "q.1", "q.1.1"];
    let mut old = Vec::new();
    for a in ids {
        old.push(sleeper(&sup, a).await);
    }
    let results = sup
        .restart(
            Some(&Selector::parse("q.*").unwrap()),
            CleanupOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    for (agent, result) in &results {
        let r = result.as_ref().unwrap_or_else(|e| panic!("{agent}: {e}"));
        assert_eq!(r.run, 2, "{agent}");
    }
    for pid in old {
        wait_gone(pid).await;
    }
    for a in ids {
        let s = status(&sup, a);
        assert!(s.process_alive, "{a}: {s:?}");
        assert!(
            proc_stat(s.pid.unwrap()).is_some_and(|st| st[0] != "Z"),
            "{a}"
        );
    }
    sup.cleanup(None, CleanupOptions::default()).await.unwrap();
}
