//! An agent's owner: one task per supervised agent.
//!
//! The actor owns everything about its agent that changes — its state
//! ([`Phase`], whose tags move only as [`state::next`] allows), its process, its
//! stop in progress, its restart plan — and nothing else touches them. It loops
//! on one `select!` over: its command channel (stop, progress), its process's
//! pidfd (the exit), the members of its tree while it stops them, and one timer
//! (the end of the verification window, the runtime limit, the next stop stage,
//! the planned restart). Every transition is committed to the store first and
//! published second (`publish`), so readers only ever see what is on disk.
//!
//! Blocking work (process and file creation, `/proc` scans, reading a log's
//! tail) goes to blocking threads; the actor awaits it, and its commands queue
//! meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::model::SpawnResponse;
use crate::platform::cgroup::Leaf;
use crate::store::{self, RunRecord};

use super::policy::History;
use super::spec::Spec;
use super::state::{self, Happening, Tag};
use super::stop::{StopCause, Stopping};
use super::view::{Proc, Published, View};
use super::{Cmd, Shared};

/// Where an actor begins.
pub(crate) enum Start {
    /// A spawn request; the answer goes to the sender (none for a restart).
    Fresh(Option<SpawnReply>),
    /// A run the store holds as live, found when the daemon started.
    Adopt(Box<RunRecord>),
    /// An ended run whose restart was planned before the daemon stopped.
    Planned(Box<RunRecord>),
}

/// Where a spawn's answer goes.
pub(crate) type SpawnReply = oneshot::Sender<Result<SpawnResponse>>;

/// The actor's state, with what each state needs.
pub(crate) enum Phase {
    /// The run is recorded; its process is being created.
    Starting,
    /// The verification window is open until `until`.
    Verifying { until: Instant },
    /// Verified and running.
    Running,
    /// A staged stop is under way.
    Stopping(Box<Stopping>),
    /// The next run starts at `until`.
    Backoff { until: Instant },
    /// Nothing more to do: the actor ends.
    Ended,
}

impl Phase {
    pub(crate) fn tag(&self) -> Tag {
        match self {
            Self::Starting => Tag::Starting,
            Self::Verifying { .. } => Tag::Verifying,
            Self::Running => Tag::Running,
            Self::Stopping(_) => Tag::Stopping,
            Self::Backoff { .. } => Tag::Backoff,
            Self::Ended => Tag::Ended,
        }
    }
}

/// The current run's process.
pub(crate) struct LiveRun {
    pub proc_: Arc<Proc>,
    /// The pidfd, registered with the runtime: readable once the process exits.
    afd: AsyncFd<Arc<Proc>>,
    /// Started by this daemon (so this daemon reaps it); false when re-adopted.
    pub our_child: bool,
    /// When it started (monotonic), for the runtime limit.
    pub started: Instant,
    /// Its exit has been read.
    pub exited: bool,
    /// Its end is committed (and, for our child, it is reaped).
    pub ended: bool,
    /// A user asked for the stop: the run is `cancelled` and never restarted.
    pub user_stop: bool,
    /// The run's probe task, when it has probes.
    pub probes: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.stop_probes();
    }
}

impl LiveRun {
    pub(crate) fn new(proc_: Arc<Proc>, our_child: bool) -> std::io::Result<Self> {
        // SAFETY: the pidfd belongs to the ProcessHandle inside the Arc, which the
        // AsyncFd keeps alive, and a ProcessHandle never changes its pidfd.
        let afd = unsafe { AsyncFd::register_with_interest(proc_.clone(), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let age = (crate::platform::boottime_seconds() - proc_.started_s).max(0.0);
        Ok(Self {
            afd,
            started: Instant::now()
                .checked_sub(Duration::from_secs_f64(age))
                .unwrap_or_else(Instant::now),
            proc_,
            our_child,
            exited: false,
            ended: false,
            user_stop: false,
            probes: None,
        })
    }

    /// Ends the run's probe checks (a check in progress is killed and reaped).
    pub(crate) fn stop_probes(&mut self) {
        if let Some(task) = self.probes.take() {
            task.abort();
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.proc_.handle.pid()
    }

    pub(crate) fn leaf(&self) -> Option<&Leaf> {
        self.proc_.leaf.as_ref()
    }
}

/// A restart decided when a run ended, carried out once its tree is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub at: SystemTime,
    pub attempt: u32,
}

/// What woke the actor.
enum Wake {
    Shutdown,
    Command(Option<Cmd>),
    Exited(bool),
    Tree,
    Job,
    Timer,
}

pub(crate) struct Actor {
    pub sh: Arc<Shared>,
    pub spec: Arc<Spec>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// Its own command channel, for the run's probe task.
    tx: mpsc::UnboundedSender<Cmd>,
    publisher: watch::Sender<Published>,
    shutdown: watch::Receiver<bool>,
    /// The last published view (the previous run's, until this run is recorded).
    pub view: Option<Arc<View>>,
    pub phase: Phase,
    /// The current run's process, when it runs on this host.
    pub run: Option<LiveRun>,
    /// The current run's job, when it is placed on a cluster engine.
    pub job: Option<super::placement::job::JobRun>,
    /// Who waits for the spawn's answer.
    pub spawn_reply: Option<SpawnReply>,
    pub history: History,
    pub plan: Option<Plan>,
}

impl Actor {
    pub(crate) fn new(
        sh: Arc<Shared>,
        spec: Arc<Spec>,
        (tx, rx): (mpsc::UnboundedSender<Cmd>, mpsc::UnboundedReceiver<Cmd>),
        publisher: watch::Sender<Published>,
        previous: Option<Arc<View>>,
    ) -> Self {
        Self {
            shutdown: sh.shutdown.subscribe(),
            sh,
            spec,
            rx,
            tx,
            publisher,
            view: previous,
            phase: Phase::Starting,
            run: None,
            job: None,
            spawn_reply: None,
            history: History::default(),
            plan: None,
        }
    }

    /// Lives the agent's life: the first run (or adoption), the runs its restart
    /// policy starts, until nothing more is planned.
    pub(crate) async fn run(mut self, start: Start) {
        // Every step but the wait is boxed: a step's state lives on the heap only
        // while it runs, so an idle agent's task holds the actor and its wait,
        // not the largest of its steps (thousands of agents, kilobytes each).
        match start {
            Start::Fresh(reply) => {
                self.spawn_reply = reply;
                Box::pin(self.start_run()).await;
            }
            Start::Adopt(record) => Box::pin(self.adopt(*record)).await,
            Start::Planned(record) => Box::pin(self.resume_backoff(*record)).await,
        }
        while !matches!(self.phase, Phase::Ended) {
            match self.wait().await {
                Wake::Shutdown | Wake::Command(None) => return,
                Wake::Command(Some(cmd)) => Box::pin(self.on_command(cmd)).await,
                Wake::Exited(true) => Box::pin(self.on_exit()).await,
                Wake::Exited(false) => {}
                Wake::Tree => Box::pin(self.stop_step()).await,
                Wake::Job => Box::pin(self.on_job()).await,
                Wake::Timer => Box::pin(self.on_timer()).await,
            }
        }
        let busy = self.phase.tag().is_busy();
        self.publisher.send_modify(|p| p.busy = busy);
    }

    /// The one timer: whatever comes next in the current state.
    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Verifying { until } | Phase::Backoff { until } => Some(*until),
            Phase::Running => {
                let started = match (&self.run, &self.job) {
                    (Some(run), _) => Some(run.started),
                    (None, Some(job)) => job.running_since,
                    (None, None) => None,
                };
                self.spec
                    .request
                    .max_runtime_s
                    .zip(started)
                    .map(|(limit, started)| started + Duration::from_secs_f64(limit))
            }
            Phase::Stopping(s) => Some(s.next_wake()),
            // A queued job: the spawn is answered after a while.
            Phase::Starting => self
                .job
                .as_ref()
                .filter(|_| self.spawn_reply.is_some())
                .map(|j| j.answer_by),
            Phase::Ended => None,
        }
    }

    async fn wait(&mut self) -> Wake {
        let deadline = self.deadline();
        let Self {
            shutdown,
            rx,
            run,
            job,
            phase,
            ..
        } = self;
        let leader = run.as_ref().filter(|r| !r.exited);
        let stopping = match phase {
            Phase::Stopping(s) => Some(s.as_mut()),
            _ => None,
        };
        let (members, reaps) = match stopping {
            Some(s) => (Some(&s.watch), Some(&mut s.reaps)),
            None => (None, None),
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => Wake::Shutdown,
            cmd = rx.recv() => Wake::Command(cmd),
            exited = exited(leader) => Wake::Exited(exited),
            () = super::stop::any_exited(members) => Wake::Tree,
            () = reaped(reaps) => Wake::Tree,
            () = super::placement::job::changed(job.as_mut()) => Wake::Job,
            () = sleep_until(deadline) => Wake::Timer,
        }
    }

    async fn on_timer(&mut self) {
        match self.phase {
            Phase::Verifying { until } if Instant::now() >= until => {
                if self.job.is_some() {
                    self.job_verify().await;
                } else {
                    self.verify_elapsed().await;
                }
            }
            Phase::Starting if self.job.is_some() => self.answer_pending(),
            Phase::Running => {
                let limit = self.spec.request.max_runtime_s.unwrap_or(f64::INFINITY);
                tracing::warn!(agent_id = %self.spec.id, limit_s = limit, "run exceeded max_runtime_s; stopping it");
                let data = serde_json::json!({"limit": "max_runtime_s", "value": limit});
                self.note_event("runtime_exceeded", data);
                let timeouts = self.spec.stop_timeouts;
                self.begin_stop(StopCause::Runtime { limit_s: limit }, timeouts, false, None)
                    .await;
            }
            Phase::Stopping(_) => self.stop_step().await,
            Phase::Backoff { until } if Instant::now() >= until => {
                self.move_to(Happening::BackoffElapsed);
                self.phase = Phase::Starting;
                self.history
                    .restarts_at
                    .push(super::run::epoch_s(SystemTime::now()));
                self.start_run().await;
            }
            _ => {}
        }
    }

    async fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Stop {
                timeouts,
                force,
                reply,
            } => match self.phase {
                Phase::Backoff { .. } => self.cancel_restart(reply).await,
                // A queued job is taken out of the queue.
                Phase::Starting if self.job.is_some() => {
                    self.begin_stop(StopCause::User, timeouts, force, Some(reply))
                        .await
                }
                Phase::Ended | Phase::Starting => {
                    let _ = reply.send(self.report_now());
                }
                _ => {
                    self.begin_stop(StopCause::User, timeouts, force, Some(reply))
                        .await
                }
            },
            Cmd::Progress {
                progress,
                message,
                reply,
            } => {
                let _ = reply.send(self.record_progress(progress, message).await);
            }
            Cmd::Probe { run, outcome } => self.on_probe(run, outcome).await,
            Cmd::Limit { run, reason, data } => {
                let current = matches!(self.phase, Phase::Verifying { .. } | Phase::Running)
                    && self.view.as_ref().is_some_and(|v| v.run == run);
                if current {
                    tracing::warn!(agent_id = %self.spec.id, reason = %reason, "limit exceeded; stopping the run");
                    self.note_event("limit", data);
                    let timeouts = self.spec.stop_timeouts;
                    self.begin_stop(StopCause::Limit(reason), timeouts, false, None)
                        .await;
                }
            }
        }
    }

    async fn record_progress(&mut self, progress: u8, message: Option<String>) -> Result<()> {
        let view = self.current();
        let running = match (&self.run, &self.job) {
            (Some(run), _) => !run.exited,
            (None, Some(job)) => !job.ended && job.running_since.is_some(),
            (None, None) => false,
        };
        if !view.status.is_live() || !running {
            return Err(Error::invalid(
                &self.spec.id,
                format!(
                    "progress is only taken from a live agent; this run is {}",
                    view.status
                ),
            ));
        }
        let at = store::now_rfc3339();
        self.sh
            .store
            .commit(store::set_progress(
                view.run_id,
                progress,
                message.clone(),
                at.clone(),
            ))
            .await?;
        self.publish(|v| {
            v.progress = Some(progress);
            v.progress_message = message;
            v.progress_at = Some(at);
        });
        Ok(())
    }

    /// Starts the current run's probes, when it has any.
    pub(crate) fn start_probes(&mut self) {
        let view = self.current();
        if self.run.is_none() && self.job.is_none() {
            return;
        }
        let started =
            humantime::parse_rfc3339_weak(&view.started_at).unwrap_or_else(|_| SystemTime::now());
        let probes = super::probes::start(super::probes::Target {
            sh: self.sh.clone(),
            spec: self.spec.clone(),
            run: view.run,
            run_id: view.run_id,
            log_dir: view.log_dir.clone(),
            started,
            published: self.publisher.subscribe(),
            tx: self.tx.clone(),
        });
        match (self.run.as_mut(), self.job.as_mut()) {
            (Some(run), _) => run.probes = probes,
            (None, Some(job)) => job.probes = probes,
            (None, None) => {}
        }
    }

    /// A probe's result: counted, published, and — for `failures` liveness
    /// failures in a row — the end of the run.
    async fn on_probe(&mut self, run: u32, outcome: super::probes::Outcome) {
        use super::probes::Which;
        let live = matches!(self.phase, Phase::Verifying { .. } | Phase::Running);
        if !live || self.view.as_ref().is_none_or(|v| v.run != run) {
            return;
        }
        let threshold = self.spec.request.probes.as_ref().map_or(3, |p| p.failures);
        let mut probes = self.current().probes.clone().unwrap_or_default();
        let slot = match outcome.which {
            Which::Liveness => &mut probes.liveness,
            Which::Readiness => &mut probes.readiness,
        };
        let Some(state) = slot.as_mut() else { return };
        let (failures, changed) = super::probes::record(state, &outcome, store::now_rfc3339());
        let kind = state.kind.clone();
        let was_ready = self.current().ready;
        let ready = match outcome.which {
            Which::Readiness if outcome.passed => Some(true),
            Which::Readiness if failures >= threshold => Some(false),
            _ => was_ready,
        };
        if changed || ready != was_ready {
            let which = if outcome.which == Which::Liveness {
                "liveness"
            } else {
                "readiness"
            };
            let result = if outcome.passed { "passed" } else { "failed" };
            tracing::info!(agent_id = %self.spec.id, probe = which, kind = %kind, result, output = %outcome.output, "probe result changed");
            self.note_event(
                "probe",
                serde_json::json!({"probe": which, "kind": kind, "result": result,
                                   "output": outcome.output, "ready": ready}),
            );
        }
        self.publish(|v| {
            v.probes = Some(probes);
            v.ready = ready;
        });
        if outcome.which == Which::Liveness && failures >= threshold {
            let reason = format!(
                "liveness probe ({kind}) failed {failures} times in a row; last: {}",
                outcome.output
            );
            tracing::warn!(agent_id = %self.spec.id, reason = %reason, "liveness failed; stopping the run");
            let timeouts = self.spec.stop_timeouts;
            self.begin_stop(StopCause::Limit(reason), timeouts, false, None)
                .await;
        }
    }

    /// Queues an event that is not a transition (a limit hit, a probe result):
    /// it commits before anything queued after it; a failure is logged.
    pub(crate) fn note_event(&self, kind: &'static str, data: serde_json::Value) {
        let commit = self
            .sh
            .store
            .submit(store::record_event(self.current().run_id, kind, data));
        let agent_id = self.spec.id.clone();
        tokio::spawn(async move {
            if let Err(e) = commit.await {
                tracing::warn!(agent_id = %agent_id, error = %e, kind, "cannot record an event");
            }
        });
    }

    /// A planned restart called off by a user stop.
    async fn cancel_restart(&mut self, reply: oneshot::Sender<crate::model::StopReport>) {
        let run_id = self.current().run_id;
        if let Err(e) = self
            .sh
            .store
            .commit_retrying(store::cancel_restart(run_id))
            .await
        {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a cancelled restart");
        }
        self.plan = None;
        self.move_to(Happening::RestartCancelled);
        self.phase = Phase::Ended;
        self.publish(|v| v.next_restart_at = None);
        tracing::info!(agent_id = %self.spec.id, "planned restart cancelled on request");
        let _ = reply.send(self.report_now());
    }

    /// The report of a stop that found nothing to stop.
    fn report_now(&self) -> crate::model::StopReport {
        super::already_ended(&self.current())
    }

    /// The last published view (every actor publishes one before it takes commands).
    pub(crate) fn current(&self) -> Arc<View> {
        match &self.view {
            Some(v) => v.clone(),
            None => {
                let record = self.new_record(0, 0, store::now_rfc3339(), 0);
                Arc::new(View::from_record(&record, self.spec.clone()))
            }
        }
    }

    /// Moves to the state `what` leads to (as [`state::next`] allows).
    pub(crate) fn move_to(&mut self, what: Happening) -> Tag {
        let from = self.phase.tag();
        match state::next(from, what) {
            Some(to) => {
                tracing::debug!(agent_id = %self.spec.id, from = from.as_str(), to = to.as_str(), "transition");
                to
            }
            None => {
                // A bug, never a user's doing: say so, and carry on from where we are.
                tracing::error!(agent_id = %self.spec.id, ?from, ?what, "illegal transition ignored");
                debug_assert!(false, "illegal transition {from:?} + {what:?}");
                from
            }
        }
    }

    /// Publishes a new view: the last one changed by `change`, with the current
    /// state's tag. Call only after the change is committed.
    pub(crate) fn publish(&mut self, change: impl FnOnce(&mut View)) {
        let mut view = (*self.current()).clone();
        change(&mut view);
        view.tag = self.phase.tag();
        let view = Arc::new(view);
        self.view = Some(view.clone());
        self.publisher.send_modify(|p| p.view = Some(view));
    }

    /// Answers the spawn request, if one is waiting.
    pub(crate) fn answer(&mut self, answer: Result<SpawnResponse>) {
        if let Some(reply) = self.spawn_reply.take() {
            let _ = reply.send(answer);
        }
    }

    /// Releases the run's cgroup once nothing is left in it, on a blocking
    /// thread: removing a cgroup takes the kernel's cgroup lock, and a thousand
    /// stops at once would queue on the async workers. Nothing waits for it (a
    /// leaf still there is swept later).
    pub(crate) fn release_leaf(&self, leaf: Option<&Leaf>) {
        let Some(leaf) = leaf.cloned() else { return };
        let sh = self.sh.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(root) = &sh.cgroup
                && !leaf.populated()
            {
                let _ = root.remove_leaf(&leaf);
            }
        });
    }

    /// The run is over and its tree dealt with: wait for a planned restart, or end.
    pub(crate) fn after_run(&mut self) {
        let run = self.run.take();
        self.job = None;
        self.release_leaf(run.as_ref().and_then(LiveRun::leaf));
        match self.plan.take() {
            Some(plan) => {
                let delay = plan
                    .at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                self.phase = match self.move_to(Happening::RestartPlanned) {
                    Tag::Backoff => Phase::Backoff {
                        until: Instant::now() + delay,
                    },
                    _ => Phase::Ended,
                };
                self.history.attempt = plan.attempt;
                self.publish(|_| {});
            }
            None => {
                self.phase = Phase::Ended;
                self.publish(|_| {});
            }
        }
    }
}

/// Resolves once the leader's pidfd is readable: true when it has really exited.
async fn exited(run: Option<&LiveRun>) -> bool {
    let Some(run) = run else {
        return std::future::pending().await;
    };
    match run.afd.readable().await {
        Ok(mut ready) => {
            if run.proc_.handle.has_exited() {
                true
            } else {
                ready.clear_ready();
                false
            }
        }
        Err(e) => {
            tracing::error!(pid = run.pid(), error = %e, "cannot wait on a pidfd");
            std::future::pending().await
        }
    }
}

async fn reaped(reaps: Option<&mut watch::Receiver<u64>>) {
    match reaps {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        // A spawn whose owner went away (shutdown) still gets an answer.
        if let Some(reply) = self.spawn_reply.take() {
            let _ = reply.send(Err(Error::StoreClosed));
        }
    }
}
