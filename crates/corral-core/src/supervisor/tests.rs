//! Tests that reach inside the supervisor: an owner that fails is replaced.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::{Cmd, Config, Supervisor, lock};
use crate::model::{AgentState, CleanupOptions, PersistentStatus, SpawnRequest, StopStage};
use crate::{AgentId, Selector};

/// Kills and reaps the agent however the test ends, while it is still our
/// (unreaped) child: then its pid cannot belong to anyone else.
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        let ours = std::fs::read(format!("/proc/{}/stat", self.0))
            .ok()
            .and_then(|t| crate::platform::parse_stat(&t).ok())
            .is_some_and(|s| s.ppid == std::process::id() as i32);
        if ours && let Some(pid) = rustix::process::Pid::from_raw(self.0) {
            crate::platform::kill_and_reap_child(pid);
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn an_owner_that_fails_is_replaced_at_once_and_its_agent_still_stops() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::open(Config::new(dir.path().join("state")))
        .await
        .unwrap();
    let id = AgentId::new("w").unwrap();
    let r = sup
        .spawn_agent(SpawnRequest {
            agent_id: "w".into(),
            command: vec!["sleep".into(), "300".into()],
            verify_ms: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = r.pid.unwrap();
    let _reap = Reap(pid);
    let mut owners = sup.sh.owners.subscribe();
    let tx = lock(&sup.sh.registry).get(&id).unwrap().tx.clone();
    tx.send(Cmd::Fail).unwrap();
    tokio::time::timeout(Duration::from_secs(10), owners.changed())
        .await
        .expect("a new owner within 10 s")
        .unwrap();
    let new_tx = lock(&sup.sh.registry).get(&id).unwrap().tx.clone();
    assert!(!new_tx.same_channel(&tx), "the slot has a new owner");
    // The new owner re-adopted the same process.
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = sup.get_agent_status(&id).unwrap();
        if s.state == AgentState::Running && s.pid == Some(pid) {
            break s;
        }
        assert!(Instant::now() < end, "never re-adopted: {s:?}");
        tokio::task::yield_now().await;
    };
    assert!(s.process_alive, "{s:?}");
    assert!(alive(pid));
    // And it answers commands: a stop ends it, nothing is left.
    let rep = sup
        .cleanup(Some(&Selector::One(id.clone())), CleanupOptions::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rep.stage, StopStage::Term, "{rep:?}");
    assert_eq!(rep.persistent_status, PersistentStatus::Cancelled);
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "pid {pid} left in /proc"
    );
}
