//! Liveness and readiness probes: checks that run beside an agent's owner and
//! report to it, never stalling it.
//!
//! Every run's probes share one timer: one scheduler task keeps when each
//! run's next round is due and starts it then — at once, and then
//! `interval_s` after the previous round ended, each check bounded by
//! `timeout_s` (rounds due within 20 ms of each other run on the same turn).
//! A round of checks that need I/O runs as a task of its own;
//! `progress_stale_s` needs none and is checked on the scheduler's turn, so a
//! thousand stuck-agent probes cost one timer, not a thousand tasks.
//!
//! Each result is recorded at once in the run's [`ProbeCell`] (what every
//! status shows: last result, output, time, failures in a row). The owner is
//! told only what it acts on — a result that changed, or a failure — so a
//! probe that keeps passing costs no message, no new view and no write. The
//! owner keeps `ready` and acts on failures: `failures` liveness failures in
//! a row end the run as failed (the restart policy applies); readiness sets
//! `ready` (false until the first pass). Kinds:
//! - `exec`: the argv runs as the agent would (its environment, cwd and user),
//!   in a session of its own; exit 0 passes. A check that runs out of time is
//!   killed with its whole group and reaped.
//! - `http`: a GET of an `http://` URL; a 2xx or 3xx answer passes.
//! - `tcp`: a connection to `HOST:PORT` passes.
//! - `progress_stale_s`: a progress report within that many seconds (or the
//!   run being younger than that) passes — a stuck agent fails. Time the run
//!   spent paused does not count.
//! - `log` (readiness): a line of the run's stdout or stderr matching the
//!   regular expression passes, for good.
//!
//! No probe runs while the run is paused: its owner ends them when it
//! pauses it and starts them again when it resumes it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::model::{AgentState, Probe, ProbeState, Probes, ProbesState};
use crate::platform;
use crate::store;

use super::spec::Spec;
use super::view::Published;
use super::{Cmd, Shared, lock};

/// Which probe a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Liveness,
    Readiness,
}

/// One check's result.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub which: Which,
    pub passed: bool,
    /// What the check said (exit status and output, HTTP status, the error).
    pub output: String,
}

/// What the owner is told of a check: its outcome, the failures in a row it
/// makes, and whether the result changed from the last one.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub outcome: Outcome,
    pub failures: u32,
    pub changed: bool,
}

/// A run's probe results as of the last check: written by the checks,
/// read by every status.
pub(crate) type ProbeCell = Mutex<ProbesState>;

/// Most bytes of a check's output kept.
const OUTPUT_LIMIT: usize = 2048;

/// The probes' state before any check.
pub(crate) fn initial(probes: &Probes) -> ProbesState {
    let empty = |p: &Option<Probe>| {
        p.as_ref().map(|p| ProbeState {
            kind: p.kind().to_owned(),
            last_result: None,
            last_output: None,
            last_at: None,
            consecutive_failures: 0,
        })
    };
    ProbesState {
        liveness: empty(&probes.liveness),
        readiness: empty(&probes.readiness),
    }
}

/// Records `outcome` in `state`; returns the consecutive failures and whether
/// the result changed from the last one.
pub(crate) fn record(state: &mut ProbeState, outcome: &Outcome, at: String) -> (u32, bool) {
    let result = if outcome.passed { "passed" } else { "failed" };
    let changed = state.last_result.as_deref() != Some(result);
    state.last_result = Some(result.to_owned());
    state.last_output = Some(outcome.output.clone());
    state.last_at = Some(at);
    state.consecutive_failures = if outcome.passed {
        0
    } else {
        state.consecutive_failures + 1
    };
    (state.consecutive_failures, changed)
}

/// What a run's checks need.
pub(crate) struct Target {
    pub sh: Arc<Shared>,
    pub spec: Arc<Spec>,
    pub run: u32,
    pub run_id: i64,
    pub log_dir: PathBuf,
    /// The run's start (for `progress_stale_s` before any report).
    pub started: SystemTime,
    /// The owner's published state (for the last progress report).
    pub published: watch::Receiver<Published>,
    pub tx: mpsc::UnboundedSender<Cmd>,
    /// Where results are recorded.
    pub cell: Arc<ProbeCell>,
}

impl Target {
    /// Records a check's outcome and tells the owner when it must act;
    /// false once the owner is gone.
    fn deliver(&self, outcome: Outcome) -> bool {
        // Checks go on until the registration is dropped; what they find
        // once the run is no longer live (paused, stopping, ended, replaced)
        // is not the run's health and is not recorded.
        let live = self.published.borrow().view.as_ref().is_some_and(|v| {
            v.run == self.run && matches!(v.state, AgentState::Starting | AgentState::Running)
        });
        if !live {
            return true;
        }
        let recorded = {
            let mut state = lock(&self.cell);
            let slot = match outcome.which {
                Which::Liveness => &mut state.liveness,
                Which::Readiness => &mut state.readiness,
            };
            slot.as_mut()
                .map(|p| record(p, &outcome, store::now_rfc3339()))
        };
        let Some((failures, changed)) = recorded else {
            return true;
        };
        if !changed && outcome.passed {
            return true;
        }
        self.tx
            .send(Cmd::Probe {
                run: self.run,
                report: Report {
                    outcome,
                    failures,
                    changed,
                },
            })
            .is_ok()
    }
}

/// The one timer of every run's probes (see the module docs).
pub(crate) struct Scheduler {
    tx: mpsc::UnboundedSender<Msg>,
    next_id: AtomicU64,
}

enum Msg {
    Add(u64, Box<Entry>),
    Remove(u64),
    /// A round of checks ended; its log position comes back.
    Done(u64, LogScan),
}

/// A run's probes, for as long as it is held: dropping it ends them (a
/// check in progress is killed and reaped).
pub(crate) struct Registration {
    id: u64,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Remove(self.id));
    }
}

struct Entry {
    target: Arc<Target>,
    probes: Arc<Probes>,
    interval: Duration,
    timeout: Duration,
    /// Checked on the scheduler's turn: no check needs I/O.
    inline: bool,
    /// The log check's position, while no round holds it.
    log: Option<LogScan>,
    /// The round under way, when one is.
    round: Option<tokio::task::AbortHandle>,
}

impl Scheduler {
    /// Starts the scheduler's task (call from within the runtime).
    pub(crate) fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(schedule(rx, tx.downgrade()));
        Self {
            tx,
            next_id: AtomicU64::new(0),
        }
    }

    /// Starts the run's probes, when it has any.
    pub(crate) fn add(&self, target: Target) -> Option<Registration> {
        let probes = target.spec.request.probes.clone()?;
        if probes.liveness.is_none() && probes.readiness.is_none() {
            return None;
        }
        let inline = [&probes.liveness, &probes.readiness]
            .into_iter()
            .flatten()
            .all(|p| matches!(p, Probe::ProgressStaleS(_)));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            target: Arc::new(target),
            interval: Duration::from_secs_f64(probes.interval_s),
            timeout: Duration::from_secs_f64(probes.timeout_s),
            probes: Arc::new(probes),
            inline,
            log: Some(LogScan::default()),
            round: None,
        };
        self.tx.send(Msg::Add(id, Box::new(entry))).ok()?;
        Some(Registration {
            id,
            tx: self.tx.clone(),
        })
    }
}

/// How early a round may run to share the scheduler's turn with others.
const SLACK: Duration = Duration::from_millis(20);

/// The scheduler's loop: rounds as they come due, registrations as they
/// come and go. Ends when no registration and no scheduler handle is left.
async fn schedule(mut rx: mpsc::UnboundedReceiver<Msg>, me: mpsc::WeakUnboundedSender<Msg>) {
    let mut entries: HashMap<u64, Entry> = HashMap::new();
    // One item per entry not in a round (items of removed entries are skipped).
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            msg = rx.recv() => match msg {
                None => return,
                Some(Msg::Add(id, entry)) => {
                    entries.insert(id, *entry);
                    due.push(Reverse((Instant::now(), id)));
                }
                Some(Msg::Remove(id)) => {
                    if let Some(round) = entries.remove(&id).and_then(|e| e.round) {
                        round.abort();
                    }
                }
                Some(Msg::Done(id, log)) => {
                    if let Some(e) = entries.get_mut(&id) {
                        e.log = Some(log);
                        e.round = None;
                        due.push(Reverse((Instant::now() + e.interval, id)));
                    }
                }
            },
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                // Rounds due within the slack run now too: rounds due close
                // together fall into step, and a thousand runs' probes wake
                // the scheduler a few times a second, not a thousand.
                let now = Instant::now();
                while let Some(Reverse((at, id))) = due.peek().copied()
                    && at <= now + SLACK
                {
                    due.pop();
                    let Some(e) = entries.get_mut(&id) else { continue };
                    if e.inline {
                        for (which, probe) in checks(&e.probes) {
                            if let Probe::ProgressStaleS(limit) = probe {
                                let (passed, output) = stale(&e.target, *limit);
                                e.target.deliver(Outcome { which, passed, output });
                            }
                        }
                        due.push(Reverse((now + e.interval, id)));
                    } else {
                        let (target, probes, timeout) = (e.target.clone(), e.probes.clone(), e.timeout);
                        let log = e.log.take().unwrap_or_default();
                        let me = me.clone();
                        e.round = Some(
                            tokio::spawn(async move {
                                let log = round(&target, &probes, timeout, log).await;
                                if let Some(tx) = me.upgrade() {
                                    let _ = tx.send(Msg::Done(id, log));
                                }
                            })
                            .abort_handle(),
                        );
                    }
                }
            }
        }
    }
}

/// The probes a round checks, in order.
fn checks(probes: &Probes) -> impl Iterator<Item = (Which, &Probe)> {
    [
        (Which::Liveness, probes.liveness.as_ref()),
        (Which::Readiness, probes.readiness.as_ref()),
    ]
    .into_iter()
    .filter_map(|(which, p)| p.map(|p| (which, p)))
}

/// One round of a run's checks, each result delivered as it comes.
async fn round(target: &Target, probes: &Probes, timeout: Duration, mut log: LogScan) -> LogScan {
    for (which, probe) in checks(probes) {
        let (passed, output) = check(target, probe, &mut log, timeout).await;
        if !target.deliver(Outcome {
            which,
            passed,
            output,
        }) {
            break;
        }
    }
    log
}

/// One check, bounded by `timeout`: whether it passed, and what it said.
async fn check(
    target: &Target,
    probe: &Probe,
    log: &mut LogScan,
    timeout: Duration,
) -> (bool, String) {
    match probe {
        // Bounded inside: a check that runs out of time is killed, not abandoned.
        Probe::Exec(argv) => exec(target, argv, timeout).await,
        Probe::Http(url) => bounded(timeout, http(url)).await,
        Probe::Tcp(addr) => {
            let connect = async move {
                match tokio::net::TcpStream::connect(addr.as_str()).await {
                    Ok(_) => (true, format!("connected to {addr}")),
                    Err(e) => (false, format!("cannot connect to {addr}: {e}")),
                }
            };
            bounded(timeout, connect).await
        }
        Probe::ProgressStaleS(limit) => stale(target, *limit),
        Probe::Log(re) => bounded(timeout, log.check(target, re)).await,
    }
}

async fn bounded(timeout: Duration, check: impl Future<Output = (bool, String)>) -> (bool, String) {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| {
            (
                false,
                format!("no answer within {} s", timeout.as_secs_f64()),
            )
        })
}

/// `progress_stale_s`: the time since the last report (or the run's start)
/// counts only while the run is not paused.
fn stale(target: &Target, limit: f64) -> (bool, String) {
    let published = target.published.borrow().view.clone();
    let last = published
        .as_ref()
        .and_then(|v| v.progress_at.as_deref())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    let since = last.unwrap_or(target.started);
    let paused = published.as_ref().map_or(0.0, |v| {
        let before = if last.is_some() {
            v.progress_paused_s
        } else {
            0.0
        };
        (v.paused_total_s() - before).max(0.0)
    });
    let age = (SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs_f64()
        - paused)
        .max(0.0);
    if age <= limit {
        (true, format!("progress {age:.0} s ago"))
    } else if last.is_some() {
        (
            false,
            format!("no progress report for {age:.0} s (progress_stale_s {limit})"),
        )
    } else {
        (
            false,
            format!(
                "no progress report since the run started {age:.0} s ago (progress_stale_s {limit})"
            ),
        )
    }
}

/// A GET of an `http://` URL; 2xx and 3xx pass.
async fn http(url: &str) -> (bool, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host_port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:80")
    };
    let mut stream = match tokio::net::TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => return (false, format!("GET {url}: cannot connect: {e}")),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: corral-probe\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        return (false, format!("GET {url}: {e}"));
    }
    let mut head = vec![0u8; 1024];
    let n = stream.read(&mut head).await.unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(code) if (200..400).contains(&code) => (true, format!("GET {url}: HTTP {code}")),
        Some(code) => (false, format!("GET {url}: HTTP {code}")),
        None => (false, format!("GET {url}: no HTTP answer")),
    }
}

/// Runs `argv` as the agent would, for at most `timeout`; exit 0 passes.
async fn exec(target: &Target, argv: &[String], timeout: Duration) -> (bool, String) {
    // A user that cannot be resolved: the check does not run at all (never
    // as the daemon's user).
    let user = match target.spec.user.user() {
        Ok(user) => user,
        Err(why) => return (false, format!("cannot run {:?}: {why}", argv[0])),
    };
    let envp =
        match super::execution::local::environment(&target.sh, &target.spec, user, target.run_id) {
            Ok(envp) => envp,
            Err(e) => return (false, format!("cannot run {:?}: {e}", argv[0])),
        };
    let helper = super::helper::Helper {
        argv: argv.to_vec(),
        envp,
        cwd: target.spec.cwd.clone(),
        credentials: user.map(|u| u.credentials.clone()),
        merge_stderr: true,
    };
    let out = match super::helper::run(&target.sh, helper, timeout, OUTPUT_LIMIT).await {
        Ok(out) => out,
        Err(super::helper::HelperError::TimedOut { .. }) => {
            return (
                false,
                format!("no answer within {} s; killed", timeout.as_secs_f64()),
            );
        }
        Err(e) => return (false, e.to_string()),
    };
    let text = out.text().trim().to_owned();
    let said = |how: String| {
        if text.is_empty() {
            how
        } else {
            format!("{how}: {text}")
        }
    };
    match out.exit {
        Some(platform::ExitKind::Code(0)) => (true, said("exit 0".into())),
        Some(platform::ExitKind::Code(c)) => (false, said(format!("exit {c}"))),
        Some(platform::ExitKind::Signal(s)) => (false, said(format!("killed by signal {s}"))),
        None => (false, said("ended, status unknown".into())),
    }
}

/// Where a `log` readiness check has read up to in the run's two logs.
#[derive(Default)]
struct LogScan {
    offsets: [u64; 2],
    partial: [Vec<u8>; 2],
    matched: Option<String>,
}

impl LogScan {
    async fn check(&mut self, target: &Target, pattern: &str) -> (bool, String) {
        if let Some(line) = &self.matched {
            return (true, format!("matched: {line}"));
        }
        let Ok(re) = regex::Regex::new(pattern) else {
            return (
                false,
                format!("{pattern:?} is not a valid regular expression"),
            );
        };
        let dir = target.log_dir.clone();
        let (offsets, partial) = (self.offsets, std::mem::take(&mut self.partial));
        let scanned =
            tokio::task::spawn_blocking(move || scan_logs(&dir, offsets, partial, &re)).await;
        match scanned {
            Ok((offsets, partial, found)) => {
                self.offsets = offsets;
                self.partial = partial;
                if let Some(line) = found {
                    self.matched = Some(line.clone());
                    return (true, format!("matched: {line}"));
                }
                (
                    false,
                    format!("no line of the output matches {pattern:?} yet"),
                )
            }
            Err(e) => (false, e.to_string()),
        }
    }
}

/// Reads what the logs gained since `offsets` and looks for a matching line.
fn scan_logs(
    dir: &std::path::Path,
    mut offsets: [u64; 2],
    mut partial: [Vec<u8>; 2],
    re: &regex::Regex,
) -> ([u64; 2], [Vec<u8>; 2], Option<String>) {
    use std::io::{Read, Seek, SeekFrom};
    for (i, name) in ["stdout.log", "stderr.log"].iter().enumerate() {
        let Ok(mut f) = platform::agent_dir::open_for_reading(&dir.join(name)) else {
            continue;
        };
        if f.metadata().is_ok_and(|m| m.len() < offsets[i]) {
            // Rotated (copied and truncated): read the new text from the start.
            offsets[i] = 0;
            partial[i].clear();
        }
        if f.seek(SeekFrom::Start(offsets[i])).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        let _ = (&mut f).take(1 << 20).read_to_end(&mut buf);
        offsets[i] += buf.len() as u64;
        partial[i].extend_from_slice(&buf);
        let cut = partial[i]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        let complete: Vec<u8> = partial[i].drain(..cut).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if re.is_match(line) {
                return (offsets, partial, Some(crate::model::elide(line, 200)));
            }
        }
        if partial[i].len() > 64 * 1024 {
            partial[i].clear();
        }
    }
    (offsets, partial, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_count_failures_in_a_row_and_say_when_they_change() {
        let mut s = initial(&Probes {
            liveness: Some(Probe::Tcp("127.0.0.1:1".into())),
            ..Probes::default()
        })
        .liveness
        .unwrap();
        let fail = Outcome {
            which: Which::Liveness,
            passed: false,
            output: "refused".into(),
        };
        let pass = Outcome {
            passed: true,
            ..fail.clone()
        };
        let table = [
            (&fail, (1, true)),
            (&fail, (2, false)),
            (&pass, (0, true)),
            (&fail, (1, true)),
        ];
        for (outcome, want) in table {
            assert_eq!(record(&mut s, outcome, "t".into()), want);
        }
        assert_eq!(s.last_result.as_deref(), Some("failed"));
    }

    #[test]
    fn a_log_line_is_found_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        let re = regex::Regex::new("^ready on port \\d+$").unwrap();
        std::fs::write(dir.path().join("stdout.log"), "starting\nready on po").unwrap();
        let (offsets, partial, found) = scan_logs(dir.path(), [0, 0], Default::default(), &re);
        assert_eq!(found, None);
        std::fs::write(
            dir.path().join("stdout.log"),
            "starting\nready on port 80\n",
        )
        .unwrap();
        let (_, _, found) = scan_logs(dir.path(), offsets, partial, &re);
        assert_eq!(found.as_deref(), Some("ready on port 80"));
    }

    #[test]
    fn a_rotated_log_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        let re = regex::Regex::new("^ready$").unwrap();
        std::fs::write(&log, "x".repeat(100) + "\nhalf a li").unwrap();
        let (offsets, partial, found) = scan_logs(dir.path(), [0, 0], Default::default(), &re);
        assert_eq!((offsets[0], found), (110, None));
        // Copied and truncated, then a short line written: shorter than the offset.
        std::fs::write(&log, "ready\n").unwrap();
        let (offsets, _, found) = scan_logs(dir.path(), offsets, partial, &re);
        assert_eq!(
            found.as_deref(),
            Some("ready"),
            "the partial line is not glued on"
        );
        assert_eq!(offsets[0], 6);
    }
}
