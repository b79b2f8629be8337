//! A lane for the many small kernel-file jobs of stops in bulk: reading a
//! cgroup leaf, writing `cgroup.kill`, removing an empty leaf.
//!
//! Each is a few microseconds of work. Sent one by one to tokio's blocking
//! pool, ten thousand stops at once wake (and, past its idle threads, create)
//! a thread per job and fight over the pool's lock: at that scale the
//! wake-ups cost more than the jobs. A lane is one dedicated thread that
//! drains a queue back to back, so a burst of ten thousand costs ten thousand
//! jobs and a handful of wake-ups. The async side awaits a oneshot and never
//! blocks.
//!
//! Only jobs on kernel pseudo-files (cgroupfs, a process's `stat`) go here:
//! they do not wait on disks or on other processes' memory, so one job cannot
//! hold the lane for long. Removing leaves has its own lane: a stop of
//! thousands queues thousands of `rmdir`s, each taking the kernel's cgroup
//! lock, and the stops' reads and kills must not wait behind that backlog
//! (a kill still takes the same lock, but once, not after every removal);
//! one thread removing them in turn also does not spin on that lock against
//! another.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// One thread running jobs in the order they came.
pub(crate) struct Lane {
    tx: mpsc::Sender<Job>,
    name: &'static str,
}

impl Lane {
    /// Starts the lane's thread (it ends when the lane is dropped). A lane
    /// whose thread cannot be started runs each job on tokio's blocking pool.
    pub(crate) fn new(name: &'static str) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A job that panics loses its answer (its caller gets the
                    // fallback), not the lane.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(
                            lane = name,
                            "a lane job panicked; this is a bug in corral"
                        );
                    }
                }
            });
        if let Err(e) = &started {
            tracing::warn!(lane = name, error = %e, "cannot start a lane thread; its jobs use the blocking pool");
        }
        Self { tx, name }
    }

    /// Runs `job` on the lane and waits for its answer; `fallback` if the
    /// job panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
        fallback: T,
    ) -> T {
        let (reply, answer) = oneshot::channel();
        self.send(move || {
            let _ = reply.send(job());
        });
        answer.await.unwrap_or(fallback)
    }

    /// Queues `job` and does not wait for it.
    pub(crate) fn send(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            tracing::debug!(
                lane = self.name,
                "lane thread gone; job on the blocking pool"
            );
            tokio::task::spawn_blocking(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_the_lanes_own_thread() {
        let lane = Lane::new("corral-test-lane");
        let here = std::thread::current().id();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for i in 0..100 {
            let order = order.clone();
            lane.send(move || order.lock().unwrap_or_else(|p| p.into_inner()).push(i));
        }
        let (name, thread) = lane
            .run(
                || {
                    let t = std::thread::current();
                    (t.name().map(str::to_owned), t.id())
                },
                (None, here),
            )
            .await;
        assert_eq!(name.as_deref(), Some("corral-test-lane"));
        assert_ne!(thread, here);
        // Everything queued before the answer ran before it, in order.
        let got = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_job_that_panics_gets_the_fallback_and_later_jobs_still_run() {
        let lane = Lane::new("corral-test-lane");
        let v: u32 = lane.run(|| panic!("a job panicked"), 7).await;
        assert_eq!(v, 7);
        let name = lane
            .run(|| std::thread::current().name().map(str::to_owned), None)
            .await;
        assert_eq!(name.as_deref(), Some("corral-test-lane"));
    }
}
