//! The durable record: one SQLite database (`corral.db`) in the state dir.
//!
//! Every run of every agent is a row in `runs`; the newest row of an id is its
//! current run, older rows are its history. Lifecycle transitions are written
//! before they are reported: an agent's owner (its actor, the only writer of
//! its rows) awaits the commit, then publishes.
//!
//! Writes go through one writer thread that owns the connection and commits in
//! groups: it takes every write queued while the previous commit was syncing and
//! applies them in one transaction (each in its own savepoint, so one bad write
//! fails alone). A thousand agents spawning at once then cost a few dozen fsyncs
//! instead of thousands, and no caller is told "done" before its row is durable.
//! The database runs in WAL mode with `synchronous=FULL`: a commit is on disk
//! when it returns, and a killed daemon leaves either all of a transaction or
//! none of it.
//!
//! When commits fail (a full disk, the database file deleted or replaced under
//! the daemon) the store says so through [`Store::failing`]; the daemon then
//! refuses changes with 503, and owners retry their pending transitions
//! ([`Store::commit_retrying`]) until the store takes writes again — a deleted
//! database never does, and says why.
//!
//! A database file that was emptied (or replaced by an empty database) while
//! no daemon ran is refused at open when the state dir shows earlier use, so
//! that agents still running are never forgotten by a store that looks new.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::model::{
    AgentState, EventBody, JobEvent, PersistentStatus, SpawnRequest, StateEvent, StopCause,
    StopStage,
};

/// Schema version this build writes (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i32 = 7;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 512;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE runs (
        run_id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        status TEXT NOT NULL,
        command TEXT NOT NULL,
        cwd TEXT NOT NULL,
        agent_dir TEXT NOT NULL,
        env TEXT NOT NULL,
        labels TEXT NOT NULL,
        stop_timeouts TEXT NOT NULL,
        verify_ms INTEGER NOT NULL,
        pid INTEGER,
        start_ticks INTEGER,
        boot_id TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        exit_code INTEGER,
        exit_signal INTEGER,
        end_reason TEXT,
        progress INTEGER,
        progress_message TEXT
    ) STRICT;
    CREATE INDEX runs_by_agent ON runs(agent_id, run_id);",
    // v2: the event log. `seq` only grows; a client resumes after the last it saw.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    ) STRICT;",
    // v3: per-agent run numbers and per-run log dirs; the whole spawn request
    // (restart policy, limits, probes...) so a restarted daemon supervises the
    // same way; planned restarts; a heartbeat row proving writes reach the disk.
    "ALTER TABLE runs ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET run = (SELECT COUNT(*) FROM runs r2
                           WHERE r2.agent_id = runs.agent_id AND r2.run_id <= runs.run_id);
    ALTER TABLE runs ADD COLUMN log_dir TEXT NOT NULL DEFAULT '';
    UPDATE runs SET log_dir = agent_dir;
    ALTER TABLE runs ADD COLUMN spec TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN next_restart_at TEXT;
    ALTER TABLE runs ADD COLUMN restart_attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN progress_at TEXT;
    CREATE UNIQUE INDEX runs_by_agent_run ON runs(agent_id, run);
    ALTER TABLE events ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
    UPDATE events SET run = COALESCE((SELECT run FROM runs WHERE runs.run_id = events.run_id), 0);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
    INSERT INTO meta VALUES ('heartbeat', 0);",
    // v4: runs placed on a cluster engine: the job (engine, id, node, the tag
    // that proves a job id is still this run's).
    "ALTER TABLE runs ADD COLUMN job TEXT;",
    // v5: the lifecycle state on record (`starting` … `ended`), and the stop
    // under way (cause, stage, timeouts, deadlines) so a new daemon finishes it.
    "ALTER TABLE runs ADD COLUMN state TEXT;
    ALTER TABLE runs ADD COLUMN stop TEXT;",
    // v6: pauses: since when the run is paused (while it is), and the seconds
    // its earlier pauses took (`max_runtime_s` does not count them).
    "ALTER TABLE runs ADD COLUMN paused_at TEXT;
    ALTER TABLE runs ADD COLUMN paused_s REAL NOT NULL DEFAULT 0;",
    // v7: team budgets (`PUT /v1/teams/{id}`): the budget as JSON, by team id.
    "CREATE TABLE teams (
        team TEXT PRIMARY KEY,
        budget TEXT NOT NULL,
        set_at TEXT NOT NULL
    ) STRICT;",
];

/// A run's job on a cluster engine, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct JobRecord {
    /// `slurm`.
    pub engine: String,
    /// The engine's job id (unique only within one life of the engine's state).
    pub job_id: String,
    /// Where it runs, once it does.
    #[serde(default)]
    pub node: Option<String>,
    /// Written into the job (its comment) at submission: a job id whose job
    /// carries another tag is not this run's.
    pub tag: String,
}

/// One run of one agent, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRecord {
    /// Row id; increases with every run of any agent.
    pub run_id: i64,
    /// The run's number for its agent (1, 2, ...).
    pub run: u32,
    /// The agent's id.
    pub agent_id: String,
    /// Lifecycle state.
    pub status: PersistentStatus,
    /// The spawn request, normalised (absolute paths, defaults filled in).
    pub spec: SpawnRequest,
    /// Where this run's logs are.
    pub log_dir: PathBuf,
    /// Pid, once started.
    pub pid: Option<i32>,
    /// Start time in ticks after boot, once started.
    pub start_ticks: Option<u64>,
    /// Boot the process was started in.
    pub boot_id: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub ended_at: Option<String>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Terminating signal.
    pub exit_signal: Option<i32>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Last reported progress.
    pub progress: Option<u8>,
    /// Message with it.
    pub progress_message: Option<String>,
    /// When it was reported.
    pub progress_at: Option<String>,
    /// When the restart policy starts the next run (RFC 3339), if planned.
    pub next_restart_at: Option<String>,
    /// 0 for a run a user started; n for the n-th restart in a row.
    pub restart_attempt: u32,
    /// Its job, when it was placed on a cluster engine.
    pub job: Option<JobRecord>,
    /// The lifecycle state on record (none in rows written before v5).
    pub state: Option<AgentState>,
    /// The stop under way, when one is.
    pub stop: Option<StopRecord>,
    /// Since when the run is paused (RFC 3339), while it is.
    pub paused_at: Option<String>,
    /// Seconds the run's earlier pauses took (the current one not included).
    pub paused_s: f64,
}

/// A run's pauses as the store keeps them (the `paused_at` and `paused_s`
/// columns): a new daemon keeps a paused run paused, and its runtime limit
/// leaves out the time it was.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct PauseRecord {
    /// Since when it is paused (RFC 3339); none while it is not.
    pub paused_at: Option<String>,
    /// Seconds its finished pauses took.
    pub paused_s: f64,
}

/// A stop as the store keeps it (JSON in the run's `stop` column): everything
/// the next daemon needs to finish it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StopRecord {
    pub cause: StopCause,
    /// A user (or a stopped parent) asked: never followed by a restart.
    pub asked: bool,
    #[serde(default)]
    pub reason: Option<String>,
    pub timeouts: [f64; 3],
    pub force: bool,
    pub stage: StopStage,
    /// RFC 3339.
    pub began_at: String,
    /// RFC 3339.
    pub stage_deadline_at: String,
    /// The main process's end is on record.
    pub main_exited: bool,
    #[serde(default)]
    pub unkillable: bool,
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Appends an event about run `run_id` (its agent id and run number looked up
/// in the same transaction), so a transition and its event commit together.
fn event(c: &Connection, run_id: i64, body: &EventBody) -> rusqlite::Result<()> {
    let mut data = match serde_json::to_value(body) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    data.remove("kind");
    c.prepare_cached(
        "INSERT INTO events (at, agent_id, run_id, run, kind, data)
         SELECT ?1, agent_id, run_id, run, ?2, ?3 FROM runs WHERE run_id = ?4",
    )?
    .execute(params![
        now_rfc3339(),
        body.kind(),
        serde_json::Value::Object(data).to_string(),
        run_id
    ])
    .map(drop)
}

/// An event's body from its stored kind and fields; a kind or shape this
/// build does not know reads as [`EventBody::Other`].
fn event_body(kind: &str, data: &str) -> EventBody {
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(data).unwrap_or_default();
    map.insert("kind".into(), kind.into());
    serde_json::from_value(serde_json::Value::Object(map)).unwrap_or(EventBody::Other)
}

type Op = Arc<dyn Fn(&Connection) -> rusqlite::Result<i64> + Send + Sync>;

/// One write, re-submittable: [`Store::commit_retrying`] runs it again after a failure.
#[derive(Clone)]
pub(crate) struct Write {
    action: &'static str,
    op: Op,
}

impl Write {
    fn new(
        action: &'static str,
        op: impl Fn(&Connection) -> rusqlite::Result<i64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            action,
            op: Arc::new(op),
        }
    }
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<i64>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    jobs: mpsc::Sender<Job>,
    /// Tests on a paused clock commit on the caller's thread, so no commit
    /// is in flight while the runtime looks idle (see [`Store::open_inline`]).
    #[cfg(test)]
    inline: Option<Arc<Mutex<Writer>>>,
    /// One connection for reads (WAL lets it read beside the writer).
    reader: Arc<Mutex<Connection>>,
    newest_event: Arc<watch::Sender<i64>>,
    failing: Arc<watch::Sender<Option<String>>>,
}

fn lock_reader(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn newest_event(c: &Connection) -> i64 {
    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .unwrap_or(0)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Serialising maps of strings and vectors of numbers cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_default()
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL with synchronous=FULL: commits are durable when they return.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Room for every statement the writer uses (the savepoints and the
    // shapes of transitions among them), so none is parsed again per write.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| Error::store("read schema version", e))?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction()
            .map_err(|e| Error::store("begin migration", e))?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", (i + 1) as i32))
            .and_then(|()| tx.commit())
            .map_err(|e| Error::store(format!("migrate to schema {}", i + 1), e))?;
    }
    Ok(())
}

/// The spawn request of a row: stored whole since v3; rebuilt from the v1
/// columns for older rows.
fn row_spec(row: &rusqlite::Row<'_>) -> rusqlite::Result<SpawnRequest> {
    let spec: String = row.get("spec")?;
    if let Ok(spec) = serde_json::from_str::<SpawnRequest>(&spec) {
        return Ok(spec);
    }
    let timeouts: Vec<f64> = from_json(&row.get::<_, String>("stop_timeouts")?);
    Ok(SpawnRequest {
        agent_id: row.get("agent_id")?,
        command: from_json(&row.get::<_, String>("command")?),
        cwd: Some(PathBuf::from(row.get::<_, String>("cwd")?)),
        env: from_json(&row.get::<_, String>("env")?),
        agent_dir: Some(PathBuf::from(row.get::<_, String>("agent_dir")?)),
        labels: from_json(&row.get::<_, String>("labels")?),
        stop_timeouts: (timeouts.len() == 3).then_some(timeouts),
        verify_ms: Some(row.get::<_, i64>("verify_ms")?.max(0) as u64),
        ..SpawnRequest::default()
    })
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = row.get("status")?;
    Ok(RunRecord {
        run_id: row.get("run_id")?,
        run: row.get::<_, i64>("run")?.clamp(0, i64::from(u32::MAX)) as u32,
        agent_id: row.get("agent_id")?,
        status: status.parse().unwrap_or(PersistentStatus::Failed),
        spec: row_spec(row)?,
        log_dir: PathBuf::from(row.get::<_, String>("log_dir")?),
        pid: row.get("pid")?,
        start_ticks: row
            .get::<_, Option<i64>>("start_ticks")?
            .map(|t| t.max(0) as u64),
        boot_id: row.get("boot_id")?,
        started_at: row.get("started_at")?,
        ended_at: row.get("ended_at")?,
        exit_code: row.get("exit_code")?,
        exit_signal: row.get("exit_signal")?,
        end_reason: row.get("end_reason")?,
        progress: row
            .get::<_, Option<i64>>("progress")?
            .map(|p| p.clamp(0, 100) as u8),
        progress_message: row.get("progress_message")?,
        progress_at: row.get("progress_at")?,
        next_restart_at: row.get("next_restart_at")?,
        restart_attempt: row.get::<_, i64>("restart_attempt")?.clamp(0, 1 << 20) as u32,
        job: row
            .get::<_, Option<String>>("job")?
            .and_then(|j| serde_json::from_str(&j).ok()),
        state: row
            .get::<_, Option<String>>("state")?
            .and_then(|s| s.parse().ok()),
        stop: row
            .get::<_, Option<String>>("stop")?
            .and_then(|s| match serde_json::from_str(&s) {
                Ok(stop) => Some(stop),
                Err(e) => {
                    tracing::warn!(stop = %s, error = %e, "a stored stop does not read back; it is dropped");
                    None
                }
            }),
        paused_at: row.get("paused_at")?,
        paused_s: row
            .get::<_, Option<f64>>("paused_s")?
            .filter(|s| s.is_finite())
            .unwrap_or(0.0)
            .max(0.0),
    })
}

/// Refuses a database file that is there but holds no record while the state
/// dir beside it shows earlier use, before SQLite touches it (or its WAL,
/// which may hold what a restore needs). An emptied `corral.db` would
/// otherwise be taken for a new store, and every agent — some still running —
/// forgotten.
///
/// Signs of earlier use: an entry in `agents/` (every agent with a default
/// agent dir has one, and it outlives the agent's run), and, beside an empty
/// file, a non-empty `corral.db-wal` (only a store in use writes there).
/// `corral.lock` cannot be one: the daemon writes it before it opens the store.
/// A missing file, or an empty one in a state dir with no such sign, is a new
/// store.
fn refuse_lost(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        // Missing: a new store (other failures are the open's to report).
        return Ok(());
    };
    if !meta.is_file() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut signs = Vec::new();
    let agents = std::fs::read_dir(dir.join("agents")).map_or(0, Iterator::count);
    if agents > 0 {
        signs.push(format!(
            "agents/ holds {agents} {}",
            if agents == 1 { "entry" } else { "entries" }
        ));
    }
    let found = if meta.len() == 0 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let wal_len = std::fs::symlink_metadata(&wal).map_or(0, |m| m.len());
        if wal_len > 0 {
            signs.push(format!(
                "{} holds {wal_len} bytes",
                wal.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
        "is empty (0 bytes)"
    } else if !signs.is_empty() && !has_schema(path) {
        "holds no corral schema"
    } else {
        return Ok(());
    };
    if signs.is_empty() {
        return Ok(());
    }
    Err(Error::StoreLost {
        path: path.to_owned(),
        found,
        signs: signs.join(", "),
    })
}

/// The database at `path` has a corral schema (or cannot be read: the open
/// that follows reports that, with SQLite's reason).
fn has_schema(path: &Path) -> bool {
    let version = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get::<_, i32>(0)));
    !matches!(version, Ok(0))
}

/// (device, inode) of the database file at its path, if it is there.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    newest: Arc<watch::Sender<i64>>,
    failing: Arc<watch::Sender<Option<String>>>,
}

impl Writer {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn fail_all(&self, batch: Vec<Job>, err: impl Fn(&'static str) -> Error) {
        // Said before anyone is answered: whoever sees the error sees the state.
        let reason = err("commit").to_string();
        self.failing
            .send_if_modified(|cur| match cur.as_deref() == Some(reason.as_str()) {
                true => false,
                false => {
                    tracing::error!(error = %reason, "the store cannot take writes; changes are refused until it can");
                    *cur = Some(reason.clone());
                    true
                }
            });
        for job in batch {
            let _ = job.done.send(Err(err(job.write.action)));
        }
    }

    fn commit_batch(&self, batch: Vec<Job>) {
        // A database deleted or replaced under the daemon takes writes into an
        // unlinked file that nobody will ever read: refuse them all.
        if identity(&self.path) != self.identity {
            let path = self.path.clone();
            return self.fail_all(batch, |action| Error::StoreGone {
                action,
                path: path.clone(),
            });
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let e = Arc::new(e);
            return self.fail_all(batch, |action| Error::Store {
                action: action.to_owned(),
                source: e.clone(),
            });
        }
        let mut results = Vec::with_capacity(batch.len());
        // Prepared once: parsing them per write cost as much as a small write.
        let step = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map(|_| ())
        };
        for job in &batch {
            let outcome = step("SAVEPOINT op").and_then(|()| match (job.write.op)(&self.conn) {
                Ok(v) => step("RELEASE op").map(|()| v),
                Err(e) => {
                    let _ = step("ROLLBACK TO op").and_then(|()| step("RELEASE op"));
                    Err(e)
                }
            });
            results.push(outcome.map_err(|e| Error::store(job.write.action, e)));
        }
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.failing.send_if_modified(|cur| {
                    if cur.is_some() {
                        tracing::info!("the store takes writes again");
                    }
                    cur.take().is_some()
                });
                for (result, job) in results.into_iter().zip(batch) {
                    let _ = job.done.send(result);
                }
                // After the commit: whoever wakes sees every event up to this one.
                let seq = newest_event(&self.conn);
                self.newest
                    .send_if_modified(|cur| std::mem::replace(cur, seq) != seq);
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                let e = Arc::new(e);
                self.fail_all(batch, |action| Error::Store {
                    action: action.to_owned(),
                    source: e.clone(),
                });
            }
        }
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the store at `path` and starts its writer.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        refuse_lost(path)?;
        // Created 0600 before SQLite opens it: the -wal and -shm files take its mode.
        crate::platform::files::ensure_private_file(path).map_err(|e| Error::StateDir {
            path: path.to_owned(),
            action: "create the database file",
            source: e,
        })?;
        let mut conn = open_connection(path)
            .map_err(|e| Error::store(format!("open {}", path.display()), e))?;
        migrate(&mut conn)?;
        for side in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(side);
            let _ = crate::platform::files::ensure_private_file(Path::new(&p));
        }
        let reader = open_connection(path).map_err(|e| Error::store("open for reading", e))?;
        let newest = Arc::new(watch::Sender::new(newest_event(&conn)));
        let failing = Arc::new(watch::Sender::new(None));
        let writer = Writer {
            conn,
            path: path.to_owned(),
            identity: identity(path),
            newest: newest.clone(),
            failing: failing.clone(),
        };
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("corral-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::StateDir {
                path: path.to_owned(),
                action: "start the store writer thread",
                source: e,
            })?;
        Ok(Self {
            jobs: tx,
            #[cfg(test)]
            inline: None,
            reader: Arc::new(Mutex::new(reader)),
            newest_event: newest,
            failing,
        })
    }

    /// A store whose writes commit on the caller's thread, one at a time: for
    /// tests that pause tokio's clock, where a commit in flight on another
    /// thread would let the clock jump while an owner waits for it.
    #[cfg(test)]
    pub(crate) fn open_inline(path: &Path) -> Result<Self> {
        let mut store = Self::open(path)?;
        let mut conn = open_connection(path).map_err(|e| Error::store("open", e))?;
        migrate(&mut conn)?;
        store.inline = Some(Arc::new(Mutex::new(Writer {
            conn,
            path: path.to_owned(),
            identity: identity(path),
            newest: store.newest_event.clone(),
            failing: store.failing.clone(),
        })));
        Ok(store)
    }

    /// Why the store cannot take writes now (None while it can).
    pub(crate) fn failing(&self) -> watch::Receiver<Option<String>> {
        self.failing.subscribe()
    }

    /// Queues one write now (writes commit in the order they were queued); the
    /// future resolves once it is durable (or failed).
    pub(crate) fn submit(
        &self,
        write: Write,
    ) -> impl Future<Output = Result<i64>> + Send + 'static {
        let (done, wait) = oneshot::channel();
        let job = Job { write, done };
        #[cfg(test)]
        let job = match &self.inline {
            Some(writer) => {
                let writer = writer.lock().unwrap_or_else(|p| p.into_inner());
                writer.commit_batch(vec![job]);
                None
            }
            None => Some(job),
        };
        #[cfg(not(test))]
        let job = Some(job);
        let sent = match job {
            Some(job) => self.jobs.send(job).map_err(drop),
            None => Ok(()),
        };
        async move {
            sent.map_err(|_| Error::StoreClosed)?;
            wait.await.map_err(|_| Error::StoreClosed)?
        }
    }

    /// Commits one write; resolves once it is durable (or failed).
    pub(crate) async fn commit(&self, write: Write) -> Result<i64> {
        self.submit(write).await
    }

    /// Commits one write, retrying (with growing pauses, up to 5 s) for as long as
    /// the store refuses it: for transitions that have already happened in the
    /// world (a process exited) and must reach the record before they are shown.
    pub(crate) async fn commit_retrying(&self, write: Write) -> Result<i64> {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.commit(write.clone()).await {
                Ok(v) => return Ok(v),
                Err(Error::StoreClosed) => return Err(Error::StoreClosed),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "a transition waits for the store");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Proves writes reach the disk: bumps the heartbeat row (a real page write,
    /// so a full disk fails it, unlike an empty transaction).
    pub(crate) async fn heartbeat(&self) -> Result<()> {
        self.commit(Write::new("check the store is writable", |c| {
            c.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'heartbeat'",
                [],
            )
            .map(|n| n as i64)
        }))
        .await
        .map(drop)
    }

    /// Sequence number of the newest committed event; changes after every commit that adds one.
    pub(crate) fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.newest_event.subscribe()
    }

    /// Stored events after `seq`, oldest first, at most `limit`.
    pub(crate) fn events_since(&self, seq: i64, limit: usize) -> Result<Vec<crate::model::Event>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at, agent_id, run, kind, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| Error::store("read events", e))?;
        let rows = stmt
            .query_map(params![seq, limit as i64], |r| {
                let data: String = r.get(5)?;
                Ok(crate::model::Event {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    agent_id: r.get(2)?,
                    run: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                    body: event_body(&r.get::<_, String>(4)?, &data),
                })
            })
            .map_err(|e| Error::store("read events", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("read events", e))
    }

    /// The newest run of every agent id, with how many earlier runs each id has had.
    pub(crate) fn load_latest(&self) -> Result<Vec<(RunRecord, u32)>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare(
                "SELECT r.*, c.n AS runs FROM runs r
                 JOIN (SELECT agent_id, MAX(run_id) AS last, COUNT(*) AS n FROM runs GROUP BY agent_id) c
                   ON r.run_id = c.last
                 ORDER BY r.agent_id",
            )
            .map_err(|e| Error::store("load runs", e))?;
        let rows = stmt
            .query_map([], |row| {
                let n: i64 = row.get("runs")?;
                Ok((
                    row_to_record(row)?,
                    u32::try_from(n.saturating_sub(1)).unwrap_or(0),
                ))
            })
            .map_err(|e| Error::store("load runs", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("load runs", e))
    }

    /// Every stored run of one id, oldest first.
    pub(crate) fn runs(&self, agent_id: &str) -> Result<Vec<RunRecord>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare_cached("SELECT * FROM runs WHERE agent_id = ?1 ORDER BY run_id")
            .map_err(|e| Error::store("load history", e))?;
        let rows = stmt
            .query_map([agent_id], row_to_record)
            .map_err(|e| Error::store("load history", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("load history", e))
    }

    /// The newest run of an id.
    pub(crate) fn latest_run(&self, agent_id: &str) -> Result<Option<RunRecord>> {
        let conn = lock_reader(&self.reader);
        conn.prepare_cached("SELECT * FROM runs WHERE agent_id = ?1 ORDER BY run_id DESC LIMIT 1")
            .and_then(|mut s| s.query_row([agent_id], row_to_record).optional())
            .map_err(|e| Error::store("load a run", e))
    }

    /// One run of an id by its number.
    pub(crate) fn run(&self, agent_id: &str, run: u32) -> Result<Option<RunRecord>> {
        let conn = lock_reader(&self.reader);
        conn.prepare_cached("SELECT * FROM runs WHERE agent_id = ?1 AND run = ?2")
            .and_then(|mut s| {
                s.query_row(params![agent_id, i64::from(run)], row_to_record)
                    .optional()
            })
            .map_err(|e| Error::store("load a run", e))
    }
}

// ---------------------------------------------------------------------------
// Writes. Each returns a re-submittable `Write`; owned data is cloned per attempt.
// ---------------------------------------------------------------------------

/// A new run (in `spawning`) numbered `run` (its owner counts its runs; the
/// store refuses a number twice); its logs go to `<agent_dir>/runs/<run>`.
/// Returns the row id.
pub(crate) fn insert_run(
    spec: &SpawnRequest,
    agent_dir: &Path,
    run: u32,
    attempt: u32,
    started_at: &str,
) -> Write {
    let spec = spec.clone();
    let agent_dir = agent_dir.to_owned();
    let started_at = started_at.to_owned();
    Write::new("record a new run", move |c| {
        let log_dir = agent_dir.join("runs").join(run.to_string());
        c.prepare_cached(
            "INSERT INTO runs (agent_id, run, status, command, cwd, agent_dir, env, labels,
                stop_timeouts, verify_ms, started_at, log_dir, spec, restart_attempt, state)
             VALUES (?1, ?2, 'spawning', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'starting')",
        )?
        .execute(params![
            spec.agent_id,
            i64::from(run),
            json(&spec.command),
            spec.cwd
                .as_deref()
                .unwrap_or(Path::new("/"))
                .to_string_lossy(),
            agent_dir.to_string_lossy(),
            json(&spec.env),
            json(&spec.labels),
            json(&spec.stop_timeouts),
            spec.verify_ms.unwrap_or(0) as i64,
            started_at,
            log_dir.to_string_lossy(),
            json(&spec),
            i64::from(attempt),
        ])?;
        let run_id = c.last_insert_rowid();
        let body = EventBody::State(StateEvent {
            state: Some(AgentState::Starting),
            status: Some(PersistentStatus::Spawning),
            restart_attempt: Some(attempt),
            ..StateEvent::default()
        });
        event(c, run_id, &body)?;
        Ok(run_id)
    })
}

/// A process's identity, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Process {
    pub pid: i32,
    pub start_ticks: u64,
    pub boot_id: String,
}

/// A committed transition of a run: the columns it changes (`None` leaves a
/// column as it is) and the events that go with it. One write, one
/// transaction: the record never shows half of a transition.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transition {
    pub state: Option<AgentState>,
    pub status: Option<PersistentStatus>,
    pub process: Option<Process>,
    /// Exit code and signal of the main process.
    pub exit: Option<(Option<i32>, Option<i32>)>,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    /// `Some(None)` clears the stop.
    pub stop: Option<Option<StopRecord>>,
    /// `Some(None)` clears a planned restart.
    pub next_restart_at: Option<Option<String>>,
    /// The run's pauses (`paused_at` and `paused_s`).
    pub paused: Option<PauseRecord>,
    /// What the `state` event says of the stop (the status's `stop` object).
    pub stop_info: Option<crate::model::StopInfo>,
    /// Events after the `state` event.
    pub events: Vec<EventBody>,
    /// Record no `state` event (the change is the record's alone: a stage's
    /// deadline, whose own event is in `events`).
    pub quiet: bool,
}

/// Writes `t` to run `run_id`, with its `state` event.
pub(crate) fn transition(run_id: i64, t: Transition) -> Write {
    use rusqlite::types::Value;
    fn text(s: &Option<String>) -> Value {
        s.clone().map_or(Value::Null, Value::Text)
    }
    Write::new("record a transition", move |c| {
        let mut sets: Vec<&str> = Vec::new();
        let mut values: Vec<Value> = vec![Value::Integer(run_id)];
        let mut set = |col: &'static str, v: Value| {
            sets.push(col);
            values.push(v);
        };
        if let Some(state) = t.state {
            set("state", Value::Text(state.as_str().into()));
        }
        if let Some(status) = t.status {
            set("status", Value::Text(status.as_str().into()));
        }
        if let Some(p) = &t.process {
            set("pid", Value::Integer(p.pid.into()));
            set("start_ticks", Value::Integer(p.start_ticks as i64));
            set("boot_id", Value::Text(p.boot_id.clone()));
        }
        if let Some((code, signal)) = t.exit {
            set(
                "exit_code",
                code.map_or(Value::Null, |c| Value::Integer(c.into())),
            );
            set(
                "exit_signal",
                signal.map_or(Value::Null, |c| Value::Integer(c.into())),
            );
        }
        if let Some(at) = &t.ended_at {
            set("ended_at", Value::Text(at.clone()));
        }
        if let Some(reason) = &t.end_reason {
            set("end_reason", Value::Text(reason.clone()));
        }
        if let Some(stop) = &t.stop {
            set(
                "stop",
                stop.as_ref().map_or(Value::Null, |s| Value::Text(json(s))),
            );
        }
        if let Some(at) = &t.next_restart_at {
            set("next_restart_at", text(at));
        }
        if let Some(p) = &t.paused {
            set("paused_at", text(&p.paused_at));
            set("paused_s", Value::Real(p.paused_s));
        }
        if !sets.is_empty() {
            let assignments: Vec<String> = sets
                .iter()
                .enumerate()
                .map(|(i, col)| format!("{col} = ?{}", i + 2))
                .collect();
            c.prepare_cached(&format!(
                "UPDATE runs SET {} WHERE run_id = ?1",
                assignments.join(", ")
            ))?
            .execute(rusqlite::params_from_iter(values))?;
        }
        if !t.quiet {
            let (exit_code, exit_signal) = t.exit.unwrap_or((None, None));
            let body = EventBody::State(StateEvent {
                state: t.state,
                status: t.status,
                pid: t.process.as_ref().map(|p| p.pid),
                exit_code,
                exit_signal,
                reason: t.end_reason.clone(),
                restart_attempt: None,
                stop: t.stop_info.clone(),
            });
            event(c, run_id, &body)?;
        }
        for body in &t.events {
            event(c, run_id, body)?;
        }
        Ok(0)
    })
}

/// The job a run was submitted as, or the node it was placed on; with
/// `status`, a transition (to `state`) in the same commit.
pub(crate) fn set_job(
    run_id: i64,
    job: JobRecord,
    status: Option<(PersistentStatus, AgentState)>,
) -> Write {
    Write::new("record the run's job", move |c| {
        c.prepare_cached(
            "UPDATE runs SET job = ?2, status = COALESCE(?3, status), state = COALESCE(?4, state)
             WHERE run_id = ?1",
        )?
        .execute(params![
            run_id,
            json(&job),
            status.map(|s| s.0.as_str()),
            status.map(|s| s.1.as_str())
        ])?;
        let body = EventBody::Job(JobEvent {
            engine: job.engine.clone(),
            job_id: job.job_id.clone(),
            node: job.node.clone(),
            status: status.map(|s| s.0),
        });
        event(c, run_id, &body)?;
        if let Some((status, state)) = status {
            let body = EventBody::State(StateEvent {
                state: Some(state),
                status: Some(status),
                ..StateEvent::default()
            });
            event(c, run_id, &body)?;
        }
        Ok(0)
    })
}

/// The engine queued the run's job again (it had started): the job without a
/// node, the run `spawning` and `starting` again, said by a `job_requeued`
/// and a `state` event, in one commit.
pub(crate) fn requeue_job(
    run_id: i64,
    job: JobRecord,
    left: Option<String>,
    pending_reason: String,
) -> Write {
    Write::new("record a requeued job", move |c| {
        c.prepare_cached("UPDATE runs SET job = ?2, status = ?3, state = ?4 WHERE run_id = ?1")?
            .execute(params![
                run_id,
                json(&job),
                PersistentStatus::Spawning.as_str(),
                AgentState::Starting.as_str()
            ])?;
        let body = EventBody::JobRequeued(crate::model::JobRequeuedEvent {
            engine: job.engine.clone(),
            job_id: job.job_id.clone(),
            node: left.clone(),
            pending_reason: pending_reason.clone(),
        });
        event(c, run_id, &body)?;
        let body = EventBody::State(StateEvent {
            state: Some(AgentState::Starting),
            status: Some(PersistentStatus::Spawning),
            reason: Some(format!("the engine queued job {} again", job.job_id)),
            ..StateEvent::default()
        });
        event(c, run_id, &body)?;
        Ok(0)
    })
}

/// Self-reported progress.
pub(crate) fn set_progress(
    run_id: i64,
    progress: u8,
    message: Option<String>,
    at: String,
) -> Write {
    Write::new("record progress", move |c| {
        c.prepare_cached(
            "UPDATE runs SET progress = ?2, progress_message = ?3, progress_at = ?4 WHERE run_id = ?1",
        )?
        .execute(params![run_id, i64::from(progress), message, at])?;
        let body = EventBody::Progress(crate::model::ProgressEvent {
            progress,
            message: message.clone(),
        });
        event(c, run_id, &body)?;
        Ok(0)
    })
}

/// An event that is not a transition of the run's own (a limit hit, a probe result).
pub(crate) fn record_event(run_id: i64, body: EventBody) -> Write {
    Write::new("record an event", move |c| {
        event(c, run_id, &body).map(|()| 0)
    })
}

/// Removes the runs of `agent_id` up to row `upto` (a run started after the
/// removal began is kept); returns how many.
pub(crate) fn delete_agent(agent_id: &str, upto: i64) -> Write {
    let agent_id = agent_id.to_owned();
    Write::new("remove an agent's runs", move |c| {
        c.execute(
            "DELETE FROM runs WHERE agent_id = ?1 AND run_id <= ?2",
            params![agent_id, upto],
        )
        .map(|n| n as i64)
    })
}

/// Removes every ended run except the rows in `keep` (the current runs of
/// agents still supervised); the removed rows' log dirs are sent to `removed`.
pub(crate) fn prune(keep: Vec<i64>, removed: Arc<Mutex<Vec<(String, PathBuf)>>>) -> Write {
    let keep = json(&keep);
    Write::new("prune ended runs", move |c| {
        const ENDED: &str = "status NOT IN ('spawning', 'running')
                             AND COALESCE(state, 'ended') IN ('ended', 'backoff')
                             AND run_id NOT IN (SELECT value FROM json_each(?1))";
        let mut stmt = c.prepare(&format!("SELECT agent_id, log_dir FROM runs WHERE {ENDED}"))?;
        let rows = stmt
            .query_map([&keep], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PathBuf::from(r.get::<_, String>(1)?),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let n = c.execute(&format!("DELETE FROM runs WHERE {ENDED}"), [&keep])?;
        *removed.lock().unwrap_or_else(|p| p.into_inner()) = rows;
        Ok(n as i64)
    })
}

/// Sets (replacing) a team's budgets.
pub(crate) fn set_team(team: &str, budget: &crate::model::TeamBudget) -> Write {
    let team = team.to_owned();
    let budget = json(budget);
    Write::new("record a team's budgets", move |c| {
        c.prepare_cached(
            "INSERT INTO teams (team, budget, set_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(team) DO UPDATE SET budget = excluded.budget, set_at = excluded.set_at",
        )?
        .execute(params![team, budget, now_rfc3339()])
        .map(|n| n as i64)
    })
}

/// Removes a team's budgets; returns how many rows went (0 or 1).
pub(crate) fn delete_team(team: &str) -> Write {
    let team = team.to_owned();
    Write::new("remove a team's budgets", move |c| {
        c.execute("DELETE FROM teams WHERE team = ?1", [&team])
            .map(|n| n as i64)
    })
}

impl Store {
    /// Every team's budgets, by team id. A row this build cannot read (written
    /// by a newer corral with budgets it does not know) is left out, and said.
    pub(crate) fn teams(&self) -> Result<Vec<(String, crate::model::TeamBudget)>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare("SELECT team, budget FROM teams ORDER BY team")
            .map_err(|e| Error::store("load team budgets", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| Error::store("load team budgets", e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("load team budgets", e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(team, text)| match serde_json::from_str(&text) {
                Ok(budget) => Some((team, budget)),
                Err(e) => {
                    tracing::warn!(team = %team, error = %e, "a stored team budget cannot be read; left out");
                    None
                }
            })
            .collect())
    }

    /// Start times (RFC 3339) of the agent's recent restarts, newest first.
    pub(crate) fn recent_restarts(&self, agent_id: &str, limit: u32) -> Result<Vec<String>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT started_at FROM runs WHERE agent_id = ?1 AND restart_attempt > 0
                 ORDER BY run_id DESC LIMIT ?2",
            )
            .map_err(|e| Error::store("load restart history", e))?;
        let rows = stmt
            .query_map(params![agent_id, i64::from(limit)], |r| r.get(0))
            .map_err(|e| Error::store("load restart history", e))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(|e| Error::store("load restart history", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> SpawnRequest {
        SpawnRequest {
            agent_id: id.into(),
            command: vec!["sleep".into(), "1".into()],
            cwd: Some("/".into()),
            agent_dir: Some("/tmp".into()),
            labels: std::collections::BTreeMap::from([("team".into(), "a".into())]),
            stop_timeouts: Some(vec![10.0, 5.0, 5.0]),
            verify_ms: Some(100),
            ..Default::default()
        }
    }

    async fn new_run(store: &Store, id: &str, run: u32) -> i64 {
        store
            .commit(insert_run(
                &spec(id),
                Path::new("/tmp/a"),
                run,
                0,
                &now_rfc3339(),
            ))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn runs_are_numbered_per_agent_and_history_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("corral.db")).unwrap();
        let first = new_run(&store, "a", 1).await;
        let started = Transition {
            state: Some(AgentState::Running),
            status: Some(PersistentStatus::Running),
            process: Some(Process {
                pid: 42,
                start_ticks: 7,
                boot_id: "boot".into(),
            }),
            ..Transition::default()
        };
        store.commit(transition(first, started)).await.unwrap();
        let end = Transition {
            state: Some(AgentState::Ended),
            status: Some(PersistentStatus::Failed),
            exit: Some((Some(3), None)),
            ended_at: Some(now_rfc3339()),
            end_reason: Some("exited with code 3".into()),
            ..Transition::default()
        };
        store.commit(transition(first, end)).await.unwrap();
        let _other = new_run(&store, "b", 1).await;
        let second = new_run(&store, "a", 2).await;
        let dup = store
            .commit(insert_run(&spec("a"), Path::new("/tmp/a"), 2, 0, "x"))
            .await;
        assert!(dup.is_err(), "a run number is taken once");
        let latest = store.load_latest().unwrap();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0].0.run_id, second);
        assert_eq!(latest[0].1, 1, "one earlier run");
        assert_eq!(latest[0].0.log_dir, Path::new("/tmp/a/runs/2"));
        let history = store.runs("a").unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].exit_code, Some(3));
        assert_eq!(history[0].pid, Some(42));
        assert_eq!(history[0].spec.labels["team"], "a");
        assert_eq!(history[0].state, Some(AgentState::Ended));
        let events = store.events_since(0, 100).unwrap();
        assert!(events.iter().any(|e| e.agent_id == "a" && e.run == 2));
        let ended = events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::State(s) if s.state == Some(AgentState::Ended) => Some(s.clone()),
                _ => None,
            })
            .expect("the end's state event");
        assert_eq!(ended.exit_code, Some(3));
        assert_eq!(ended.status, Some(PersistentStatus::Failed));
    }

    #[tokio::test]
    async fn concurrent_writes_are_grouped_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("corral.db")).unwrap();
        let writes = (0..200).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { new_run(&store, &format!("a{i}"), 1).await })
        });
        for w in writes {
            w.await.unwrap();
        }
        assert_eq!(store.load_latest().unwrap().len(), 200);
    }

    #[test]
    fn events_of_older_builds_and_unknown_kinds_still_read() {
        assert_eq!(
            event_body("state", r#"{"status": "spawning", "restart_attempt": 0}"#),
            EventBody::State(StateEvent {
                status: Some(PersistentStatus::Spawning),
                restart_attempt: Some(0),
                ..StateEvent::default()
            })
        );
        assert!(matches!(
            event_body("stop_stage", r#"{"stage": "term", "signal": "SIGTERM", "pid": 4}"#),
            EventBody::StopStage(s) if s.pid == Some(4) && s.stage == StopStage::Term
        ));
        assert_eq!(event_body("from_the_future", "{}"), EventBody::Other);
        assert_eq!(event_body("progress", "not json"), EventBody::Other);
    }

    #[test]
    fn an_emptied_database_is_refused_when_the_state_dir_was_in_use() {
        let state = || {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("agents")).unwrap();
            std::fs::write(dir.path().join("corral.db"), "").unwrap();
            let path = dir.path().join("corral.db");
            (dir, path)
        };
        // A new state dir: an empty file and an empty agents/ are a new store.
        let (new, path) = state();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_latest().unwrap().len(), 0);
        drop((store, new));

        // Emptied beside an agent's dir: refused, naming the file and the sign,
        // and left as it was.
        let (dir, path) = state();
        let agents = dir.path().join("agents");
        std::fs::create_dir(agents.join("a")).unwrap();
        let err = Store::open(&path).map(drop).unwrap_err();
        assert!(matches!(err, Error::StoreLost { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{} is empty (0 bytes)", path.display())),
            "{msg}"
        );
        assert!(msg.contains("agents/ holds 1 entry"), "{msg}");
        assert!(msg.contains("Restore"), "{msg}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "untouched");
        assert!(
            !dir.path().join("corral.db-wal").exists(),
            "SQLite never opened it"
        );

        // Emptied beside a WAL (no agent dir): refused, the WAL left alone.
        std::fs::remove_dir(agents.join("a")).unwrap();
        std::fs::write(dir.path().join("corral.db-wal"), [1u8; 32]).unwrap();
        let err = Store::open(&path).map(drop).unwrap_err();
        assert!(
            err.to_string().contains("corral.db-wal holds 32 bytes"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("corral.db-wal")).unwrap(),
            [1u8; 32]
        );

        // Replaced by an empty database beside an agent's dir: refused too.
        std::fs::remove_file(dir.path().join("corral.db-wal")).unwrap();
        std::fs::remove_file(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE other (x INTEGER)")
            .unwrap();
        std::fs::create_dir(agents.join("a")).unwrap();
        let err = Store::open(&path).map(drop).unwrap_err();
        assert!(err.to_string().contains("holds no corral schema"), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(Error::SchemaTooNew { .. })
        ));
    }

    #[tokio::test]
    async fn a_deleted_database_refuses_writes_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        let store = Store::open(&path).unwrap();
        store.heartbeat().await.unwrap();
        assert!(store.failing().borrow().is_none());
        std::fs::remove_file(&path).unwrap();
        let err = store.heartbeat().await.unwrap_err();
        assert!(err.to_string().contains("deleted or replaced"), "{err}");
        assert!(store.failing().borrow().is_some());
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        let _store = Store::open(&path).unwrap();
        for name in ["corral.db", "corral.db-wal", "corral.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn a_version_two_store_is_migrated_with_run_numbers_and_log_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.execute_batch(MIGRATIONS[1]).unwrap();
            tx.pragma_update(None, "user_version", 2).unwrap();
            for _ in 0..2 {
                tx.execute(
                    "INSERT INTO runs (agent_id, status, command, cwd, agent_dir, env, labels,
                        stop_timeouts, verify_ms, started_at)
                     VALUES ('old', 'completed', '[\"true\"]', '/', '/tmp/old', '{}', '{}', '[1,1,1]', 100, 'x')",
                    [],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let runs = store.runs("old").unwrap();
        assert_eq!(runs.iter().map(|r| r.run).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(runs[1].log_dir, Path::new("/tmp/old"));
        assert_eq!(runs[1].spec.command, ["true"]);
        assert_eq!(runs[1].spec.stop_timeouts, Some(vec![1.0, 1.0, 1.0]));
    }

    #[tokio::test]
    async fn a_version_six_store_gains_team_budgets_and_keeps_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..6] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 6).unwrap();
            tx.execute(
                "INSERT INTO runs (agent_id, run, status, command, cwd, agent_dir, env, labels,
                    stop_timeouts, verify_ms, started_at, log_dir, state)
                 VALUES ('L2.1', 1, 'completed', '[\"true\"]', '/', '/tmp/l', '{}', '{}', '[1,1,1]', 100, 'x', '/tmp/l', 'ended')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let version: i32 = lock_reader(&store.reader)
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 7);
        assert_eq!(store.runs("L2.1").unwrap().len(), 1);
        assert!(store.teams().unwrap().is_empty());
        let budget = crate::model::TeamBudget {
            memory_mb: Some(200.0),
            max_agents: Some(3),
            ..Default::default()
        };
        store.commit(set_team("L2", &budget)).await.unwrap();
        let again = crate::model::TeamBudget {
            pids: Some(50),
            ..budget.clone()
        };
        store.commit(set_team("L2", &again)).await.unwrap();
        store.commit(set_team("L3", &budget)).await.unwrap();
        assert_eq!(
            store.teams().unwrap(),
            [("L2".to_owned(), again), ("L3".to_owned(), budget)]
        );
        assert_eq!(store.commit(delete_team("L3")).await.unwrap(), 1);
        assert_eq!(store.commit(delete_team("L3")).await.unwrap(), 0);
        assert_eq!(store.teams().unwrap().len(), 1);
    }
}
