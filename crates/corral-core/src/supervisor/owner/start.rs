//! A new run — the one path first spawns, re-spawns and restarts take.
//!
//! The run is recorded (`starting`, no pid) and published before its process
//! exists, so its id, status and progress route answer from the first
//! instruction the agent runs. The process is created on a blocking thread;
//! its pid is committed before the agent is shown running or the spawn
//! answered. A start that cannot be recorded is killed with its tree: it was
//! never acknowledged, so it must not run.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::error::Error;
use crate::model::{AgentState, PersistentStatus};
use crate::store::{self, Process, RunRecord, Transition};

use super::super::execution::local::{self, StartError, Started, probe_state, sample_now};
use super::super::execution::{self as placement, Execution, LocalRun};
use super::super::lifecycle::Happening;
use super::super::view::{Proc, View};
use super::Owner;

impl Owner {
    /// Starts a new run of the agent: record, files, process, then the
    /// verification window (or `running` at once with `verify_ms` 0).
    pub(crate) async fn start_run(&mut self) {
        let run = self.view.as_ref().map_or(1, |v| v.run + 1);
        let started_at = store::now_rfc3339();
        let attempt = self.history.attempt;
        let write = store::insert_run(
            &self.spec.request,
            &self.spec.agent_dir,
            run,
            attempt,
            &started_at,
        );
        // A spawn fails fast when the store refuses (503); a planned restart
        // waits for the store instead of ending where it stands.
        let committed = if self.spawn_reply.is_some() {
            self.sh.store.commit(write).await
        } else {
            self.sh.store.commit_retrying(write).await
        };
        let run_id = match committed {
            Ok(id) => id,
            Err(e) => {
                // Nothing happened: the agent stays as it was.
                self.apply(Happening::StartFailed);
                let e = match e {
                    Error::Store { .. } | Error::StoreGone { .. } => Error::Unavailable {
                        reason: e.to_string(),
                    },
                    other => other,
                };
                tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a new run");
                self.answer(Err(e));
                return;
            }
        };
        let record = self.new_record(run_id, run, started_at, attempt);
        self.exec = None;
        self.main_end = None;
        self.pause = super::pause::PauseClock::default();
        self.view = Some(Arc::new(View::from_record(&record, self.spec.clone())));
        // Registered before its process exists: an agent that reports progress
        // in its first instruction finds itself.
        self.publish(|_| {});
        if placement::slurm_of(self.spec.request.placement.as_ref()).is_some() {
            // Boxed: a local start does not carry the engine's larger state.
            return Box::pin(self.submit_job()).await;
        }
        #[cfg(test)]
        if let Some(world) = self.sh.config.fake.clone() {
            return self.start_fake(world).await;
        }
        match local::start(&self.sh, &self.spec, run_id, run).await {
            Ok(started) => self.started(started).await,
            Err(e) => self.start_failed(e).await,
        }
    }

    /// A run in `spawning`, before it has a process.
    pub(crate) fn new_record(
        &self,
        run_id: i64,
        run: u32,
        started_at: String,
        attempt: u32,
    ) -> RunRecord {
        RunRecord {
            run_id,
            run,
            agent_id: self.spec.id.to_string(),
            status: PersistentStatus::Spawning,
            spec: self.spec.request.clone(),
            log_dir: self.spec.agent_dir.join("runs").join(run.to_string()),
            pid: None,
            start_ticks: None,
            boot_id: None,
            started_at,
            ended_at: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            progress: None,
            progress_message: None,
            progress_at: None,
            next_restart_at: None,
            restart_attempt: attempt,
            job: None,
            state: Some(AgentState::Starting),
            stop: None,
            paused_at: None,
            paused_s: 0.0,
        }
    }

    pub(crate) async fn start_failed(&mut self, e: StartError) {
        let program = self
            .spec
            .request
            .command
            .first()
            .cloned()
            .unwrap_or_default();
        let error = match e {
            StartError::Files(f) => Error::Files {
                agent_id: self.spec.id.to_string(),
                field: "agent_dir",
                path: f.path,
                source: f.source,
            },
            StartError::Exec(source) => Error::Spawn {
                agent_id: self.spec.id.to_string(),
                program,
                source,
            },
            StartError::Engine(reason) => Error::Engine {
                agent_id: self.spec.id.to_string(),
                engine: "slurm",
                reason,
            },
            StartError::User(reason) => Error::User {
                agent_id: self.spec.id.to_string(),
                reason,
            },
        };
        let reason = error.to_string();
        tracing::warn!(agent_id = %self.spec.id, error = %reason, "spawn failed");
        self.record_failed_start(reason).await;
        self.answer(Err(error));
    }

    /// Records a run that never got going as failed; nothing of it runs.
    pub(crate) async fn record_failed_start(&mut self, reason: String) {
        let ended_at = store::now_rfc3339();
        let write = store::transition(
            self.current().run_id,
            Transition {
                state: Some(AgentState::Ended),
                status: Some(PersistentStatus::Failed),
                ended_at: Some(ended_at.clone()),
                end_reason: Some(reason.clone()),
                ..Transition::default()
            },
        );
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a failed start");
        }
        self.apply(Happening::StartFailed);
        self.exec = None;
        self.publish(|v| {
            v.status = PersistentStatus::Failed;
            v.ended_at = Some(ended_at);
            v.end_reason = Some(reason);
            v.runtime_at_end = Some(0.0);
        });
    }

    /// The process runs: record its identity, show it, open the window.
    async fn started(&mut self, started: Started) {
        let verify = !self.spec.verify.is_zero();
        let (status, verify_until) = self.window();
        let pid = started.handle.pid();
        let containment = if started.leaf.is_some() {
            "cgroup"
        } else {
            "process-group"
        };
        let limits = started.limits;
        let ticks = started.handle.start_ticks();
        let proc_ = Arc::new(Proc::new(
            started.handle,
            started.leaf,
            self.sh.ticks_per_second,
        ));
        let mut run = match LocalRun::new(proc_.clone(), true) {
            Ok(run) => run,
            Err(e) => {
                tracing::error!(agent_id = %self.spec.id, pid, error = %e, "cannot watch the new process");
                local::kill_unwatched(&self.sh, proc_).await;
                return self.start_failed(StartError::Exec(e)).await;
            }
        };
        let target = self.peek(Happening::Started { verify_until });
        let write = store::transition(
            self.current().run_id,
            Transition {
                state: target,
                status: Some(status),
                process: Some(Process {
                    pid,
                    start_ticks: ticks,
                    boot_id: self.sh.boot_id.clone(),
                }),
                ..Transition::default()
            },
        );
        if let Err(e) = self.sh.store.commit(write).await {
            // Never acknowledged, so it must not run: kill its tree, record the failed start.
            tracing::error!(agent_id = %self.spec.id, pid, error = %e, "cannot record a started process; killing it");
            run.kill_unrecorded(&self.sh, self.spec.id.as_str()).await;
            self.release_leaf(run.leaf());
            self.record_failed_start(format!(
                "the start could not be recorded ({e}); the process was killed"
            ))
            .await;
            self.answer(Err(Error::Unavailable {
                reason: e.to_string(),
            }));
            return;
        }
        self.sh
            .counters
            .spawns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sample_now(&proc_, self.sh.page_size);
        self.exec = Some(Execution::Local(run));
        self.apply(Happening::Started { verify_until });
        self.publish(|v| {
            v.status = status;
            v.pid = Some(pid);
            v.proc_ = Some(proc_);
            v.containment = containment;
            v.limits = limits;
            (v.ready, v.probes) = probe_state(&v.spec);
        });
        self.start_probes();
        tracing::info!(agent_id = %self.spec.id, pid, run = self.current().run, "agent started");
        if !verify {
            let response = self.current().spawn_response(None);
            self.answer(Ok(response));
        }
    }

    /// A run on the fake platform (tests): the same steps as a process's.
    #[cfg(test)]
    async fn start_fake(&mut self, world: Arc<super::super::execution::fake::FakeWorld>) {
        let run_id = self.current().run_id;
        world.start(run_id);
        let (status, verify_until) = self.window();
        let write = store::transition(
            run_id,
            Transition {
                state: self.peek(Happening::Started { verify_until }),
                status: Some(status),
                ..Transition::default()
            },
        );
        if let Err(e) = self.sh.store.commit(write).await {
            return self.answer(Err(Error::Unavailable {
                reason: e.to_string(),
            }));
        }
        let run = super::super::execution::fake::FakeRun::new(world, run_id);
        self.exec = Some(Execution::Fake(Box::new(run)));
        self.apply(Happening::Started { verify_until });
        self.publish(|v| v.status = status);
        if verify_until.is_none() {
            let response = self.current().spawn_response(None);
            self.answer(Ok(response));
        }
    }

    /// A run that has just begun: `spawning` with a verification window until
    /// the returned instant, or `running` at once without one.
    pub(crate) fn window(&self) -> (PersistentStatus, Option<Instant>) {
        if self.spec.verify.is_zero() {
            (PersistentStatus::Running, None)
        } else {
            let until = super::super::lifecycle::later(super::super::now(), self.spec.verify);
            (PersistentStatus::Spawning, Some(until))
        }
    }

    /// The state `what` would lead to, without moving (for a commit that must
    /// come before the move).
    pub(crate) fn peek(&self, what: Happening) -> Option<AgentState> {
        self.life().clone().apply(what).ok().map(|c| c.to)
    }

    /// The window closed with the agent alive: it is `running`.
    pub(crate) async fn verified(&mut self) {
        let run_id = self.current().run_id;
        let write = store::transition(
            run_id,
            Transition {
                state: Some(AgentState::Running),
                status: Some(PersistentStatus::Running),
                ..Transition::default()
            },
        );
        if let Err(e) = self.sh.store.commit(write.clone()).await {
            let pid = self.current().pid;
            self.answer(Err(Error::Unavailable {
                reason: format!(
                    "agent {} started (pid {}) but its start cannot be recorded: {e}; it will be once the store takes writes",
                    self.spec.id,
                    pid.unwrap_or(0)
                ),
            }));
            if let Err(e) = self.sh.store.commit_retrying(write).await {
                tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a verified start");
            }
        }
        self.apply(Happening::Verified);
        if let Some(Execution::Local(run)) = &self.exec {
            // A sample at the end of the window shows the settled process.
            sample_now(&run.proc_, self.sh.page_size);
        }
        self.publish(|v| v.status = PersistentStatus::Running);
        tracing::info!(agent_id = %self.spec.id, pid = self.current().pid, "agent running");
        let response = self.current().spawn_response(None);
        self.answer(Ok(response));
    }

    /// Starts the current run's probes, when it has any.
    pub(crate) fn start_probes(&mut self) {
        let view = self.current();
        let Some(cell) = view.probes.clone() else {
            return;
        };
        if self.exec.is_none() {
            return;
        }
        let started =
            humantime::parse_rfc3339_weak(&view.started_at).unwrap_or_else(|_| SystemTime::now());
        let scheduler = self
            .sh
            .probes
            .get_or_init(super::super::probes::Scheduler::start);
        let probes = scheduler.add(super::super::probes::Target {
            sh: self.sh.clone(),
            spec: self.spec.clone(),
            run: view.run,
            run_id: view.run_id,
            log_dir: view.log_dir.clone(),
            started,
            published: self.publisher().subscribe(),
            tx: self.commands(),
            cell,
        });
        if let Some(exec) = self.exec.as_mut() {
            exec.set_probes(probes);
        }
    }

    /// Releases a run's cgroup once nothing is left in it, on the release
    /// lane: removing a cgroup takes the kernel's cgroup lock, and a thousand
    /// stops at once would queue on the async workers (or spin on the lock
    /// against each other from a thousand blocking threads). Nothing waits
    /// for it (a leaf still there is swept later).
    pub(crate) fn release_leaf(&self, leaf: Option<&crate::platform::cgroup::Leaf>) {
        let Some(leaf) = leaf.cloned() else { return };
        let sh = self.sh.clone();
        self.sh.release_lane.send(move || {
            if let Ok(root) = &sh.cgroup
                && !leaf.populated()
            {
                let _ = root.remove_leaf(&leaf);
            }
        });
    }
}
