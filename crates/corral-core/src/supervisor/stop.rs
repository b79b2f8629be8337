//! Staged stops of an agent's whole process tree, run by its owner as timers
//! in its own loop.
//!
//! Each stage signals every member of the tree (the agent's group through its
//! still-unreaped pid, every other member through a pidfd opened with its
//! start time checked, and in the kill stage `cgroup.kill`), then waits — on
//! the agent's pidfd, the members' pidfds, the orphan reaper and the stage's
//! deadline — and looks again: processes forked during the stop are found by
//! re-reading the process table after every wake-up. The stop ends when no
//! member is left (zombies of other parents count as gone), the agent's end is
//! committed and its cgroup is empty. Concurrent stops share each scan of the
//! process table ([`TableCache`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

use crate::model::{StopReport, StopStage};
use crate::platform::{self, ProcEntry, ProcessHandle, cgroup::Leaf};
use crate::tree;

use super::actor::{Actor, LiveRun, Phase};
use super::state::Happening;
use super::{Shared, lock};

/// Why corral stops a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StopCause {
    /// A user asked (`cleanup`, `kill_agent`): the run ends `cancelled`.
    User,
    /// The run outlived `max_runtime_s`.
    Runtime { limit_s: f64 },
    /// A resource limit was exceeded, or the liveness probe failed (the reason
    /// names it and the usage or the probe's last output).
    Limit(String),
    /// The run ended on its own and a restart follows: its leftovers go first.
    Leftovers,
}

/// A stop in progress.
pub(crate) struct Stopping {
    pub cause: StopCause,
    pub(crate) stages: Vec<(StopStage, Signal, f64)>,
    pub(crate) index: usize,
    pub(crate) deadline: Instant,
    began: Instant,
    /// Every member seen: (pid, start ticks).
    seen: HashSet<(i32, u64)>,
    /// Members signalled in the current stage.
    signalled: HashSet<(i32, u64)>,
    /// Pidfds of signalled members, to wake when one exits.
    pub watch: Vec<AsyncFd<Arc<ProcessHandle>>>,
    /// Orphan sweeps (a zombie member may be reaped by one).
    pub reaps: watch::Receiver<u64>,
    /// Look again then when nothing else can wake the stop.
    pub(crate) recheck: Option<Instant>,
    /// The last stage's time is up with only the agent's end still to record.
    pub(crate) end_grace: bool,
    /// The current stage's signal has gone to the agent's group.
    pub(crate) stage_opened: bool,
    /// When a member was last signalled.
    pub(crate) last_signal: Instant,
    waiters: Vec<oneshot::Sender<StopReport>>,
}

impl Stopping {
    /// The earliest time the stop must look again.
    pub(crate) fn next_wake(&self) -> Instant {
        self.recheck.map_or(self.deadline, |r| r.min(self.deadline))
    }

    pub(crate) fn stage(&self) -> (StopStage, Signal, f64) {
        self.stages[self.index.min(self.stages.len() - 1)]
    }
}

/// How long a stop waits past its last deadline for the end of an agent that
/// has died to be recorded.
pub(crate) const END_GRACE: Duration = Duration::from_secs(5);
/// How long a process SIGKILLed at the last moment gets to die before it counts
/// as having survived.
const KILL_SETTLE: Duration = Duration::from_millis(250);

fn stages(timeouts: [f64; 3], force: bool) -> Vec<(StopStage, Signal, f64)> {
    if force {
        vec![(StopStage::Kill, Signal::KILL, timeouts[2].max(1.0))]
    } else {
        vec![
            (StopStage::Term, Signal::TERM, timeouts[0]),
            (StopStage::SecondTerm, Signal::TERM, timeouts[1]),
            (StopStage::Kill, Signal::KILL, timeouts[2]),
        ]
    }
}

impl Actor {
    /// Begins a stop (or joins the one under way, escalating to SIGKILL at once
    /// when `force` asks for it).
    pub(crate) async fn begin_stop(
        &mut self,
        cause: StopCause,
        timeouts: [f64; 3],
        force: bool,
        waiter: Option<oneshot::Sender<StopReport>>,
    ) {
        if cause == StopCause::User {
            if let Some(run) = self.run.as_mut() {
                run.user_stop = true;
            }
            if let Some(job) = self.job.as_mut() {
                job.user_stop = true;
            }
        }
        if let Phase::Stopping(s) = &mut self.phase {
            s.waiters.extend(waiter);
            if cause == StopCause::User {
                s.cause = StopCause::User;
            }
            if force && s.stage().0 != StopStage::Kill {
                s.stages = stages(timeouts, true);
                s.index = 0;
                s.deadline = Instant::now() + Duration::from_secs_f64(s.stages[0].2);
                s.stage_opened = false;
                s.signalled.clear();
            }
            return self.stop_step().await;
        }
        if self.run.is_none() && self.job.is_none() {
            if let Some(w) = waiter {
                let _ = w.send(super::already_ended(&self.current()));
            }
            return;
        }
        self.move_to(Happening::StopBegun);
        let stages = stages(timeouts, force);
        let now = Instant::now();
        self.phase = Phase::Stopping(Box::new(Stopping {
            cause,
            deadline: now + Duration::from_secs_f64(stages[0].2),
            stages,
            index: 0,
            began: now,
            seen: HashSet::new(),
            signalled: HashSet::new(),
            watch: Vec::new(),
            reaps: self.sh.reaps.subscribe(),
            recheck: None,
            end_grace: false,
            stage_opened: false,
            last_signal: now,
            waiters: waiter.into_iter().collect(),
        }));
        self.publish(|_| {});
        self.record_stage();
        self.stop_step().await;
    }

    /// Queues the current stage's event (committed before anything queued after
    /// it, e.g. the end it leads to) and logs it; the commit is not awaited on the
    /// signalling path.
    pub(crate) fn record_stage(&self) {
        let Phase::Stopping(s) = &self.phase else {
            return;
        };
        let (stage, sig, _) = s.stage();
        let signal = if sig == Signal::KILL {
            "SIGKILL"
        } else {
            "SIGTERM"
        };
        let (pid, job_id) = match (&self.run, &self.job) {
            (Some(run), _) => (Some(run.pid()), None),
            (None, Some(job)) => (None, Some(job.record.job_id.clone())),
            (None, None) => return,
        };
        let slot = match stage {
            StopStage::Term => 0,
            StopStage::SecondTerm => 1,
            _ => 2,
        };
        self.sh.counters.stop_stages[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(agent_id = %self.spec.id, pid, job_id, stage = ?stage, "stop stage: sending {signal}");
        let mut data = serde_json::json!({"stage": stage, "signal": signal, "pid": pid});
        if let Some(job_id) = job_id {
            data["job_id"] = job_id.into();
        }
        self.note_event("stop_stage", data);
    }

    /// One look at the tree: open the stage (its signal to the agent's group
    /// goes out at once, before any scan), finish when nothing is left, signal
    /// what is new, move on when the stage's time is up.
    pub(crate) async fn stop_step(&mut self) {
        if self.job.is_some() {
            return self.job_stop_step().await;
        }
        loop {
            // The first stage looks at the tree first (so its report counts every
            // member); later stages, above all SIGKILL, go out at once.
            if matches!(&self.phase, Phase::Stopping(s) if s.index > 0) {
                self.open_stage();
            }
            let Phase::Stopping(_) = &self.phase else {
                return;
            };
            let Some(run) = &self.run else {
                return self.finish_stop(None);
            };
            // With a cgroup, an empty leaf after a first look is proof enough
            // that the tree is gone (every member found outside it was
            // signalled and has exited): no second scan of the process table.
            if let Phase::Stopping(s) = &self.phase
                && run.ended
                && !s.seen.is_empty()
                && run.leaf().is_some_and(|l| !l.populated())
                && s.watch.iter().all(|h| h.get_ref().has_exited())
            {
                let stage = s.stage().0;
                return self.finish_stop(Some(stage));
            }
            let table = self.sh.tables.fresh(Instant::now(), &self.sh).await;
            let Phase::Stopping(s) = &mut self.phase else {
                return;
            };
            s.reaps.borrow_and_update();
            let members = members(run, &table, &s.seen, self.spec.id.as_str());
            s.seen
                .extend(members.iter().map(|m| (m.pid, m.start_ticks)));
            let leader = (run.pid(), run.proc_.handle.start_ticks());
            let me = std::process::id() as i32;
            let others_gone = members
                .iter()
                .filter(|m| (m.pid, m.start_ticks) != leader)
                .all(|m| m.state == 'Z' && m.ppid != me);
            if others_gone && run.ended && !run.leaf().is_some_and(Leaf::populated) {
                let stage = s.stage().0;
                return self.finish_stop(Some(stage));
            }
            open_stage(s, run);
            signal_members(s, run, &members, leader);
            let now = Instant::now();
            if now >= s.deadline {
                if s.index + 1 < s.stages.len() {
                    s.index += 1;
                    s.deadline = now + Duration::from_secs_f64(s.stage().2);
                    s.stage_opened = false;
                    s.signalled.clear();
                    self.record_stage();
                    continue;
                }
                // A member signalled just now has not had time to die; and once
                // everything has died, only the agent's end may still be on its way
                // to the record (thousands of exits commit at once): neither is
                // "unkillable". Wait for them, bounded.
                let settled = s.last_signal + KILL_SETTLE;
                if now < settled {
                    s.deadline = settled;
                    return;
                }
                let dying = others_gone && (run.exited || run.proc_.handle.has_exited());
                if dying && !s.end_grace {
                    s.end_grace = true;
                    s.deadline = now + END_GRACE;
                    s.recheck = Some(now + Duration::from_millis(5));
                    return;
                }
                tracing::error!(agent_id = %self.spec.id, pid = run.pid(), "processes survived SIGKILL");
                return self.finish_stop(Some(StopStage::Unkillable));
            }
            s.watch.retain(|h| !h.get_ref().has_exited());
            // Only a populated cgroup or zombies of others are left, or the
            // agent's end is being recorded: no event to wait for, look again soon.
            s.recheck = (s.watch.is_empty() && run.exited)
                .then(|| Instant::now() + Duration::from_millis(10));
            return;
        }
    }

    /// Opens the current stage now (see [`open_stage`]).
    fn open_stage(&mut self) {
        if let (Phase::Stopping(s), Some(run)) = (&mut self.phase, &self.run) {
            open_stage(s, run);
        }
    }

    /// The tree is gone (or survived SIGKILL): answer, then end or restart.
    pub(crate) fn finish_stop(&mut self, stage: Option<StopStage>) {
        let Phase::Stopping(s) = &mut self.phase else {
            return;
        };
        let waiters = std::mem::take(&mut s.waiters);
        let leader = self
            .run
            .as_ref()
            .map(|r| (r.pid(), r.proc_.handle.start_ticks()));
        let descendants = (self.job.is_none())
            .then(|| s.seen.iter().filter(|m| Some(**m) != leader).count() as u32);
        let duration_ms = s.began.elapsed().as_secs_f64() * 1000.0;
        let view = self.current();
        let status = view.status();
        let report = StopReport {
            agent_id: self.spec.id.to_string(),
            pid: view.pid,
            stage: stage.unwrap_or(StopStage::AlreadyEnded),
            duration_ms,
            exit_code: status.exit_code,
            exit_signal: status.exit_signal,
            descendants_killed: descendants,
            persistent_status: view.status,
        };
        for w in waiters {
            let _ = w.send(report.clone());
        }
        if self.run.as_ref().is_some_and(|r| !r.ended)
            || self.job.as_ref().is_some_and(|j| !j.ended)
        {
            // Survived SIGKILL and its end is unknown: keep watching for it.
            self.phase = Phase::Running;
            return;
        }
        self.move_to(Happening::TreeGone);
        self.phase = Phase::Ended;
        self.after_run();
    }
}

/// Sends the current stage's signal to the agent's group (and, in the kill
/// stage, `cgroup.kill`) once per stage: the stage's wait counts from its start,
/// however long the scan for the rest of the tree takes.
fn open_stage(s: &mut Stopping, run: &LiveRun) {
    if s.stage_opened {
        return;
    }
    s.stage_opened = true;
    let (_, sig, _) = s.stage();
    if sig == Signal::KILL
        && let Some(leaf) = run.leaf()
        && let Err(e) = leaf.kill()
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(pid = run.pid(), error = %e, "cgroup.kill failed");
    }
    if !run.exited {
        if let Err(e) = run.proc_.handle.signal_group(sig) {
            tracing::warn!(pid = run.pid(), error = %e, "signal failed");
        }
        s.signalled
            .insert((run.pid(), run.proc_.handle.start_ticks()));
    }
    s.last_signal = Instant::now();
}

/// The tree of `run` in `table`.
fn members(
    run: &LiveRun,
    table: &tree::Snapshot,
    known: &HashSet<(i32, u64)>,
    agent_id: &str,
) -> Vec<ProcEntry> {
    let contained = run.leaf().map(Leaf::pids).unwrap_or_default();
    tree::members(
        table,
        &tree::Lookup {
            leader: run.pid(),
            leader_start: run.proc_.handle.start_ticks(),
            leader_unreaped: !run.ended,
            daemon: std::process::id() as i32,
            known,
            agent_id,
            contained: &contained,
        },
    )
}

/// Signals every live member not yet signalled in this stage.
fn signal_members(s: &mut Stopping, run: &LiveRun, members: &[ProcEntry], leader: (i32, u64)) {
    let (_, sig, _) = s.stage();
    for m in members.iter().filter(|m| m.state != 'Z') {
        let key = (m.pid, m.start_ticks);
        if !s.signalled.insert(key) {
            continue;
        }
        s.last_signal = Instant::now();
        if key == leader {
            if !run.exited
                && let Err(e) = run.proc_.handle.signal_group(sig)
            {
                tracing::warn!(pid = m.pid, error = %e, "signal failed");
            }
        } else if let Ok(Some(h)) = ProcessHandle::open_member(m.pid, m.start_ticks) {
            // Identity checked through the pidfd: never a stranger.
            let _ = h.signal(sig);
            // SAFETY: the Arc keeps the ProcessHandle, and so its pidfd, alive and
            // unchanged for as long as the AsyncFd exists.
            if let Ok(afd) =
                unsafe { AsyncFd::register_with_interest(Arc::new(h), Interest::READABLE) }
            {
                s.watch.push(afd);
            }
        }
    }
}

/// Resolves once any watched member has exited.
pub(crate) async fn any_exited(watch: Option<&Vec<AsyncFd<Arc<ProcessHandle>>>>) {
    let Some(watch) = watch.filter(|w| !w.is_empty()) else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| {
        for afd in watch {
            if afd.poll_read_ready(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Snapshots of the process table shared by concurrent stops: a request for a
/// table taken after instant T is answered by the first scan that begins at or
/// after T, and every request waiting meanwhile shares that one scan — so a
/// thousand stops, each asking after its own instant, cost a few scans, not a
/// queue of them.
pub(crate) struct TableCache {
    latest: watch::Sender<Option<(Instant, Arc<tree::Snapshot>)>>,
    scanning: std::sync::atomic::AtomicBool,
}

/// Clears the "a scan is running" flag however the scanning request ends.
struct Scanning<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Scanning<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl TableCache {
    pub(crate) fn new() -> Self {
        Self {
            latest: watch::channel(None).0,
            scanning: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A snapshot taken at or after `after`, with orphans attributed to agents.
    pub(crate) async fn fresh(&self, after: Instant, sh: &Shared) -> Arc<tree::Snapshot> {
        use std::sync::atomic::Ordering;
        let mut rx = self.latest.subscribe();
        loop {
            if let Some((taken, table)) = rx.borrow_and_update().as_ref()
                && *taken >= after
            {
                return table.clone();
            }
            if !self.scanning.swap(true, Ordering::AcqRel) {
                let _flag = Scanning(&self.scanning);
                let taken = Instant::now();
                let owned = lock(&sh.owned).clone();
                let table = Arc::new(
                    tokio::task::spawn_blocking(move || scan(&owned))
                        .await
                        .unwrap_or_else(|_| tree::Snapshot::new(Vec::new())),
                );
                tracing::debug!(
                    took_us = taken.elapsed().as_micros() as u64,
                    "process table scanned"
                );
                self.latest.send_replace(Some((taken, table.clone())));
                return table;
            }
            // A scan is under way: wait for it, then look again (it may have
            // begun before `after`, and then the next one is needed).
            if tokio::time::timeout(std::time::Duration::from_millis(50), rx.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return Arc::new(tree::Snapshot::new(Vec::new()));
            }
        }
    }
}

/// One scan of the process table, indexed, with the daemon's orphans attributed.
pub(crate) fn scan(owned: &HashSet<i32>) -> tree::Snapshot {
    let mut snap = tree::Snapshot::new(platform::process_table());
    snap.attribute_orphans(std::process::id() as i32, owned, platform::environ_agent_id);
    snap
}
