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

/// The owner itself, on the fake platform with tokio's clock paused: stop
/// stages, crashes and restarts happen on a virtual clock, exactly, in
/// microseconds of real time.
mod paused {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::execution::fake::{FakeWorld, OnTerm};
    use super::super::{Config, Supervisor};
    use crate::model::{
        AgentState, CleanupOptions, Health, PersistentStatus, RestartMode, RestartPolicy,
        SpawnRequest, StopStage,
    };
    use crate::{AgentId, Selector};

    fn world(main: OnTerm, children: Vec<OnTerm>, natural: Option<(f64, i32)>) -> Arc<FakeWorld> {
        let w = Arc::new(FakeWorld::default());
        *w.shape.lock().unwrap() = Some((
            main,
            children,
            natural.map(|(s, c)| (Duration::from_secs_f64(s), c)),
        ));
        w
    }

    async fn open(dir: &Path, world: &Arc<FakeWorld>) -> Supervisor {
        let mut config = Config::new(dir.join("state"));
        config.fake = Some(world.clone());
        config.cgroups = false;
        Supervisor::open(config).await.unwrap()
    }

    fn request(id: &str, timeouts: [f64; 3], restart: RestartMode) -> SpawnRequest {
        SpawnRequest {
            agent_id: id.into(),
            command: vec!["fake".into()],
            verify_ms: Some(0),
            stop_timeouts: Some(timeouts.to_vec()),
            restart: Some(RestartPolicy {
                policy: restart,
                backoff_s: [1.0, 1.0],
                ..RestartPolicy::default()
            }),
            ..Default::default()
        }
    }

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    /// Steps the paused clock 100 ms at a time until `what` holds (bounded
    /// in real time). Owners run between the steps; their commits go through
    /// the store's thread on the real clock, so the virtual clock may run a
    /// step or two ahead of them, never behind.
    async fn until(sup: &Supervisor, agent: &str, what: impl Fn(&crate::AgentStatus) -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = sup.get_agent_status(&id(agent)).unwrap();
            if what(&s) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "{agent} never got there: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stages(world: &FakeWorld, run_id: i64) -> Vec<(StopStage, Instant)> {
        world.tree(run_id).unwrap().signals
    }

    #[tokio::test(start_paused = true)]
    async fn each_stage_goes_out_when_its_wait_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let w = world(OnTerm::Ignores, vec![OnTerm::Ignores], None);
        let sup = open(dir.path(), &w).await;
        sup.spawn_agent(request("a", [10.0, 5.0, 5.0], RestartMode::Never))
            .await
            .unwrap();
        let t0 = Instant::now();
        let rep = sup
            .cleanup(Some(&Selector::One(id("a"))), CleanupOptions::default())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(rep.stage, StopStage::Kill, "{rep:?}");
        assert_eq!(rep.persistent_status, PersistentStatus::Cancelled);
        let (run_id, tree) = w.trees().into_iter().next().unwrap();
        assert_eq!(tree.alive(), 0, "nothing of the tree is left");
        let at: Vec<(StopStage, u64)> = stages(&w, run_id)
            .into_iter()
            .map(|(s, t)| (s, (t - t0).as_millis() as u64))
            .collect();
        assert_eq!(
            at,
            [
                (StopStage::Term, 0),
                (StopStage::SecondTerm, 10_000),
                (StopStage::Kill, 15_000)
            ],
            "each stage at its virtual time"
        );
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!((s.state, s.health), (AgentState::Ended, Health::Cancelled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_daemon_crash_in_the_second_stage_resumes_it_there_and_never_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let w = world(OnTerm::Ignores, vec![], None);
        let sup = open(dir.path(), &w).await;
        sup.spawn_agent(request("a", [10.0, 5.0, 5.0], RestartMode::Always))
            .await
            .unwrap();
        let stopping = sup.clone();
        let stop = tokio::spawn(async move {
            let _ = stopping
                .cleanup(Some(&Selector::One(id("a"))), CleanupOptions::default())
                .await;
        });
        until(&sup, "a", |s| {
            s.stop
                .as_ref()
                .is_some_and(|st| st.stage == StopStage::SecondTerm)
        })
        .await;
        // The daemon dies: its owners leave the agent where it is.
        sup.shutdown();
        drop(sup);
        let _ = stop.await;
        let sup = open(dir.path(), &w).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!(s.state, AgentState::Stopping, "{s:?}");
        let st = s.stop.unwrap();
        assert_eq!(
            (st.stage, st.cause),
            (StopStage::SecondTerm, crate::StopCause::User)
        );
        until(&sup, "a", |s| s.state == AgentState::Ended).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!(s.persistent_status, PersistentStatus::Cancelled, "{s:?}");
        assert_eq!((s.run, s.next_restart_at), (1, None), "never restarted");
        let (run_id, tree) = w.trees().into_iter().next().unwrap();
        assert_eq!(tree.alive(), 0);
        let seen: Vec<StopStage> = stages(&w, run_id).into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            seen,
            [
                StopStage::Term,
                StopStage::SecondTerm,
                // Sent again by the new daemon (it cannot know it went out).
                StopStage::SecondTerm,
                StopStage::Kill
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_runtime_counts_only_the_time_not_paused() {
        let dir = tempfile::tempdir().unwrap();
        let w = world(OnTerm::Exits(Duration::ZERO), vec![], None);
        let sup = open(dir.path(), &w).await;
        sup.spawn_agent(SpawnRequest {
            max_runtime_s: Some(10.0),
            ..request("a", [1.0, 1.0, 1.0], RestartMode::Never)
        })
        .await
        .unwrap();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = sup.pause_agent(&id("a")).await.unwrap();
        assert_eq!(r.outcome, crate::PauseOutcome::Paused);
        let (run_id, tree) = w.trees().into_iter().next().unwrap();
        assert!(tree.frozen);
        // Paused far longer than the limit: nothing happens.
        tokio::time::sleep(Duration::from_secs(100)).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!(s.state, AgentState::Paused);
        assert!(stages(&w, run_id).is_empty(), "no stop while paused");
        let r = sup.resume_agent(&id("a")).await.unwrap();
        assert_eq!(r.outcome, crate::PauseOutcome::Resumed);
        assert!(!w.tree(run_id).unwrap().frozen);
        until(&sup, "a", |s| s.state == AgentState::Ended).await;
        // The limit's 10 s: 2 before the pause, 8 after it.
        let (stage, at) = stages(&w, run_id)[0];
        assert_eq!(stage, StopStage::Term);
        let after = at - t0;
        assert!(
            after >= Duration::from_secs(110) && after < Duration::from_millis(110_500),
            "stopped {after:?} after the start"
        );
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert!(s.end_reason.unwrap().contains("max_runtime_s 10"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_outlives_a_daemon_crash_and_a_stop_thaws_the_tree_first() {
        let dir = tempfile::tempdir().unwrap();
        let w = world(OnTerm::Exits(Duration::ZERO), vec![OnTerm::Ignores], None);
        let sup = open(dir.path(), &w).await;
        sup.spawn_agent(request("a", [10.0, 5.0, 5.0], RestartMode::Always))
            .await
            .unwrap();
        sup.pause_agent(&id("a")).await.unwrap();
        sup.shutdown();
        drop(sup);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let sup = open(dir.path(), &w).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!(s.state, AgentState::Paused, "{s:?}");
        let (run_id, tree) = w.trees().into_iter().next().unwrap();
        assert!(tree.frozen);
        let froze: Vec<bool> = tree.pauses.iter().map(|(f, _)| *f).collect();
        assert_eq!(froze, [true, true], "frozen again by the new daemon");
        let rep = sup
            .cleanup(Some(&Selector::One(id("a"))), CleanupOptions::default())
            .await
            .unwrap()
            .remove(0);
        // The main obeys SIGTERM; the child ignores it and is killed.
        assert_eq!(rep.stage, StopStage::Kill, "{rep:?}");
        assert_eq!(rep.persistent_status, PersistentStatus::Cancelled);
        let tree = w.tree(run_id).unwrap();
        assert!(!tree.frozen);
        let (thawed, at) = *tree.pauses.last().unwrap();
        assert!(!thawed);
        assert!(at <= tree.signals[0].1, "thawed before the first SIGTERM");
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!((s.run, s.next_restart_at), (1, None), "never restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_killed_while_paused_is_not_restarted_even_across_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        // The child ignores SIGTERM: the stop of the leftovers takes its stages.
        let w = world(OnTerm::Exits(Duration::ZERO), vec![OnTerm::Ignores], None);
        let sup = open(dir.path(), &w).await;
        sup.spawn_agent(request("a", [10.0, 5.0, 5.0], RestartMode::Always))
            .await
            .unwrap();
        sup.pause_agent(&id("a")).await.unwrap();
        let (run_id, _) = w.trees().into_iter().next().unwrap();
        w.kill_main(run_id, 9);
        until(&sup, "a", |s| s.state == AgentState::Stopping).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!(s.stop.unwrap().cause, crate::StopCause::Leftovers);
        assert!(!w.tree(run_id).unwrap().frozen, "thawed to be stopped");
        // The daemon dies while the leftovers are being stopped.
        sup.shutdown();
        drop(sup);
        let sup = open(dir.path(), &w).await;
        until(&sup, "a", |s| s.state == AgentState::Ended).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!((s.run, s.next_restart_at.as_deref()), (1, None), "{s:?}");
        assert!(
            s.end_reason.as_deref().unwrap().contains("while paused"),
            "{s:?}"
        );
        assert_eq!(w.tree(run_id).unwrap().alive(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn leftovers_are_stopped_before_the_next_run_starts() {
        let dir = tempfile::tempdir().unwrap();
        // The main exits 1 by itself after 5 s; its child ignores SIGTERM.
        let w = world(
            OnTerm::Exits(Duration::ZERO),
            vec![OnTerm::Ignores],
            Some((5.0, 1)),
        );
        let sup = open(dir.path(), &w).await;
        sup.spawn_agent(request("a", [2.0, 1.0, 1.0], RestartMode::OnFailure))
            .await
            .unwrap();
        until(&sup, "a", |s| s.state == AgentState::Stopping).await;
        let s = sup.get_agent_status(&id("a")).unwrap();
        assert_eq!(s.stop.unwrap().cause, crate::StopCause::Leftovers);
        assert_eq!(
            (s.persistent_status, s.exit_code),
            (PersistentStatus::Failed, Some(1))
        );
        // Run 2 comes once run 1's tree is gone (SIGKILL at 3 s), after its 1 s backoff.
        until(&sup, "a", |s| s.run == 2 && s.state == AgentState::Running).await;
        let trees = w.trees();
        let mut runs: Vec<_> = trees.into_iter().collect();
        runs.sort_by_key(|(run_id, _)| *run_id);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].1.alive(), 0, "run 1 is gone");
        let (last, killed) = *runs[0].1.signals.last().unwrap();
        assert_eq!(last, StopStage::Kill);
        // SIGKILL 3 s after the main's end (stages 2/1/1), then the 1 s backoff.
        let after = runs[1].1.born - killed;
        assert!(
            after >= Duration::from_secs(1),
            "run 2 began {after:?} after run 1's SIGKILL"
        );
        assert_eq!(killed - runs[0].1.born, Duration::from_secs(8));
        let runs_info = sup.runs(&id("a")).await.unwrap();
        let reason = runs_info[0].end_reason.clone().unwrap();
        assert!(reason.contains("leftover process"), "{reason}");
        sup.kill_agent(&id("a"), true).await.unwrap();
    }
}

/// Random lives of one agent at the owner level — stops by a user and by a
/// limit, pauses and resumes, exits, time passing, daemon crashes — on the
/// fake platform and the paused clock: the owner never shows a state it has
/// not stored, never restarts what a user stopped (or what was killed while
/// paused), never ends with a process left, its tree is frozen exactly while
/// it is paused on record, and every stop ends unless something cannot be
/// killed.
mod random {
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::execution::fake::{FakeWorld, OnTerm};
    use super::super::{Cmd, Config, Supervisor, lock};
    use crate::model::{
        AgentState, CleanupOptions, EventBody, LimitEvent, RestartMode, RestartPolicy, SpawnRequest,
    };
    use crate::{AgentId, Selector};

    #[derive(Debug, Clone)]
    enum Op {
        Stop { force: bool },
        Pause,
        Resume,
        Limit,
        Exit { signal: Option<i32> },
        Advance(u64),
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => any::<bool>().prop_map(|force| Op::Stop { force }),
            2 => Just(Op::Pause),
            1 => Just(Op::Resume),
            1 => Just(Op::Limit),
            1 => prop_oneof![Just(None), Just(Some(9)), Just(Some(11))]
                .prop_map(|signal| Op::Exit { signal }),
            4 => (1u64..4000).prop_map(Op::Advance),
            2 => Just(Op::Crash),
        ]
    }

    fn on_term() -> impl Strategy<Value = OnTerm> {
        prop_oneof![
            4 => (0u64..3000).prop_map(|ms| OnTerm::Exits(Duration::from_millis(ms))),
            2 => Just(OnTerm::Ignores),
            1 => Just(OnTerm::Unkillable),
        ]
    }

    fn mode() -> impl Strategy<Value = RestartMode> {
        prop_oneof![
            Just(RestartMode::Never),
            Just(RestartMode::OnFailure),
            Just(RestartMode::Always)
        ]
    }

    struct Life {
        dir: tempfile::TempDir,
        world: Arc<FakeWorld>,
        sup: Supervisor,
        /// Runs a user asked to stop while their main process ran, and runs
        /// killed from outside while paused: none is followed by another.
        user_stopped: Vec<i64>,
    }

    async fn open(dir: &std::path::Path, world: &Arc<FakeWorld>) -> Supervisor {
        let mut config = Config::new(dir.join("state"));
        config.fake = Some(world.clone());
        config.cgroups = false;
        Supervisor::open(config).await.unwrap()
    }

    fn id() -> AgentId {
        AgentId::new("a").unwrap()
    }

    impl Life {
        fn latest(&self) -> crate::store::RunRecord {
            self.sup.sh.store.latest_run("a").unwrap().unwrap()
        }

        /// Lets every owner finish what it can do without time passing.
        async fn settle(&self) {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }

        async fn step(&mut self, op: &Op) {
            let rec = self.latest();
            match op {
                Op::Stop { force } => {
                    let main_alive = self.world.tree(rec.run_id).is_some_and(|t| t.main.alive);
                    if main_alive && rec.state != Some(AgentState::Ended) {
                        self.user_stopped.push(rec.run_id);
                    }
                    let sup = self.sup.clone();
                    let force = *force;
                    // Not awaited: a stop answers once the tree is gone.
                    tokio::spawn(async move {
                        let opts = CleanupOptions {
                            force,
                            stop_timeouts: None,
                        };
                        let _ = sup.cleanup(Some(&Selector::One(id())), opts).await;
                    });
                }
                Op::Limit => {
                    if let Some(slot) = lock(&self.sup.sh.registry).get(&id()) {
                        let _ = slot.tx.send(Cmd::Limit {
                            run: rec.run,
                            reason: "memory limit 1 MB exceeded".into(),
                            event: EventBody::Limit(LimitEvent {
                                limit: "memory_mb".into(),
                                value: 1.0,
                                usage: Some(2.0),
                            }),
                        });
                    }
                }
                Op::Pause | Op::Resume => {
                    let sup = self.sup.clone();
                    let resume = matches!(op, Op::Resume);
                    // Not awaited: the owner may be busy with a stop.
                    tokio::spawn(async move {
                        let _ = if resume {
                            sup.resume_agent(&id()).await
                        } else {
                            sup.pause_agent(&id()).await
                        };
                    });
                }
                Op::Exit { signal } => {
                    let main_alive = self.world.tree(rec.run_id).is_some_and(|t| t.main.alive);
                    if main_alive && rec.state == Some(AgentState::Paused) {
                        self.user_stopped.push(rec.run_id);
                    }
                    self.world.kill_main(rec.run_id, signal.unwrap_or(0));
                }
                Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                Op::Crash => {
                    self.sup.shutdown();
                    self.settle().await;
                    self.sup = open(self.dir.path(), &self.world).await;
                }
            }
            self.settle().await;
            self.check();
        }

        fn check(&self) {
            let rec = self.latest();
            let shown = self.sup.get_agent_status(&id()).unwrap();
            assert_eq!(
                Some(shown.state),
                rec.state,
                "shown {:?}, on record {:?}",
                shown.state,
                rec.state
            );
            assert_eq!(
                shown.stop.is_some(),
                rec.stop.is_some(),
                "{shown:?} / {rec:?}"
            );
            let trees = self.world.trees();
            let frozen = trees.get(&rec.run_id).is_some_and(|t| t.frozen);
            assert_eq!(
                frozen,
                rec.state == Some(AgentState::Paused),
                "frozen exactly while paused: {rec:?}"
            );
            if rec.state == Some(AgentState::Ended) {
                let left = trees.get(&rec.run_id).map_or(0, |t| t.alive());
                assert_eq!(left, 0, "ended with {left} processes of run {}", rec.run);
            }
            for stopped in &self.user_stopped {
                assert!(
                    rec.run_id <= *stopped,
                    "run {} began after a user stopped run id {stopped}",
                    rec.run
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_lives_of_an_owner_keep_every_rule(
            main in on_term(),
            children in proptest::collection::vec(on_term(), 0..3),
            restart in mode(),
            ops in proptest::collection::vec(op(), 1..20),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let world = Arc::new(FakeWorld::default());
                *world.shape.lock().unwrap() = Some((main, children, None));
                let sup = open(dir.path(), &world).await;
                let r = sup
                    .spawn_agent(SpawnRequest {
                        agent_id: "a".into(),
                        command: vec!["fake".into()],
                        verify_ms: Some(0),
                        stop_timeouts: Some(vec![1.0, 0.5, 0.5]),
                        restart: Some(RestartPolicy {
                            policy: restart,
                            backoff_s: [0.2, 0.2],
                            ..RestartPolicy::default()
                        }),
                        ..Default::default()
                    })
                    .await;
                assert!(r.is_ok(), "{r:?}");
                let mut life = Life { dir, world, sup, user_stopped: Vec::new() };
                for op in &ops {
                    life.step(op).await;
                }
                // A last user stop, and time enough for it.
                life.step(&Op::Stop { force: false }).await;
                for _ in 0..10 {
                    life.step(&Op::Advance(2000)).await;
                }
                let rec = life.latest();
                let tree = life.world.tree(rec.run_id).unwrap();
                let stuck = std::iter::once(&tree.main)
                    .chain(&tree.children)
                    .any(|p| p.alive && p.on_term == OnTerm::Unkillable);
                if stuck {
                    assert_eq!(rec.state, Some(AgentState::Stopping), "{rec:?}");
                    assert!(rec.stop.is_some_and(|s| s.unkillable), "survived SIGKILL");
                } else {
                    assert_eq!(rec.state, Some(AgentState::Ended), "{rec:?}");
                    assert_eq!(tree.alive(), 0);
                }
                life.sup.shutdown();
            });
        }
    }
}
