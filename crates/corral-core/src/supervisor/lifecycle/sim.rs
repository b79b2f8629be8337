//! Model-based tests of the lifecycle: a fake process tree on a virtual
//! clock, driven through random sequences of stops (by a user, by a limit),
//! exits, deadlines and daemon crashes, the way an owner drives it — with the
//! real [`Lifecycle`], the real ending words (`ending.rs`) and the real
//! restart policy (`policy.rs`). What the store would hold is kept as a
//! record, and a crash throws everything else away and recovers from it.
//!
//! After every step: no move is refused; an `ended` run has nothing left of
//! its tree; a stop on record survives a crash with its cause and stage; a
//! run a user stopped is never restarted and ends `cancelled`; and with time
//! enough, every stop ends unless something of the tree cannot be killed.

use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;

use super::{Happening, Lifecycle, State, Stop, StopRequest};
use crate::model::{
    AgentState, PersistentStatus, RestartMode, RestartPolicy, StopCause, StopStage,
};
use crate::platform::ExitKind;
use crate::store::StopRecord;
use crate::supervisor::execution::fake::OnTerm;
use crate::supervisor::{ending, policy};

#[derive(Debug, Clone)]
struct Proc {
    alive: bool,
    on_term: OnTerm,
    /// When a SIGTERM it got makes it exit.
    dies_at: Option<u64>,
}

impl Proc {
    fn new(on_term: OnTerm) -> Self {
        Self {
            alive: true,
            on_term,
            dies_at: None,
        }
    }

    fn signal(&mut self, stage: StopStage, now: u64) {
        if !self.alive {
            return;
        }
        match (stage, self.on_term) {
            (_, OnTerm::Unkillable) => {}
            (StopStage::Kill, _) => self.alive = false,
            (_, OnTerm::Exits(after)) => {
                let at = now + after.as_millis() as u64;
                self.dies_at = Some(self.dies_at.map_or(at, |d| d.min(at)));
            }
            _ => {}
        }
    }
}

/// What the store holds of the run.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    state: AgentState,
    stop: Option<StopRecord>,
    status: PersistentStatus,
    restart_planned: bool,
}

/// One thing that happens.
#[derive(Debug, Clone)]
enum Step {
    UserStop { force: bool },
    LimitStop,
    MainExits { code: i32 },
    ChildExits(usize),
    Advance(u64),
    Crash,
}

struct Sim {
    start: Instant,
    wall0: SystemTime,
    now_ms: u64,
    life: Lifecycle,
    main: Proc,
    /// The main's exit has been read and recorded.
    main_recorded: bool,
    children: Vec<Proc>,
    shape: (OnTerm, Vec<OnTerm>),
    record: Record,
    policy: RestartPolicy,
    history: policy::History,
    /// How the main ended (status, ran), once it has.
    main_status: Option<PersistentStatus>,
    /// A user's stop was recorded while the main process still ran.
    user_stop_on_live: bool,
    runs: u32,
    restarts_after_user_stop: u32,
}

const TIMEOUTS: [f64; 3] = [1.0, 0.5, 0.5];

impl Sim {
    fn new(main: OnTerm, children: Vec<OnTerm>, mode: RestartMode) -> Self {
        let mut sim = Self {
            start: Instant::now(),
            wall0: SystemTime::now(),
            now_ms: 0,
            life: Lifecycle::ended(),
            main: Proc::new(main),
            main_recorded: false,
            children: Vec::new(),
            shape: (main, children),
            record: Record {
                state: AgentState::Ended,
                stop: None,
                status: PersistentStatus::Spawning,
                restart_planned: false,
            },
            policy: RestartPolicy {
                policy: mode,
                max_restarts: 3,
                window_s: 60.0,
                backoff_s: [0.5, 2.0],
            },
            history: policy::History::default(),
            main_status: None,
            user_stop_on_live: false,
            runs: 0,
            restarts_after_user_stop: 0,
        };
        sim.apply(Happening::NewRun);
        sim.new_run();
        sim
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.now_ms)
    }

    fn wall(&self) -> SystemTime {
        self.wall0 + Duration::from_millis(self.now_ms)
    }

    fn apply(&mut self, what: Happening) -> super::Change {
        let before = self.life.clone();
        match self.life.apply(what.clone()) {
            Ok(change) => change,
            Err(e) => panic!("refused: {e}: {what:?} from {:?}", before.state()),
        }
    }

    fn commit(&mut self) {
        self.record.state = self.life.wire();
        self.record.stop = self.life.stop().map(Stop::record);
    }

    /// A new run: its process starts and runs at once (no window).
    fn new_run(&mut self) {
        self.runs += 1;
        self.main = Proc::new(self.shape.0);
        self.children = self.shape.1.iter().map(|t| Proc::new(*t)).collect();
        self.main_recorded = false;
        self.main_status = None;
        self.user_stop_on_live = false;
        self.record.status = PersistentStatus::Spawning;
        self.record.restart_planned = false;
        self.apply(Happening::Started { verify_until: None });
        self.record.status = PersistentStatus::Running;
        self.commit();
    }

    fn tree_alive(&self) -> bool {
        self.main.alive || self.children.iter().any(|c| c.alive)
    }

    fn children_alive(&self) -> bool {
        self.children.iter().any(|c| c.alive)
    }

    fn signal_all(&mut self, stage: StopStage) {
        let now = self.now_ms;
        self.main.signal(stage, now);
        for c in &mut self.children {
            c.signal(stage, now);
        }
    }

    fn request_stop(&mut self, cause: StopCause, force: bool) {
        match self.life.state() {
            State::Ended => return,
            State::Backoff { .. } => {
                let req = self.req(cause, force);
                self.apply(Happening::Stop(req));
                self.record.restart_planned = false;
                self.commit();
                return;
            }
            _ => {}
        }
        let first = !matches!(self.life.state(), State::Stopping(_));
        let req = self.req(cause, force);
        let change = self.apply(Happening::Stop(req));
        // Committed before its first signal.
        self.commit();
        if cause == StopCause::User && self.main.alive && !self.main_recorded {
            self.user_stop_on_live = true;
        }
        if let Some(stage) = change.stage {
            let _ = first;
            self.signal_all(stage);
        }
        self.look();
    }

    fn req(&self, cause: StopCause, force: bool) -> StopRequest {
        StopRequest {
            cause,
            reason: (cause == StopCause::Limit).then(|| "memory limit 1 MB exceeded".into()),
            timeouts: TIMEOUTS,
            force,
            now: self.now(),
            wall: self.wall(),
            no_restart: false,
        }
    }

    /// The main process is dead and not recorded: record it.
    fn main_ended(&mut self) {
        let stop = self.life.stop().cloned();
        let exit = Some(ExitKind::Code(1));
        let (status, _) = ending::of(exit, stop.as_ref(), None);
        let gone = !self.children_alive();
        let leftovers = (!gone).then(|| self.req(StopCause::Leftovers, false));
        self.apply(Happening::MainExited { leftovers });
        if stop.is_some() && gone {
            self.apply(Happening::TreeGone);
        }
        self.main_recorded = true;
        self.main_status = Some(status);
        self.record.status = status;
        let asked = stop.as_ref().is_some_and(|s| s.asked);
        self.maybe_restart(asked);
        self.commit();
        if stop.is_none() && !gone {
            self.signal_all(StopStage::Term);
        }
    }

    fn maybe_restart(&mut self, asked: bool) {
        if self.life.wire() != AgentState::Ended {
            return;
        }
        let status = self.main_status.unwrap_or(PersistentStatus::Failed);
        let decision = policy::decide(
            &self.policy,
            status,
            asked,
            1.0,
            &self.history,
            self.now_ms as f64 / 1000.0,
            0.5,
        );
        if let policy::Decision::Restart { delay, attempt } = decision {
            if self.user_stop_on_live {
                self.restarts_after_user_stop += 1;
            }
            self.history.attempt = attempt;
            let until = super::later(self.now(), delay);
            self.apply(Happening::RestartPlanned { until });
            self.record.restart_planned = true;
        }
    }

    /// A look at the tree while stopping.
    fn look(&mut self) {
        if !matches!(self.life.state(), State::Stopping(_)) {
            return;
        }
        if !self.main.alive && !self.main_recorded {
            return self.main_ended();
        }
        if !self.tree_alive() {
            let asked = self.life.stop().is_some_and(|s| s.asked);
            self.apply(Happening::TreeGone);
            self.maybe_restart(asked);
            self.commit();
        }
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        loop {
            // The next thing due: a process's death or the lifecycle's deadline.
            let deaths = std::iter::once(&self.main)
                .chain(&self.children)
                .filter(|p| p.alive)
                .filter_map(|p| p.dies_at);
            let deadline = self
                .life
                .deadline()
                .map(|d| d.saturating_duration_since(self.start).as_millis() as u64);
            let next = deaths.chain(deadline).filter(|t| *t <= end).min();
            let Some(t) = next else { break };
            self.now_ms = self.now_ms.max(t);
            let now = self.now_ms;
            let mut died = false;
            for p in std::iter::once(&mut self.main).chain(self.children.iter_mut()) {
                if p.alive && p.dies_at.is_some_and(|d| d <= now) {
                    p.alive = false;
                    died = true;
                }
            }
            if died {
                self.on_deaths();
                continue;
            }
            self.on_deadline();
        }
        self.now_ms = end;
    }

    fn on_deaths(&mut self) {
        match self.life.state() {
            State::Stopping(_) => self.look(),
            State::Running if !self.main.alive && !self.main_recorded => self.main_ended(),
            _ => {}
        }
    }

    fn on_deadline(&mut self) {
        match self.life.state() {
            State::Stopping(_) => {
                let (now, wall) = (self.now(), self.wall());
                let change = self.apply(Happening::StageDue {
                    now,
                    wall,
                    settle_until: None,
                });
                self.commit();
                if let Some(stage) = change.stage {
                    self.signal_all(stage);
                }
                self.look();
            }
            State::Backoff { .. } => {
                self.apply(Happening::BackoffElapsed);
                self.history.restarts_at.push(self.now_ms as f64 / 1000.0);
                self.new_run();
            }
            _ => {}
        }
    }

    /// The daemon dies: everything but the record (and the processes) is
    /// lost; a new owner recovers from the record.
    fn crash(&mut self) {
        let before = self.record.clone();
        let (now, wall) = (self.now(), self.wall());
        self.life = match before.state {
            AgentState::Ended | AgentState::Backoff => {
                let mut l = Lifecycle::ended();
                if before.restart_planned {
                    l.apply(Happening::RestartPlanned { until: now })
                        .expect("planned restart");
                }
                l
            }
            state => Lifecycle::recover(Some(state), before.stop.as_ref(), now, wall),
        };
        if let Some(rec) = &before.stop {
            let s = self.life.stop().expect("a stop on record is resumed");
            assert_eq!(
                (s.cause, s.asked, s.main_exited),
                (rec.cause, rec.asked, rec.main_exited)
            );
            assert_eq!(s.stage, rec.stage, "resumed at its stage");
        }
        if let State::Stopping(s) = self.life.state() {
            // The stage's signal goes out again; then a look.
            let stage = s.stage;
            self.signal_all(stage);
            self.look();
        } else if self.life.wire() == AgentState::Running && !self.main.alive && !self.main_recorded
        {
            self.main_ended();
        }
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::UserStop { force } => self.request_stop(StopCause::User, *force),
            Step::LimitStop => {
                if matches!(self.life.state(), State::Running) {
                    self.request_stop(StopCause::Limit, false);
                }
            }
            Step::MainExits { code } => {
                let _ = code;
                if self.main.alive {
                    self.main.alive = false;
                    self.on_deaths();
                }
            }
            Step::ChildExits(i) => {
                if let Some(c) = self.children.get_mut(*i)
                    && c.alive
                {
                    c.alive = false;
                    self.on_deaths();
                }
            }
            Step::Advance(ms) => self.advance(*ms),
            Step::Crash => self.crash(),
        }
        self.check();
    }

    fn check(&self) {
        if self.life.wire() == AgentState::Ended {
            assert!(!self.tree_alive(), "ended with processes left");
        }
        if self.life.wire() == AgentState::Stopping {
            assert!(self.record.stop.is_some(), "a stop not on record");
        }
        assert_eq!(
            self.record.state,
            self.life.wire(),
            "shown before committed"
        );
        assert_eq!(
            self.restarts_after_user_stop, 0,
            "restarted after a user stop"
        );
        if self.user_stop_on_live && self.main_recorded {
            assert_eq!(self.main_status, Some(PersistentStatus::Cancelled));
        }
    }
}

fn on_term() -> impl Strategy<Value = OnTerm> {
    prop_oneof![
        4 => (0u64..2000).prop_map(|ms| OnTerm::Exits(Duration::from_millis(ms))),
        2 => Just(OnTerm::Ignores),
        1 => Just(OnTerm::Unkillable),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => any::<bool>().prop_map(|force| Step::UserStop { force }),
        1 => Just(Step::LimitStop),
        1 => (0i32..3).prop_map(|code| Step::MainExits { code }),
        1 => (0usize..3).prop_map(Step::ChildExits),
        4 => (0u64..1500).prop_map(Step::Advance),
        2 => Just(Step::Crash),
    ]
}

fn mode() -> impl Strategy<Value = RestartMode> {
    prop_oneof![
        Just(RestartMode::Never),
        Just(RestartMode::OnFailure),
        Just(RestartMode::Always)
    ]
}

proptest! {
    // No regression files are written (a failure prints its minimal case).
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random lives never reach an illegal move, never lose a stop, never
    /// restart what a user stopped, and never end with processes left.
    #[test]
    fn random_lives_keep_every_rule(
        main in on_term(),
        children in proptest::collection::vec(on_term(), 0..3),
        mode in mode(),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut sim = Sim::new(main, children, mode);
        for s in &steps {
            sim.step(s);
        }
        // A user stop at the end, then time enough: the stop ends, unless
        // something of the tree cannot be killed.
        sim.step(&Step::UserStop { force: false });
        for _ in 0..10 {
            sim.step(&Step::Advance(2000));
        }
        let unkillable = std::iter::once(&sim.main)
            .chain(&sim.children)
            .any(|p| p.alive && p.on_term == OnTerm::Unkillable);
        if unkillable {
            prop_assert_eq!(sim.life.wire(), AgentState::Stopping);
            prop_assert!(sim.life.stop().is_some_and(|s| s.unkillable));
        } else {
            prop_assert_eq!(sim.life.wire(), AgentState::Ended);
            prop_assert!(!sim.tree_alive());
        }
    }
}

#[test]
fn a_crash_in_the_second_stage_resumes_there_and_ends_cancelled() {
    let mut sim = Sim::new(OnTerm::Ignores, vec![OnTerm::Ignores], RestartMode::Always);
    sim.step(&Step::UserStop { force: false });
    sim.step(&Step::Advance(1100));
    assert_eq!(
        sim.life.stop().map(|s| s.stage),
        Some(StopStage::SecondTerm)
    );
    sim.step(&Step::Crash);
    assert_eq!(
        sim.life.stop().map(|s| s.stage),
        Some(StopStage::SecondTerm)
    );
    // Down for longer than the stage: its deadline has passed, so SIGKILL goes
    // out at once.
    sim.now_ms += 5000;
    sim.step(&Step::Crash);
    sim.step(&Step::Advance(1));
    assert_eq!(sim.life.wire(), AgentState::Ended);
    assert_eq!(sim.main_status, Some(PersistentStatus::Cancelled));
    assert_eq!(sim.runs, 1, "never restarted after a user stop");
}

#[test]
fn leftovers_are_stopped_before_a_restart() {
    let mut sim = Sim::new(
        OnTerm::Exits(Duration::ZERO),
        vec![OnTerm::Ignores],
        RestartMode::Always,
    );
    sim.step(&Step::MainExits { code: 1 });
    assert_eq!(sim.life.wire(), AgentState::Stopping);
    assert_eq!(sim.life.stop().map(|s| s.cause), Some(StopCause::Leftovers));
    sim.step(&Step::Crash);
    assert_eq!(sim.life.stop().map(|s| s.cause), Some(StopCause::Leftovers));
    sim.step(&Step::Advance(1100));
    assert_eq!(sim.runs, 1, "no new run beside the old tree");
    sim.step(&Step::Advance(600));
    assert!(!sim.children_alive());
    assert_eq!(sim.life.wire(), AgentState::Backoff);
    sim.step(&Step::Advance(2000));
    assert_eq!(sim.runs, 2);
}
