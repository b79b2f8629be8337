//! An agent's owner: one task per supervised agent, a thin loop.
//!
//! The owner holds the agent's one [`Lifecycle`] and everything that goes
//! with the current run — its [`Execution`] (a process tree here, or a job on
//! an engine), who waits for its spawn answer and its stop reports, its
//! restart history — and nothing else touches them. Its loop waits for one
//! thing at a time (a command, an event of the run, the one timer), turns it
//! into a [`Happening`], asks the lifecycle for the move, commits the move to
//! the store and only then publishes it, then carries out what the move asks
//! (a stage's signal, a reap, the next run). What needs no I/O is decided by
//! pure code (`lifecycle/`, `policy.rs`, `ending.rs`).
//!
//! - `start.rs`: a new run (record, process, verification window);
//! - `end.rs`: the main process's end, the tree's end, restarts;
//! - `stop.rs`: stops and their stages;
//! - `commands.rs`: progress, probes, limits, reaping on request;
//! - `pause.rs`: pauses and resumes (freezing and thawing the tree);
//! - `adopt.rs`: taking over what an earlier daemon left (stops and pauses included);
//! - `job.rs`: the same steps for a run on a cluster engine.
//!
//! Blocking work (process and file creation, `/proc` scans, reading a log's
//! tail) goes to blocking threads; the owner awaits it, and its commands
//! queue meanwhile.

mod adopt;
mod commands;
mod end;
mod job;
mod pause;
mod start;
mod stop;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::model::{EventBody, SpawnResponse, StopReport};
use crate::store::{self, RunRecord};

use super::execution::Execution;
use super::lifecycle::{Change, Happening, Lifecycle, State};
use super::policy::History;
use super::spec::Spec;
use super::view::{Published, View};
use super::{Cmd, Shared};

pub(crate) use end::MainEnd;

/// Where an owner begins.
pub(crate) enum Start {
    /// A spawn request; the answer goes to the sender.
    Fresh(Option<SpawnReply>),
    /// The newest run of an id as a previous daemon (or a previous owner of
    /// this one) left it on record: live, stopping, waiting to restart, or
    /// ended with processes left in its cgroup.
    Recover(Box<RunRecord>),
}

/// Where a spawn's answer goes.
pub(crate) type SpawnReply = oneshot::Sender<Result<SpawnResponse>>;

/// What woke the owner.
enum Wake {
    Shutdown,
    Command(Option<Cmd>),
    Run(super::execution::Event),
    Timer,
    /// The stop of the team the last run left has ended.
    TeamGone,
}

pub(crate) struct Owner {
    pub sh: Arc<Shared>,
    pub spec: Arc<Spec>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// Its own command channel, for the run's probe task.
    tx: mpsc::UnboundedSender<Cmd>,
    publisher: watch::Sender<Published>,
    shutdown: watch::Receiver<bool>,
    /// The last published view (the previous run's, until this run is recorded).
    pub view: Option<Arc<View>>,
    /// The agent's state: changed only through [`Owner::apply`].
    life: Lifecycle,
    /// Where the current run executes, once it does.
    pub exec: Option<Execution>,
    /// Who waits for the spawn's answer.
    pub spawn_reply: Option<SpawnReply>,
    /// Who waits for the stop under way to end.
    pub stop_waiters: Vec<oneshot::Sender<StopReport>>,
    pub history: History,
    /// How the current run's main process ended, once it has.
    pub main_end: Option<MainEnd>,
    /// The current run's pauses.
    pub pause: pause::PauseClock,
    /// The stop of the agents below this one that its run's end began: a
    /// restart waits for it.
    team_stop: Option<tokio::task::JoinHandle<()>>,
}

impl Owner {
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
            // An owner begins where its agent is: ended (a spawn moves it to a
            // new run) or as a recovered record says (`adopt.rs`).
            life: Lifecycle::ended(),
            exec: None,
            spawn_reply: None,
            stop_waiters: Vec::new(),
            history: History::default(),
            main_end: None,
            pause: pause::PauseClock::default(),
            team_stop: None,
        }
    }

    /// Lives the agent's life: the first run (or what a previous owner left),
    /// the runs its restart policy starts, until nothing more is planned.
    pub(crate) async fn run(mut self, start: Start) {
        // Every step but the wait is boxed: a step's state lives on the heap only
        // while it runs, so an idle agent's task holds the owner and its wait,
        // not the largest of its steps (thousands of agents, kilobytes each).
        match start {
            Start::Fresh(reply) => {
                self.spawn_reply = reply;
                self.apply(Happening::NewRun);
                Box::pin(self.start_run()).await;
            }
            Start::Recover(record) => Box::pin(self.recover(*record)).await,
        }
        while self.life.wire().is_busy() {
            match self.wait().await {
                Wake::Shutdown | Wake::Command(None) => return,
                Wake::Command(Some(cmd)) => Box::pin(self.on_command(cmd)).await,
                Wake::Run(super::execution::Event::MainExit) => Box::pin(self.on_main_exit()).await,
                Wake::Run(super::execution::Event::Tree) => Box::pin(self.look()).await,
                Wake::Run(super::execution::Event::Job) => Box::pin(self.on_job()).await,
                Wake::Timer => Box::pin(self.on_timer()).await,
                Wake::TeamGone => self.team_stop = None,
            }
        }
        self.publisher.send_modify(|p| p.busy = false);
        // Commands sent before the agent ended that came too late: answered
        // as an ended agent's (a stop that raced the end is `already_ended`).
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.answer_ended(cmd);
        }
    }

    /// The run's main process has ended: the agents below this one are
    /// stopped with it, as its leftovers are (cause `parent`), unless a stop
    /// asked of this agent already did (see `team_stop.rs`).
    fn stop_team(&mut self) {
        if super::team_stop::live_below(&self.sh, &self.spec.id).is_empty() {
            return;
        }
        let (sh, id) = (self.sh.clone(), self.spec.id.clone());
        tracing::info!(agent_id = %id, "the run ended with agents below it: stopping them");
        self.team_stop = Some(tokio::spawn(async move {
            super::team_stop::stop_team(&sh, &id, None, false).await;
        }));
    }

    /// Answers a command that reached an owner whose agent has ended.
    fn answer_ended(&self, cmd: Cmd) {
        match cmd {
            Cmd::Stop { reply, .. } => {
                let _ = reply.send(super::already_ended(&self.current()));
            }
            Cmd::Progress { reply, .. } => {
                let status = self.current().status;
                let _ = reply.send(Err(Error::invalid(
                    &self.spec.id,
                    format!(
                        "progress is only taken from a live agent; this run is {status} (ended)"
                    ),
                )));
            }
            Cmd::Reap { reply } => {
                let _ = reply.send(false);
            }
            Cmd::Pause { reply, .. } => {
                let _ = reply.send(Err(Error::State {
                    agent_id: self.spec.id.to_string(),
                    state: self.life.wire().to_string(),
                    reason: "only a running agent can be paused, and only a paused one resumed; this one has ended".into(),
                }));
            }
            Cmd::Probe { .. } | Cmd::Limit { .. } | Cmd::Note { .. } => {}
            #[cfg(test)]
            Cmd::Fail => {}
        }
    }

    /// The one timer: whatever comes next in the current state.
    fn deadline(&self) -> Option<Instant> {
        match self.life.state() {
            State::Running => self.runtime_deadline(),
            // A queued job: the spawn is answered after a while.
            State::Starting { verify_until: None } => match &self.exec {
                Some(Execution::Job(job)) if self.spawn_reply.is_some() => Some(job.answer_by),
                _ => None,
            },
            // The next run waits for the old run's team to be gone (see
            // `stop_team`); commands and shutdown are served meanwhile.
            State::Backoff { .. } if self.team_stop.is_some() => None,
            _ => self.life.deadline(),
        }
    }

    /// When the run outlives `max_runtime_s` (never past a far future): the
    /// time it spent paused does not count (while it is paused, the owner
    /// sets no timer for it).
    fn runtime_deadline(&self) -> Option<Instant> {
        let limit = self.spec.request.max_runtime_s?;
        let since = self.exec.as_ref()?.running_since()?;
        let limit = super::lifecycle::secs_saturating(limit).saturating_add(self.pause.total);
        Some(super::lifecycle::later(since, limit))
    }

    async fn wait(&mut self) -> Wake {
        let deadline = self.deadline();
        let stopping = matches!(self.life.state(), State::Stopping(_));
        let Self {
            shutdown,
            rx,
            exec,
            team_stop,
            ..
        } = self;
        let run = async {
            match exec.as_mut() {
                Some(e) => e.event(stopping).await,
                None => std::future::pending().await,
            }
        };
        let team = async {
            match team_stop.as_mut() {
                Some(t) => {
                    let _ = t.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => Wake::Shutdown,
            cmd = rx.recv() => Wake::Command(cmd),
            ev = run => Wake::Run(ev),
            () = team => Wake::TeamGone,
            () = sleep_until(deadline) => Wake::Timer,
        }
    }

    async fn on_timer(&mut self) {
        let now = super::now();
        if self.deadline().is_none_or(|d| d > now) {
            return;
        }
        match self.life.state() {
            State::Starting {
                verify_until: Some(_),
            } => match &self.exec {
                Some(Execution::Job(_)) => self.job_verify().await,
                _ => self.verified().await,
            },
            State::Starting { verify_until: None } => self.answer_pending(),
            State::Running => self.runtime_exceeded().await,
            State::Stopping(_) => self.stage_due().await,
            State::Backoff { .. } => {
                self.apply(Happening::BackoffElapsed);
                self.history
                    .restarts_at
                    .push(super::policy::epoch_s(SystemTime::now()));
                self.start_run().await;
            }
            State::Paused | State::Ended => {}
        }
    }

    /// Moves the lifecycle on `what`. A refused move is a bug: said loudly,
    /// caught by tests (debug builds), and the owner carries on from where it is.
    pub(crate) fn apply(&mut self, what: Happening) -> Option<Change> {
        match self.life.apply(what) {
            Ok(change) => {
                if change.from != change.to {
                    tracing::debug!(agent_id = %self.spec.id, from = %change.from, to = %change.to, "transition");
                }
                Some(change)
            }
            Err(e) => {
                tracing::error!(agent_id = %self.spec.id, error = %e, "refused an illegal move; this is a bug in corral");
                debug_assert!(false, "{e}");
                None
            }
        }
    }

    pub(crate) fn life(&self) -> &Lifecycle {
        &self.life
    }

    /// Where an owner that takes over a recorded agent begins (before its
    /// loop runs; every later change goes through [`Owner::apply`]).
    fn begin_at(&mut self, life: Lifecycle) {
        self.life = life;
    }

    /// Queues an event that is not a transition (a limit hit, a probe result,
    /// a stop stage): it commits before anything queued after it; a failure
    /// is logged.
    pub(crate) fn note_event(&self, body: EventBody) {
        let commit = self
            .sh
            .store
            .submit(store::record_event(self.current().run_id, body));
        self.log_failure(commit, "cannot record an event");
    }

    /// Logs the failure of a queued write nobody waits for.
    pub(crate) fn log_failure(
        &self,
        commit: impl Future<Output = Result<i64>> + Send + 'static,
        what: &'static str,
    ) {
        let agent_id = self.spec.id.clone();
        tokio::spawn(async move {
            if let Err(e) = commit.await {
                tracing::warn!(agent_id = %agent_id, error = %e, "{what}");
            }
        });
    }

    /// The last published view (every owner publishes one before it takes commands).
    pub(crate) fn current(&self) -> Arc<View> {
        match &self.view {
            Some(v) => v.clone(),
            None => {
                let record = self.new_record(0, 0, store::now_rfc3339(), 0);
                Arc::new(View::from_record(&record, self.spec.clone()))
            }
        }
    }

    /// Publishes a new view: the last one changed by `change`, with the
    /// lifecycle's state and stop. Call only after the change is committed.
    pub(crate) fn publish(&mut self, change: impl FnOnce(&mut View)) {
        let mut view = (*self.current()).clone();
        change(&mut view);
        view.state = self.life.wire();
        view.stop = self.life.stop().map(|s| s.info());
        view.paused_s = self.pause.total.as_secs_f64();
        view.paused_since = self.pause.since.map(|(_, wall)| wall);
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

    /// The stop reports' receiver side of a new waiter.
    pub(crate) fn commands(&self) -> mpsc::UnboundedSender<Cmd> {
        self.tx.clone()
    }

    /// Publishes the first view of a recovered agent that nothing needs: as on record.
    pub(crate) fn publisher(&self) -> &watch::Sender<Published> {
        &self.publisher
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // A spawn whose owner went away (shutdown, or a failed owner whose
        // successor takes over) still gets an answer.
        if let Some(reply) = self.spawn_reply.take() {
            let _ = reply.send(Err(Error::StoreClosed));
        }
    }
}
