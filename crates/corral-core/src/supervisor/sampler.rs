//! The sampler: one thread that reads `/proc` for every live agent and its
//! whole tree, as often as somebody needs the figures.
//!
//! One scan of the process table per pass (each `stat` opened, read and
//! closed: no descriptor kept) gives every agent's own figures and its tree's
//! sums from the same instant. CPU% is psutil's: CPU time used since the last
//! pass, as a percentage of one CPU; a process seen for the first time is
//! measured from its start. Readers take the latest sample; nothing on a read
//! path scans. The same thread rotates the logs of runs that ask for it
//! (`rotate.rs`) once per interval. After each full pass, the teams' budgets
//! are checked against the sums of their members' trees from that same pass
//! (`teams.rs`).
//!
//! **Paced by demand.** A full scan costs a `stat` read of every process on
//! the machine; with thousands of idle agents nobody looks at, that is most of
//! what the daemon does at rest. So a pass runs every interval only while the
//! figures are wanted — a reader asked within the last [`ACTIVE_INTERVALS`]
//! intervals, a live run has limits the sampler enforces, or a live run is in
//! a team with a budget the sampler enforces (`teams.rs`) — and otherwise
//! once every [`REST_INTERVALS`]. A reader that finds the figures older than
//! two intervals wakes the sampler at once, and the API's reads wait for that
//! pass ([`Pace::fresh`]), so what they answer is never older than an
//! interval or so, rest or not. A reader of one agent in a cgroup
//! (`Supervisor::agent_status`) needs no pass at all: that agent is sampled
//! alone ([`sample_one`]: its leaf's processes), and the pass over every
//! process stays at rest.
//!
//! Every full pass also adds one point per sampled agent to its history
//! (`history.rs`: bounded rings, for the dashboard's plots); history never
//! asks for a pass of its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::id::AgentId;
use crate::model::TreeSummary;
use crate::platform::{self, ProcEntry};
use crate::tree;

use super::execution::tree as stop;
use super::view::{Sample, View};
use super::{Cmd, Shared, limits, lock, rotate, teams};
use crate::model::EventBody;

/// Intervals after a read during which the sampler keeps full pace.
pub(crate) const ACTIVE_INTERVALS: u32 = 3;
/// At rest, one full pass every this many intervals.
pub(crate) const REST_INTERVALS: u32 = 10;

/// How the sampler paces itself, shared with readers.
pub(crate) struct Pace {
    started: Instant,
    interval: Duration,
    /// When a reader last wanted figures (ms since `started`).
    wanted_ms: AtomicU64,
    /// When the last full pass ended (ms since `started`; `u64::MAX`: none yet).
    sampled_ms: AtomicU64,
    /// Set by a reader that needs a pass now.
    woken: Mutex<bool>,
    wake: Condvar,
    /// Full passes so far.
    passes: watch::Sender<u64>,
}

impl Pace {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            started: Instant::now(),
            interval,
            wanted_ms: AtomicU64::new(0),
            sampled_ms: AtomicU64::new(u64::MAX),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            passes: watch::Sender::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Full passes so far.
    pub(crate) fn passes(&self) -> u64 {
        *self.passes.borrow()
    }

    /// A reader wants the figures: keeps the sampler at full pace for a while,
    /// and wakes it when the last pass is older than two intervals. True when
    /// it was woken (a pass is coming).
    pub(crate) fn want(&self) -> bool {
        let now = self.now_ms();
        self.wanted_ms.store(now, Ordering::Relaxed);
        let last = self.sampled_ms.load(Ordering::Relaxed);
        let stale = last == u64::MAX || now.saturating_sub(last) > 2 * self.interval_ms();
        if stale {
            *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.wake.notify_one();
        }
        stale
    }

    /// [`Pace::want`], then waits (at most two intervals and a second) for the
    /// pass it asked for, so that the figures read next are fresh.
    pub(crate) async fn fresh(&self) {
        let mut passes = self.passes.subscribe();
        let before = *passes.borrow_and_update();
        if self.want() {
            let _ = tokio::time::timeout(
                2 * self.interval + Duration::from_secs(1),
                passes.wait_for(|n| *n > before),
            )
            .await;
        }
    }

    /// True while a reader wanted figures within the last few intervals.
    fn active(&self) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.wanted_ms.load(Ordering::Relaxed));
        since <= u64::from(ACTIVE_INTERVALS) * self.interval_ms()
    }

    /// Sleeps until the next interval or a reader's wake-up; true when woken.
    fn sleep(&self, until: Instant) -> bool {
        let mut woken = self.woken.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *woken {
                *woken = false;
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            woken = match self.wake.wait_timeout(woken, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn sampled(&self) {
        self.sampled_ms.store(self.now_ms(), Ordering::Relaxed);
        self.passes.send_modify(|n| *n += 1);
    }
}

/// Starts the sampler thread; it ends when the supervisor is gone or shut down.
pub(crate) fn start(sh: &Arc<Shared>) -> std::io::Result<()> {
    let weak = Arc::downgrade(sh);
    let interval = sh.config.sample_interval;
    std::thread::Builder::new()
        .name("corral-sampler".into())
        .spawn(move || run(weak, interval))
        .map(drop)
}

/// What the sampler remembers from one pass to the next.
#[derive(Default)]
struct Memory {
    /// CPU ticks and time of every process seen last time.
    prev: HashMap<(i32, u64), (u64, f64)>,
    /// Samples in a row over the CPU limit, by agent and run.
    cpu_over: HashMap<(AgentId, u32), u32>,
    /// Log rotation failures already logged.
    rotate_warned: rotate::Warned,
    /// The teams' stops under way and CPU crossings.
    teams: teams::Check,
}

fn run(weak: Weak<Shared>, interval: Duration) {
    let mut memory = Memory::default();
    let mut next = Instant::now() + interval;
    let mut last_full: Option<Instant> = None;
    loop {
        let woken = {
            let Some(sh) = weak.upgrade() else { return };
            let pace = Arc::clone(&sh.pace);
            drop(sh);
            pace.sleep(next)
        };
        let Some(sh) = weak.upgrade() else { return };
        if *sh.shutdown.borrow() {
            return;
        }
        let now = Instant::now();
        if !woken {
            next += interval;
            if next < now {
                // Fell behind (a long pass, a suspended machine): no burst of catch-up passes.
                next = now + interval;
            }
        }
        let resting = !woken
            && !sh.pace.active()
            && last_full.is_some_and(|t| now.duration_since(t) < interval * REST_INTERVALS);
        if sample_all(&sh, &mut memory, resting) {
            last_full = Some(now);
            sh.pace.sampled();
        }
    }
}

/// Takes one sample of every live agent, and tells the owner of any run over
/// a limit the sampler enforces; `resting`, only rotates logs — unless a live
/// run has limits, which are checked every interval. True when it took a
/// full pass (or there was nothing to sample).
fn sample_all(sh: &Shared, memory: &mut Memory, resting: bool) -> bool {
    let live: Vec<(Arc<View>, mpsc::UnboundedSender<Cmd>)> = lock(&sh.registry)
        .values()
        .filter_map(|slot| {
            slot.published
                .borrow()
                .view
                .clone()
                .map(|v| (v, slot.tx.clone()))
        })
        // Local runs are sampled here; runs on a cluster engine only have their
        // logs rotated (the engine gives their figures). An ended run whose
        // process stays a zombie of another parent has nothing to sample.
        .filter(|(v, _)| {
            v.state.is_busy() && (v.proc_.is_some() || v.job.as_ref().is_some_and(|j| j.running))
        })
        .collect();
    if live.is_empty() {
        let mut history = lock(&sh.history);
        let registry = lock(&sh.registry);
        history.retain(|id| registry.contains_key(id));
        drop((registry, history));
        memory.prev.clear();
        memory.cpu_over.clear();
        memory.rotate_warned = rotate::Warned::default();
        memory.teams = teams::Check::default();
        return true;
    }
    if resting
        && live.iter().all(|(v, _)| v.limits.is_empty())
        && !teams::sampler_enforces(sh, &live.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>())
    {
        for (view, tx) in &live {
            for data in rotate::rotate(view, &mut memory.rotate_warned) {
                let _ = tx.send(Cmd::Note {
                    run: view.run,
                    event: EventBody::LogDropped(data),
                });
            }
        }
        return false;
    }
    let owned = lock(&sh.owned).clone();
    let pass = Pass {
        sh,
        snap: stop::scan(&owned),
        now: platform::boottime_seconds(),
    };
    let mut seen = HashMap::with_capacity(memory.prev.len());
    let mut cpu_over = HashMap::new();
    let mut measured = Vec::with_capacity(live.len());
    for (view, tx) in &live {
        if let Some(proc_) = &view.proc_ {
            let (tree, tasks) = pass.sample(view, proc_, &memory.prev, &mut seen);
            measured.push(teams::Measured {
                view: view.clone(),
                tx: tx.clone(),
                memory_mb: tree.memory_mb,
                cpu_percent: tree.cpu_percent,
                tasks,
            });
            if !view.limits.is_empty() {
                let key = (view.id.clone(), view.run);
                let mut over = memory.cpu_over.get(&key).copied().unwrap_or(0);
                let usage = limits::Usage {
                    memory_mb: tree.memory_mb,
                    tasks,
                    cpu_percent: tree.cpu_percent,
                };
                if let Some((reason, data)) = limits::check(&view.limits, usage, &mut over) {
                    let _ = tx.send(Cmd::Limit {
                        run: view.run,
                        reason,
                        event: EventBody::Limit(data),
                    });
                }
                cpu_over.insert(key, over);
            }
        }
        for data in rotate::rotate(view, &mut memory.rotate_warned) {
            let _ = tx.send(Cmd::Note {
                run: view.run,
                event: EventBody::LogDropped(data),
            });
        }
    }
    memory.teams.pass(sh, &measured);
    memory.prev = seen;
    memory.cpu_over = cpu_over;
    {
        let mut history = lock(&sh.history);
        for m in &measured {
            history.record(&m.view.id, m.cpu_percent, m.memory_mb);
        }
        // Lock order: history, then the registry (readers of history take it alone).
        let registry = lock(&sh.registry);
        history.retain(|id| registry.contains_key(id));
    }
    let dirs = live.iter().map(|(v, _)| v.log_dir.as_path()).collect();
    memory.rotate_warned.retain_runs(&dirs);
    true
}

/// One sampling pass: the process table at one instant.
struct Pass<'a> {
    sh: &'a Shared,
    snap: tree::Snapshot,
    now: f64,
}

impl Pass<'_> {
    fn mb(&self, pages: u64) -> f64 {
        (pages * self.sh.page_size) as f64 / (1024.0 * 1024.0)
    }

    /// Samples one agent and its tree (its own figures go to its `Proc`);
    /// the tree's sums and its task count. Every process seen goes to `seen`.
    fn sample(
        &self,
        view: &View,
        proc_: &super::view::Proc,
        prev: &HashMap<(i32, u64), (u64, f64)>,
        seen: &mut HashMap<(i32, u64), (u64, f64)>,
    ) -> (TreeSummary, u64) {
        let none = HashSet::new();
        let members = tree::members(
            &self.snap,
            &tree::Lookup {
                leader: proc_.handle.pid(),
                leader_start: proc_.handle.start_ticks(),
                leader_unreaped: true,
                daemon: std::process::id() as i32,
                known: &none,
                agent_id: view.id.as_str(),
                // The tree is found from the table alone (children, group,
                // session, orphans by their CORRAL_AGENT_ID): reading every
                // leaf's `cgroup.procs` each interval would cost one file per
                // agent per second. Stops, which must miss nothing, read it.
                contained: &[],
            },
        );
        let mut tree = TreeSummary {
            processes: 0,
            cpu_percent: 0.0,
            memory_mb: 0.0,
        };
        let mut own = None;
        let mut tasks = 0u64;
        for m in members.iter().filter(|m| m.state != 'Z') {
            let key = (m.pid, m.start_ticks);
            let cpu = cpu_percent(m, prev.get(&key), self.now, self.sh.ticks_per_second);
            seen.insert(key, (m.cpu_ticks, self.now));
            tree.processes += 1;
            tree.cpu_percent += cpu;
            tree.memory_mb += self.mb(m.rss_pages);
            tasks += u64::from(m.num_threads);
            if m.pid == proc_.handle.pid() && m.start_ticks == proc_.handle.start_ticks() {
                own = Some((m, cpu));
            }
        }
        if let Some((m, cpu)) = own {
            proc_.set_sample(Sample {
                state: m.state,
                cpu_percent: cpu,
                memory_mb: self.mb(m.rss_pages),
                num_threads: m.num_threads,
                tree,
                tree_tasks: tasks,
                taken_s: self.now,
            });
        }
        (tree, tasks)
    }
}

/// Samples one agent contained in a cgroup leaf on its own, for a reader of
/// that agent alone (blocking): its leaf's processes are its tree, so this
/// costs a few small reads, not a scan of every process on the machine —
/// a coordinator polling one agent a second keeps the full pass at rest.
/// CPU% is over the time since the previous such sample (from each
/// process's start for the first).
///
/// One at a time per agent: a second reader that finds a sample taken
/// within `max_age_s` meanwhile (by the first, or by a full pass) takes it
/// as it is, so two readers never measure CPU over a few microseconds.
pub(crate) fn sample_one(sh: &Shared, proc_: &super::view::Proc, max_age_s: f64) {
    let Some(leaf) = &proc_.leaf else { return };
    let mut alone = lock(&proc_.alone);
    if proc_.sampled_within(max_age_s) {
        return;
    }
    let members = stop::leaf_members(leaf, None).0;
    let now = platform::boottime_seconds();
    let mb = |pages: u64| (pages * sh.page_size) as f64 / (1024.0 * 1024.0);
    let mut seen = HashMap::with_capacity(members.len());
    let mut tree = TreeSummary {
        processes: 0,
        cpu_percent: 0.0,
        memory_mb: 0.0,
    };
    let mut own = None;
    let mut tasks = 0u64;
    for m in members.iter().filter(|m| m.state != 'Z') {
        let key = (m.pid, m.start_ticks);
        let cpu = cpu_percent(m, alone.get(&key), now, sh.ticks_per_second);
        seen.insert(key, (m.cpu_ticks, now));
        tasks += u64::from(m.num_threads);
        tree.processes += 1;
        tree.cpu_percent += cpu;
        tree.memory_mb += mb(m.rss_pages);
        if key == (proc_.handle.pid(), proc_.handle.start_ticks()) {
            own = Some((*m, cpu));
        }
    }
    *alone = seen;
    if let Some((m, cpu)) = own {
        proc_.set_sample(Sample {
            state: m.state,
            cpu_percent: cpu,
            memory_mb: mb(m.rss_pages),
            num_threads: m.num_threads,
            tree,
            tree_tasks: tasks,
            taken_s: now,
        });
    }
}

/// psutil's CPU%: ticks used since the last sample over the time since, as a
/// percentage of one CPU; from the process's start when it is new.
fn cpu_percent(m: &ProcEntry, prev: Option<&(u64, f64)>, now: f64, tps: f64) -> f64 {
    let (ticks, at) = match prev {
        Some(&(ticks, at)) => (ticks, at),
        None => (0, m.start_ticks as f64 / tps),
    };
    let elapsed = now - at;
    if elapsed <= 0.0 {
        return 0.0;
    }
    (m.cpu_ticks.saturating_sub(ticks) as f64 / tps) / elapsed * 100.0
}
