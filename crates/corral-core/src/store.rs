//! The durable record: one SQLite database (`corral.db`) in the state dir.
//!
//! Every run of every agent is a row in `runs`; the newest row of an id is its
//! current run, older rows are its history. Lifecycle transitions are written
//! before they are reported: callers `await` the commit.
//!
//! Writes go through one writer thread that owns the connection and commits in
//! groups: it takes every write queued while the previous commit was syncing and
//! applies them in one transaction (each in its own savepoint, so one bad write
//! fails alone). A thousand agents spawning at once then cost a few dozen fsyncs
//! instead of thousands, and no caller is told "done" before its row is durable.
//! The database runs in WAL mode with `synchronous=FULL`: a commit is on disk
//! when it returns, and a killed daemon leaves either all of a transaction or
//! none of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::model::PersistentStatus;

/// Schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 2;

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
];

/// One run of one agent, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Row id; increases with every run.
    pub run_id: i64,
    /// The agent's id.
    pub agent_id: String,
    /// Lifecycle state.
    pub status: PersistentStatus,
    /// argv.
    pub command: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Directory holding the logs.
    pub agent_dir: PathBuf,
    /// Variables given at spawn (on top of the daemon's environment).
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Staged-stop waits, seconds.
    pub stop_timeouts: [f64; 3],
    /// Verification window, ms.
    pub verify_ms: u64,
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
}

/// How a run ended, as written by [`Store::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// Final state.
    pub status: PersistentStatus,
    /// RFC 3339.
    pub ended_at: String,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when one ended it.
    pub exit_signal: Option<i32>,
    /// In words.
    pub end_reason: String,
}

/// Appends an event about run `run_id` (its agent id looked up in the same
/// transaction), so a transition and its event are committed together.
fn event(c: &Connection, run_id: i64, kind: &str, data: serde_json::Value) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO events (at, agent_id, run_id, kind, data)
         SELECT ?1, agent_id, run_id, ?2, ?3 FROM runs WHERE run_id = ?4",
        params![
            humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind,
            data.to_string(),
            run_id
        ],
    )
    .map(drop)
}

type Op = Box<dyn FnOnce(&Connection) -> rusqlite::Result<i64> + Send>;

struct Job {
    action: &'static str,
    op: Op,
    done: oneshot::Sender<Result<i64>>,
}

/// A queued write.
pub struct Pending(Result<oneshot::Receiver<Result<i64>>>);

impl Pending {
    /// Resolves once the write is committed (or failed).
    pub async fn committed(self) -> Result<i64> {
        self.0?.await.map_err(|_| Error::StoreClosed)?
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    /// One connection for reads (WAL lets it read beside the writer).
    reader: Arc<Mutex<Connection>>,
    newest_event: Arc<watch::Sender<i64>>,
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
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL with synchronous=FULL: commits are durable when they return.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
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

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = row.get("status")?;
    let command: String = row.get("command")?;
    let env: String = row.get("env")?;
    let labels: String = row.get("labels")?;
    let timeouts: String = row.get("stop_timeouts")?;
    let timeouts: Vec<f64> = from_json(&timeouts);
    Ok(RunRecord {
        run_id: row.get("run_id")?,
        agent_id: row.get("agent_id")?,
        status: status.parse().unwrap_or(PersistentStatus::Failed),
        command: from_json(&command),
        cwd: PathBuf::from(row.get::<_, String>("cwd")?),
        agent_dir: PathBuf::from(row.get::<_, String>("agent_dir")?),
        env: from_json(&env),
        labels: from_json(&labels),
        stop_timeouts: match timeouts.as_slice() {
            [a, b, c] => [*a, *b, *c],
            _ => crate::supervisor::DEFAULT_STOP_TIMEOUTS,
        },
        verify_ms: row.get::<_, i64>("verify_ms")?.max(0) as u64,
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
    })
}

fn writer_loop(conn: Connection, jobs: mpsc::Receiver<Job>, newest: Arc<watch::Sender<i64>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = std::sync::Arc::new(e);
            for job in batch {
                let _ = job.done.send(Err(Error::Store {
                    action: format!("{}: begin", job.action),
                    source: e.clone(),
                }));
            }
            continue;
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut dones = Vec::with_capacity(batch.len());
        for job in batch {
            let outcome = conn
                .execute_batch("SAVEPOINT op")
                .and_then(|()| match (job.op)(&conn) {
                    Ok(v) => conn.execute_batch("RELEASE op").map(|()| v),
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
                        Err(e)
                    }
                });
            results.push(outcome.map_err(|e| Error::store(job.action, e)));
            dones.push((job.action, job.done));
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for (result, (_, done)) in results.into_iter().zip(dones) {
                    let _ = done.send(result);
                }
                // After the commit: whoever wakes sees every event up to this one.
                let seq = newest_event(&conn);
                newest.send_if_modified(|cur| std::mem::replace(cur, seq) != seq);
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let e = std::sync::Arc::new(e);
                for (action, done) in dones {
                    let _ = done.send(Err(Error::Store {
                        action: format!("{action}: commit"),
                        source: e.clone(),
                    }));
                }
            }
        }
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the store at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = open_connection(path)
            .map_err(|e| Error::store(format!("open {}", path.display()), e))?;
        migrate(&mut conn)?;
        let reader = open_connection(path).map_err(|e| Error::store("open for reading", e))?;
        let newest = Arc::new(watch::Sender::new(newest_event(&conn)));
        let writer_newest = newest.clone();
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("corral-store".into())
            .spawn(move || writer_loop(conn, rx, writer_newest))
            .map_err(|e| Error::StateDir {
                path: path.to_owned(),
                action: "start the store writer thread",
                source: e,
            })?;
        Ok(Self {
            jobs: tx,
            reader: Arc::new(Mutex::new(reader)),
            newest_event: newest,
        })
    }

    /// Queues a write now; the returned future resolves once it is committed.
    /// Writes commit in the order they were queued.
    fn enqueue(
        &self,
        action: &'static str,
        op: impl FnOnce(&Connection) -> rusqlite::Result<i64> + Send + 'static,
    ) -> Pending {
        let (done, wait) = oneshot::channel();
        let sent = self.jobs.send(Job {
            action,
            op: Box::new(op),
            done,
        });
        Pending(sent.map(|()| wait).map_err(|_| Error::StoreClosed))
    }

    async fn write(
        &self,
        action: &'static str,
        op: impl FnOnce(&Connection) -> rusqlite::Result<i64> + Send + 'static,
    ) -> Result<i64> {
        self.enqueue(action, op).committed().await
    }

    /// Records a new run (normally in `spawning`); returns its run id.
    pub async fn insert_run(&self, rec: &RunRecord) -> Result<i64> {
        let rec = rec.clone();
        self.write("record a new run", move |c| {
            c.execute(
                "INSERT INTO runs (agent_id, status, command, cwd, agent_dir, env, labels,
                    stop_timeouts, verify_ms, pid, start_ticks, boot_id, started_at, ended_at,
                    exit_code, exit_signal, end_reason, progress, progress_message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                params![
                    rec.agent_id,
                    rec.status.as_str(),
                    json(&rec.command),
                    rec.cwd.to_string_lossy(),
                    rec.agent_dir.to_string_lossy(),
                    json(&rec.env),
                    json(&rec.labels),
                    json(&rec.stop_timeouts),
                    rec.verify_ms as i64,
                    rec.pid,
                    rec.start_ticks.map(|t| t as i64),
                    rec.boot_id,
                    rec.started_at,
                    rec.ended_at,
                    rec.exit_code,
                    rec.exit_signal,
                    rec.end_reason,
                    rec.progress.map(i64::from),
                    rec.progress_message,
                ],
            )?;
            let run_id = c.last_insert_rowid();
            event(
                c,
                run_id,
                "state",
                serde_json::json!({"status": rec.status, "reason": rec.end_reason}),
            )?;
            Ok(run_id)
        })
        .await
    }

    /// Records the identity of a started process, and optionally a new status.
    pub async fn set_process(
        &self,
        run_id: i64,
        pid: i32,
        start_ticks: u64,
        boot_id: String,
        status: PersistentStatus,
    ) -> Result<()> {
        self.write("record the process identity", move |c| {
            c.execute(
                "UPDATE runs SET pid = ?2, start_ticks = ?3, boot_id = ?4, status = ?5 WHERE run_id = ?1",
                params![run_id, pid, start_ticks as i64, boot_id, status.as_str()],
            )?;
            event(c, run_id, "state", serde_json::json!({"status": status, "pid": pid}))?;
            Ok(0)
        })
        .await
        .map(drop)
    }

    /// Moves a run to `status` (a non-final transition such as spawning → running).
    pub async fn set_status(&self, run_id: i64, status: PersistentStatus) -> Result<()> {
        self.write("record a status change", move |c| {
            c.execute(
                "UPDATE runs SET status = ?2 WHERE run_id = ?1",
                params![run_id, status.as_str()],
            )?;
            event(c, run_id, "state", serde_json::json!({"status": status}))?;
            Ok(0)
        })
        .await
        .map(drop)
    }

    /// Records how a run ended.
    pub async fn finish(&self, run_id: i64, end: Ending) -> Result<()> {
        self.write("record the end of a run", move |c| {
            c.execute(
                "UPDATE runs SET status = ?2, ended_at = ?3, exit_code = ?4, exit_signal = ?5,
                    end_reason = ?6 WHERE run_id = ?1",
                params![
                    run_id,
                    end.status.as_str(),
                    end.ended_at,
                    end.exit_code,
                    end.exit_signal,
                    end.end_reason
                ],
            )?;
            let data = serde_json::json!({
                "status": end.status,
                "exit_code": end.exit_code,
                "exit_signal": end.exit_signal,
                "reason": end.end_reason,
            });
            event(c, run_id, "state", data)?;
            Ok(0)
        })
        .await
        .map(drop)
    }

    /// Records self-reported progress.
    pub async fn set_progress(
        &self,
        run_id: i64,
        progress: u8,
        message: Option<String>,
    ) -> Result<()> {
        self.write("record progress", move |c| {
            c.execute(
                "UPDATE runs SET progress = ?2, progress_message = ?3 WHERE run_id = ?1",
                params![run_id, i64::from(progress), message],
            )?;
            let data = serde_json::json!({"progress": progress, "message": message});
            event(c, run_id, "progress", data)?;
            Ok(0)
        })
        .await
        .map(drop)
    }

    /// Proves the store takes writes: an empty write transaction through the writer.
    pub async fn ping(&self) -> Result<()> {
        self.write("check the store is writable", |_| Ok(0))
            .await
            .map(drop)
    }

    /// Records an event that is not a transition of the run's own (a stop stage).
    /// Queues an event that is not a transition of the run's own (a stop stage);
    /// it commits before anything queued after it. Await the result to know it did.
    pub fn record_event(
        &self,
        run_id: i64,
        kind: &'static str,
        data: serde_json::Value,
    ) -> Pending {
        self.enqueue("record an event", move |c| {
            event(c, run_id, kind, data).map(|()| 0)
        })
    }

    /// Stored events after `seq`, oldest first, at most `limit`.
    pub fn events_since(&self, seq: i64, limit: usize) -> Result<Vec<crate::model::Event>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at, agent_id, run_id, kind, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| Error::store("read events", e))?;
        let rows = stmt
            .query_map(params![seq, limit as i64], |r| {
                let data: String = r.get(5)?;
                Ok(crate::model::Event {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    agent_id: r.get(2)?,
                    run_id: r.get(3)?,
                    kind: r.get(4)?,
                    data: serde_json::from_str(&data).unwrap_or_default(),
                })
            })
            .map_err(|e| Error::store("read events", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("read events", e))
    }

    /// Sequence number of the newest committed event; changes after every commit that adds one.
    pub fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.newest_event.subscribe()
    }

    /// Removes every run of `agent_id`; returns how many there were.
    pub async fn delete_agent(&self, agent_id: &str) -> Result<u64> {
        let agent_id = agent_id.to_owned();
        self.write("remove an agent's runs", move |c| {
            c.execute("DELETE FROM runs WHERE agent_id = ?1", [agent_id])
                .map(|n| n as i64)
        })
        .await
        .map(|n| n as u64)
    }

    /// Removes every run that has ended; returns how many.
    pub async fn prune(&self) -> Result<u64> {
        self.write("prune ended runs", |c| {
            c.execute(
                "DELETE FROM runs WHERE status NOT IN ('spawning', 'running')",
                [],
            )
            .map(|n| n as i64)
        })
        .await
        .map(|n| n as u64)
    }

    /// The newest run of every agent id, with how many earlier runs each id has had.
    /// Reads through its own connection (WAL lets it run beside the writer).
    pub fn load_latest(&self) -> Result<Vec<(RunRecord, u32)>> {
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
    pub fn history(&self, agent_id: &str) -> Result<Vec<RunRecord>> {
        let conn = lock_reader(&self.reader);
        let mut stmt = conn
            .prepare("SELECT * FROM runs WHERE agent_id = ?1 ORDER BY run_id")
            .map_err(|e| Error::store("load history", e))?;
        let rows = stmt
            .query_map([agent_id], row_to_record)
            .map_err(|e| Error::store("load history", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store("load history", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            run_id: 0,
            agent_id: id.into(),
            status: PersistentStatus::Spawning,
            command: vec!["sleep".into(), "1".into()],
            cwd: "/".into(),
            agent_dir: "/tmp".into(),
            env: BTreeMap::new(),
            labels: BTreeMap::from([("team".into(), "a".into())]),
            stop_timeouts: [10.0, 5.0, 5.0],
            verify_ms: 100,
            pid: None,
            start_ticks: None,
            boot_id: None,
            started_at: "2026-11-26T10:30:00.000Z".into(),
            ended_at: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            progress: None,
            progress_message: None,
        }
    }

    #[tokio::test]
    async fn runs_round_trip_and_history_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("corral.db")).unwrap();
        let first = store.insert_run(&record("a")).await.unwrap();
        store
            .set_process(first, 42, 7, "boot".into(), PersistentStatus::Running)
            .await
            .unwrap();
        store
            .finish(
                first,
                Ending {
                    status: PersistentStatus::Failed,
                    ended_at: "2026-11-26T10:31:00.000Z".into(),
                    exit_code: Some(3),
                    exit_signal: None,
                    end_reason: "exited with code 3".into(),
                },
            )
            .await
            .unwrap();
        let second = store.insert_run(&record("a")).await.unwrap();
        assert!(second > first);
        let latest = store.load_latest().unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].0.run_id, second);
        assert_eq!(latest[0].1, 1, "one earlier run");
        let history = store.history("a").unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].exit_code, Some(3));
        assert_eq!(history[0].pid, Some(42));
        assert_eq!(history[0].labels["team"], "a");
    }

    #[tokio::test]
    async fn concurrent_writes_are_grouped_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("corral.db")).unwrap();
        let writes = (0..200).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_run(&record(&format!("a{i}"))).await })
        });
        for w in writes {
            w.await.unwrap().unwrap();
        }
        assert_eq!(store.load_latest().unwrap().len(), 200);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(Store::open(&path).is_err());
    }
}
