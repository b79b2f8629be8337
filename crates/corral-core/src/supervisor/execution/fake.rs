//! A fake platform for the owner's deterministic tests: runs whose processes
//! live on tokio's clock, so a test with the clock paused drives an owner
//! through hours of stop stages, exits and backoffs in microseconds, with the
//! same outcome every time.
//!
//! A [`FakeWorld`] holds every fake run by its run id: a main process and
//! its children, each with a way to answer SIGTERM. The owner sees a
//! [`FakeRun`] through the same [`super::Execution`] seam as a real one;
//! the world outlives a supervisor, so a test can shut one down (a crash) and
//! let the next one re-adopt what still "runs".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::StopStage;
use crate::platform::ExitKind;

use super::{Event, Look};

/// How a fake process answers SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnTerm {
    /// Exits this long after it.
    Exits(Duration),
    /// Ignores it; SIGKILL still works.
    Ignores,
    /// Survives even SIGKILL (a process stuck in the kernel).
    Unkillable,
}

/// One fake process.
#[derive(Debug, Clone)]
pub(crate) struct FakeProc {
    pub alive: bool,
    pub on_term: OnTerm,
    /// When it dies (a SIGTERM it obeys, or its own end).
    pub dies_at: Option<Instant>,
    /// How it exits when it dies on its own or by SIGTERM.
    pub code: i32,
    /// Killed by this signal (9 by SIGKILL, 15 by an obeyed SIGTERM).
    pub signal: Option<i32>,
}

impl FakeProc {
    pub(crate) fn new(on_term: OnTerm) -> Self {
        Self {
            alive: true,
            on_term,
            dies_at: None,
            code: 0,
            signal: None,
        }
    }

    fn signal(&mut self, stage: StopStage, now: Instant) {
        if !self.alive {
            return;
        }
        match (stage, self.on_term) {
            (_, OnTerm::Unkillable) => {}
            (StopStage::Kill, _) => {
                self.alive = false;
                self.signal = Some(9);
            }
            (_, OnTerm::Exits(after)) => {
                let at = now + after;
                if self.dies_at.is_none_or(|d| at < d) {
                    self.dies_at = Some(at);
                    self.signal = Some(15);
                }
            }
            _ => {}
        }
    }

    fn settle(&mut self, now: Instant) -> bool {
        if self.alive && self.dies_at.is_some_and(|d| d <= now) {
            self.alive = false;
            return true;
        }
        false
    }
}

/// The processes of one fake run.
#[derive(Debug, Clone)]
pub(crate) struct FakeTree {
    pub main: FakeProc,
    pub children: Vec<FakeProc>,
    /// Signals in the order they arrived at the main process: (stage, when).
    pub signals: Vec<(StopStage, Instant)>,
    /// When the run's processes were created.
    pub born: Instant,
    /// Frozen by a pause.
    pub frozen: bool,
    /// Freezes (true) and thaws (false) in the order they came, with when.
    pub pauses: Vec<(bool, Instant)>,
}

impl FakeTree {
    fn settle(&mut self, now: Instant) -> bool {
        let mut changed = self.main.settle(now);
        for c in &mut self.children {
            changed |= c.settle(now);
        }
        changed
    }

    fn next_death(&self) -> Option<Instant> {
        std::iter::once(&self.main)
            .chain(&self.children)
            .filter(|p| p.alive)
            .filter_map(|p| p.dies_at)
            .min()
    }

    pub(crate) fn alive(&self) -> usize {
        std::iter::once(&self.main)
            .chain(&self.children)
            .filter(|p| p.alive)
            .count()
    }
}

/// What a new fake run is made of: the main's and the children's answers to
/// SIGTERM, and when (after its start) the main exits on its own, with what code.
pub(crate) type Shape = (OnTerm, Vec<OnTerm>, Option<(Duration, i32)>);

/// Every fake run, by run id, and what a new run will be made of.
#[derive(Default)]
pub(crate) struct FakeWorld {
    trees: Mutex<HashMap<i64, FakeTree>>,
    /// The shape of the next runs.
    pub shape: Mutex<Option<Shape>>,
    /// Woken whenever a test changes a tree from outside.
    changed: Notify,
}

impl std::fmt::Debug for FakeWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeWorld")
    }
}

impl FakeWorld {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, FakeTree>> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new run's processes.
    pub(crate) fn start(&self, run_id: i64) {
        let shape = self
            .shape
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or((OnTerm::Exits(Duration::ZERO), Vec::new(), None));
        let (main, children, natural) = shape;
        let mut tree = FakeTree {
            main: FakeProc::new(main),
            children: children.into_iter().map(FakeProc::new).collect(),
            signals: Vec::new(),
            born: Instant::now(),
            frozen: false,
            pauses: Vec::new(),
        };
        if let Some((after, code)) = natural {
            tree.main.dies_at = Some(Instant::now() + after);
            tree.main.code = code;
        }
        self.lock().insert(run_id, tree);
    }

    /// A run's processes as they are now.
    pub(crate) fn tree(&self, run_id: i64) -> Option<FakeTree> {
        let mut trees = self.lock();
        let tree = trees.get_mut(&run_id)?;
        tree.settle(Instant::now());
        Some(tree.clone())
    }

    /// Every run's processes.
    pub(crate) fn trees(&self) -> HashMap<i64, FakeTree> {
        let now = Instant::now();
        let mut trees = self.lock();
        for t in trees.values_mut() {
            t.settle(now);
        }
        trees.clone()
    }

    /// Kills a run's main process from outside, with `signal`.
    pub(crate) fn kill_main(&self, run_id: i64, signal: i32) {
        if let Some(t) = self.lock().get_mut(&run_id) {
            t.main.alive = false;
            t.main.signal = Some(signal);
        }
        self.changed.notify_waiters();
    }
}

/// A fake run, as its owner sees it.
pub(crate) struct FakeRun {
    pub world: Arc<FakeWorld>,
    pub run_id: i64,
    pub started: std::time::Instant,
    /// The main's exit has been read.
    pub exited: bool,
    /// Its end is on record.
    pub recorded: bool,
    last_signal: Option<std::time::Instant>,
    opened: Option<StopStage>,
    seen: u32,
}

impl FakeRun {
    pub(crate) fn new(world: Arc<FakeWorld>, run_id: i64) -> Self {
        Self {
            world,
            run_id,
            started: Instant::now().into_std(),
            exited: false,
            recorded: false,
            last_signal: None,
            opened: None,
            seen: 0,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeTree, Instant) -> T) -> Option<T> {
        let now = Instant::now();
        let mut trees = self.world.lock();
        let tree = trees.get_mut(&self.run_id)?;
        tree.settle(now);
        Some(f(tree, now))
    }

    /// Resolves when the main process dies (or, stopping, anything does).
    pub(crate) async fn event(&mut self, stopping: bool) -> Event {
        loop {
            let notified = self.world.changed.notified();
            let (main_dead, next) = self
                .with(|t, _| (!t.main.alive, t.next_death()))
                .unwrap_or((true, None));
            if main_dead && !self.exited {
                return Event::MainExit;
            }
            tokio::select! {
                () = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if stopping {
                        return Event::Tree;
                    }
                }
                () = notified => {}
            }
        }
    }

    pub(crate) fn main_dead(&self) -> bool {
        self.with(|t, _| !t.main.alive).unwrap_or(true)
    }

    /// How the main process ended.
    pub(crate) fn read_exit(&mut self) -> Option<ExitKind> {
        self.exited = true;
        self.with(|t, _| match t.main.signal {
            Some(s) => ExitKind::Signal(s),
            None => ExitKind::Code(t.main.code),
        })
    }

    pub(crate) fn open_stage(&mut self, stage: StopStage) {
        if self.opened == Some(stage) {
            return;
        }
        self.opened = Some(stage);
        self.last_signal = Some(Instant::now().into_std());
        self.with(|t, now| {
            t.signals.push((stage, now));
            t.main.signal(stage, now);
            for c in &mut t.children {
                c.signal(stage, now);
            }
        });
    }

    pub(crate) fn look(&mut self, stage: StopStage) -> Look {
        if !self.exited && self.main_dead() {
            return Look::MainExited;
        }
        self.open_stage(stage);
        let (alive, children) = self
            .with(|t, _| (t.alive(), t.children.len() as u32))
            .unwrap_or((0, 0));
        self.seen = children;
        if alive == 0 && self.exited {
            Look::Gone
        } else {
            Look::Left
        }
    }

    pub(crate) fn leftovers(&self) -> bool {
        self.with(|t, _| t.children.iter().any(|c| c.alive))
            .unwrap_or(false)
    }

    pub(crate) fn settle_until(&self) -> Option<std::time::Instant> {
        self.last_signal.map(|t| t + super::tree::KILL_SETTLE)
    }

    pub(crate) fn descendants(&self) -> u32 {
        self.seen
    }

    /// Freezes (or thaws) the fake tree.
    pub(crate) fn set_frozen(&mut self, frozen: bool) -> super::pause::Frozen {
        let processes = self
            .with(|t, now| {
                t.frozen = frozen;
                t.pauses.push((frozen, now));
                t.alive() as u32
            })
            .unwrap_or(0);
        super::pause::Frozen {
            method: "fake",
            processes,
            note: None,
        }
    }
}
