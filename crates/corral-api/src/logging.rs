//! The daemon's log: `daemon.log` in the state dir, written so that logging
//! can never hang or crash the daemon.
//!
//! Lines go through a bounded queue to a writer thread (`tracing-appender`,
//! lossy): a slow or full disk makes lines drop (and be counted), never makes a
//! request wait. The file writer itself swallows write errors (counting them)
//! and never flushes an error back, so nothing on the logging path can panic;
//! tracing's own "could not log" reports are turned off for the same reason.
//! Every line is escaped before it is written: a newline or NUL inside a
//! user-supplied string (a `cwd`, an agent's stderr in an error) cannot forge a
//! line of its own.
//!
//! The file can be reopened ([`LogReopener`], on SIGHUP): logrotate (or a
//! person) moves `daemon.log` aside, the daemon opens a new one at the same
//! path, and the writer thread switches to it before its next line.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Lines that could not be written, by cause.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// Lines the file refused (full disk, I/O errors).
    pub failed: AtomicU64,
}

/// Keeps the log writer running; dropping it flushes what is queued.
pub struct LogHandle {
    _guard: WorkerGuard,
    counters: Arc<LogCounters>,
    dropped: tracing_appender::non_blocking::ErrorCounter,
    reopener: LogReopener,
}

impl LogHandle {
    /// Lines lost so far: dropped because the queue was full, or refused by the file.
    pub fn lost_lines(&self) -> u64 {
        self.dropped.dropped_lines() as u64 + self.counters.failed.load(Ordering::Relaxed)
    }

    /// What reopens the log file at its path.
    pub fn reopener(&self) -> LogReopener {
        self.reopener.clone()
    }
}

/// A newly opened log file on its way to the writer thread.
#[derive(Debug, Default)]
struct NextFile {
    /// Set once `file` holds one: the writer's cheap check before each line.
    ready: AtomicBool,
    file: Mutex<Option<File>>,
}

/// Reopens the daemon's log at its path (after it was moved aside or
/// deleted); lines written from then on go to the new file.
#[derive(Debug, Clone)]
pub struct LogReopener {
    path: PathBuf,
    next: Arc<NextFile>,
}

impl LogReopener {
    /// Opens the log's path again (created 0600, appended to, never through a
    /// symlink) and hands the file to the writer thread, which writes its next
    /// line there. Blocking (it opens a file). On error the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let file = corral_core::process::open_private_append(&self.path)?;
        *self.next.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        self.next.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Appends escaped lines to the log file; never returns an error.
struct SafeFile {
    file: File,
    next: Arc<NextFile>,
    counters: Arc<LogCounters>,
    line: Vec<u8>,
}

/// `text` with every control character but the final newline escaped (`\n`,
/// `\r`, `\t`, `\0`, `\x1b` …), so one event is always exactly one line.
pub fn escape_line(text: &[u8]) -> Vec<u8> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut out = Vec::with_capacity(body.len() + 1);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0 => out.extend_from_slice(b"\\0"),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

impl Write for SafeFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.next.ready.swap(false, Ordering::Acquire)
            && let Some(file) = self
                .next
                .file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        {
            // The old file is closed here: whoever moved it aside has it whole.
            self.file = file;
        }
        // One event arrives as one buffer (tracing formats it whole).
        self.line.clear();
        self.line.extend_from_slice(&escape_line(buf));
        if self.file.write_all(&self.line).is_err() {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.file.flush();
        Ok(())
    }
}

/// Sends tracing output to `path` (created 0600, appended to, never through a
/// symlink), through a non-blocking, lossy queue.
pub fn install(path: &Path) -> io::Result<LogHandle> {
    let file = corral_core::process::open_private_append(path)?;
    let counters = Arc::new(LogCounters::default());
    let reopener = LogReopener {
        path: path.to_owned(),
        next: Arc::new(NextFile::default()),
    };
    let writer = SafeFile {
        file,
        next: reopener.next.clone(),
        counters: counters.clone(),
        line: Vec::with_capacity(512),
    };
    let (non_blocking, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(16_384)
        .thread_name("corral-log")
        .finish(writer);
    let dropped = non_blocking.error_counter();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .log_internal_errors(false)
        .with_writer(non_blocking)
        .try_init();
    Ok(LogHandle {
        _guard: guard,
        counters,
        dropped,
        reopener,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_log_gets_the_next_line_and_the_moved_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.log");
        let next = Arc::new(NextFile::default());
        let mut writer = SafeFile {
            file: corral_core::process::open_private_append(&path).unwrap(),
            next: next.clone(),
            counters: Arc::default(),
            line: Vec::new(),
        };
        let reopener = LogReopener {
            path: path.clone(),
            next,
        };
        writer.write_all(b"first\n").unwrap();
        let moved = dir.path().join("daemon.log.1");
        std::fs::rename(&path, &moved).unwrap();
        writer.write_all(b"still the old file\n").unwrap();
        reopener.reopen().unwrap();
        writer.write_all(b"second\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&moved).unwrap(),
            "first\nstill the old file\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn user_strings_cannot_forge_lines() {
        let evil = b"INFO cwd=/tmp/x\nERROR forged line\0\x1b[31m\n";
        let out = escape_line(evil);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(!out.contains(&0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INFO cwd=/tmp/x\\nERROR forged line\\0\\x1b[31m\n"
        );
    }
}
