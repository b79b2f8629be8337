//! The typed Rust client (`corral-client`) against a real daemon: the same
//! scenario the Python and TypeScript clients run — spawn 20, stream events
//! until each runs, wait for the ones that finish, read logs, stop the rest —
//! checked in `/proc`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use corral_client::Client;
use corral_client::proto::{
    AgentState, BatchRequest, BatchResult, EventBody, EventsQuery, ListQuery, LogsQuery,
    PersistentStatus, SpawnRequest, StopManyRequest, WaitQuery,
};

#[test]
fn a_team_of_twenty_through_the_typed_client() {
    let env = Env::new();
    // Any command starts the daemon.
    let out = env.run(&["ps"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = Client::new(env.state.join("corral.sock"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pids = rt.block_on(async {
        let agents: Vec<SpawnRequest> = (1..=20)
            .map(|i| {
                // 15 say hello and finish; 5 say hello and stay.
                let rest = if i <= 15 {
                    "sleep 0.3"
                } else {
                    "exec sleep 300"
                };
                SpawnRequest {
                    agent_id: format!("team.{i}"),
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        format!("echo hello $CORRAL_AGENT_ID; {rest}"),
                    ],
                    ..SpawnRequest::default()
                }
            })
            .collect();
        let answer = client.spawn_batch(&BatchRequest { agents }).await.unwrap();
        let mut pids = Vec::new();
        for r in &answer.results {
            match r {
                BatchResult::Spawned(s) => pids.push(s.pid.expect("a local agent has a pid")),
                BatchResult::Failed(f) => panic!("{} refused: {}", f.agent_id, f.error.message),
            }
        }
        assert_eq!(pids.len(), 20);

        // Events, typed: every member's `state: running`.
        let mut running = BTreeSet::new();
        let mut events = client
            .events(&EventsQuery {
                since: Some(0),
                follow: Some(true),
            })
            .await
            .unwrap();
        let watch = async {
            while running.len() < 20 {
                let ev = events.next().await.expect("the stream ended").unwrap();
                if let EventBody::State(s) = &ev.body
                    && s.state == Some(AgentState::Running)
                {
                    running.insert(ev.agent_id.clone());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), watch)
            .await
            .expect("every agent reported running");
        drop(events);

        for i in 1..=15 {
            let id = format!("team.{i}");
            let s = client
                .wait(
                    &id,
                    &WaitQuery {
                        timeout_s: Some(30.0),
                    },
                )
                .await
                .unwrap();
            assert_eq!(s.persistent_status, PersistentStatus::Completed, "{id}");
            assert_eq!(s.exit_code, Some(0));
        }
        for i in 1..=20 {
            let id = format!("team.{i}");
            let mut log = client.logs(&id, &LogsQuery::default()).await.unwrap();
            let line = log.next_line().await.expect("a line").unwrap();
            assert_eq!(line, format!("hello {id}"));
        }
        let listed = client
            .list(&ListQuery {
                selector: Some("team.*".into()),
                state: Some("running".into()),
                fields: Some("pid".into()),
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 5, "{:?}", listed.keys());
        let reports = client
            .stop_many(&StopManyRequest {
                selector: Some("team.*".into()),
                stop_timeouts: Some(vec![2.0, 1.0, 1.0]),
                live_only: true,
                ..StopManyRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(reports.len(), 5);
        let err = client.status("nosuch").await.unwrap_err();
        assert_eq!(err.code(), Some("not_found"));
        pids
    });
    // Every member ended and was reaped: none of their pids is in /proc (a
    // stop answers only once its agent's processes are gone).
    let left: Vec<i32> = pids
        .into_iter()
        .filter(|p| proc_stat(*p).is_some())
        .collect();
    assert!(left.is_empty(), "still in /proc: {left:?}");
    env.finish();
}

#[test]
fn history_and_a_dashboard_login_through_the_typed_client() {
    let env = Env::new();
    let out = env.run(&["spawn", "plot", "--", "sleep", "300"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = env.json(&["status", "plot"])["pid"].as_i64().unwrap() as i32;
    let client = Client::new(env.state.join("corral.sock"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let query = corral_client::proto::HistoryQuery::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let history = loop {
            let h = client.history("plot", &query).await.unwrap();
            if h.points.len() >= 2 {
                break h;
            }
            assert!(std::time::Instant::now() < deadline, "no points: {h:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(history.agent_id, "plot");
        // The agent's process is what was measured: it is alive, and holds memory.
        assert!(proc_stat(pid).is_some());
        assert!(history.points.iter().all(|p| p.memory_mb > 0.0));
        let last = history.points.last().unwrap().t;
        let later = corral_client::proto::HistoryQuery { since: Some(last) };
        assert!(
            client
                .history("plot", &later)
                .await
                .unwrap()
                .points
                .is_empty()
        );
        let login = client.ui_login().await.unwrap();
        assert!(login.url.ends_with(&login.path), "{login:?}");
        assert!(login.path.starts_with("/ui/login?code="));
    });
    env.finish();
}
