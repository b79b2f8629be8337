//! `reap_zombies` does what its name says and says what it did: zombies of
//! an agent's tree that nothing has reaped are reaped by the call and named
//! by their agent. The supervisor here does not reap orphans by itself
//! (`subreaper: false`), while the test process is a subreaper: orphans of
//! the agent become its children and stay zombies until someone reaps them.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::{Cleanup, DEADLINE, proc_stat, request, wait_lines};
use corral_core::{AgentId, Config, Supervisor};

#[tokio::test]
async fn reap_zombies_reaps_an_agents_orphans_and_names_the_agent() {
    corral_core::process::become_subreaper().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = false;
    let sup = Supervisor::open(config).await.unwrap();
    let _cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    // A grandchild in the agent's session, orphaned at once (its parent, the
    // subshell, exits), that prints its pid and exits 3.
    let script = "(sh -c 'echo $$; exit 3' &); exec sleep 300";
    let r = sup
        .spawn_agent(request("a", &["sh", "-c", script], 0))
        .await
        .unwrap();
    let orphan: i32 = wait_lines(&r.stdout_log, 1).await[0].parse().unwrap();
    let me = std::process::id().to_string();
    let end = Instant::now() + DEADLINE;
    loop {
        match proc_stat(orphan) {
            Some(s) if s[0] == "Z" && s[1] == me => break,
            Some(_) => {}
            None => panic!("{orphan} was reaped by someone else"),
        }
        assert!(Instant::now() < end, "{orphan} never became our zombie");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sup.reap_zombies().await, ["a"], "the call names the agent");
    assert!(proc_stat(orphan).is_none(), "{orphan} is still in /proc");
    assert!(
        sup.reap_zombies().await.is_empty(),
        "nothing left to reap the second time"
    );
    let id = AgentId::new("a").unwrap();
    assert!(sup.get_agent_status(&id).unwrap().process_alive);
    assert!(sup.kill_agent(&id, true).await.unwrap());
    assert!(proc_stat(r.pid.unwrap()).is_none());
}
