//! Log rotation: a spawn request's `"logs": {"max_mb": M, "keep": K}`.
//!
//! Once per sample interval the sampler calls [`rotate`] for every live run.
//! Each of the run's `stdout.log` and `stderr.log` that is larger than `M` MiB
//! is rotated by copy-and-truncate: `X.log.(K-1)` → `X.log.K`, …,
//! `X.log.1` → `X.log.2` (what was `X.log.K` is dropped), then `X.log` is
//! copied to a new `X.log.1` and truncated to 0 bytes. The agent keeps the file
//! it was handed: it writes with `O_APPEND`, so its next write lands at the new
//! end, offset 0, without a hole of zeros before it.
//!
//! When the copy cannot be made — a disk or quota too full to hold a second
//! copy of the log, or any other failure to create or write it — the log is
//! truncated all the same, or it would grow until the disk is full and stay
//! there: the partial copy is removed, the first part of the log is punched
//! out (`FALLOC_FL_PUNCH_HOLE`, which frees its space at once where the file
//! system can), the newest `M` MiB are copied to `X.log.1` if they fit
//! (nothing is kept if they do not), and the log is truncated. How much was
//! dropped, how much kept and why go to the run's owner, which records a
//! `log_dropped` event. The disk use of a run's logs so stays within what the
//! rotation settings allow (plus what the agent writes in one interval).
//!
//! The trade-offs are those of logrotate's `copytruncate`:
//! - whatever the agent writes between the end of the copy and the truncation
//!   is lost (it is in neither file);
//! - the size is checked once per sample interval, so a log can outgrow `M` by
//!   what the agent writes in one interval;
//! - the copy is made on the sampler thread: rotating a large log delays that
//!   pass's figures by the time the copy takes.
//!
//! The run dir belongs to the agent's user, who can put anything in it, so
//! nothing found there is trusted: the dirs below the agent dir are opened
//! without following symlinks, and every name relative to the run dir with
//! `O_NOFOLLOW`; a log is rotated only when it is a regular file with one link,
//! owned by the agent's user (a hard link to another file is never copied or
//! truncated); renames and unlinks act on names, never on what a symlink
//! points to; the copy is created `O_EXCL` and given the log's owner, group
//! and permission bits.
//!
//! A failure is logged with the agent id, the path and the cause — once, until
//! its cause changes or the log rotates — and never stops the sampler. Nothing
//! is written to the store here: events belong to the agent's owner, to which
//! [`rotate`] hands what was dropped.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags};

use crate::model::LogDroppedEvent;
use crate::platform::agent_dir as files;

use super::view::View;

/// Failures already logged, by path: one is logged again only when its cause
/// changes.
#[derive(Debug, Default)]
pub(crate) struct Warned(HashMap<PathBuf, String>);

impl Warned {
    /// Forgets the failures of runs whose log dir is not in `live`.
    pub(crate) fn retain_runs(&mut self, live: &HashSet<&Path>) {
        self.0.retain(|path, _| {
            live.contains(path.as_path()) || path.parent().is_some_and(|d| live.contains(d))
        });
    }

    fn report(&mut self, view: &View, path: PathBuf, error: &io::Error) {
        let cause = error.to_string();
        if self.0.get(&path) != Some(&cause) {
            tracing::warn!(agent_id = %view.id, run = view.run, path = %path.display(), error = %cause, "cannot rotate a log");
            self.0.insert(path, cause);
        }
    }
}

/// `max_mb` MiB in bytes.
fn max_bytes(max_mb: f64) -> u64 {
    (max_mb * 1024.0 * 1024.0) as u64
}

/// What rotating one log did.
#[derive(Debug, PartialEq)]
pub(crate) enum Rotated {
    /// The whole log was copied to `.1`, then truncated: the bytes copied.
    Copied(u64),
    /// The log could not be copied whole; it was truncated anyway.
    Dropped(Dropped),
}

/// A log truncated without a whole copy.
#[derive(Debug, PartialEq)]
pub(crate) struct Dropped {
    /// Its newest bytes, kept in `.1` (0 when even they did not fit).
    pub kept: u64,
    /// The bytes now in no file.
    pub dropped: u64,
    /// Why the whole copy could not be made.
    pub cause: String,
}

/// Rotates the run's logs that have outgrown the spec's `logs.max_mb`; does
/// nothing when the spec asks for no rotation. Returns the logs that had to
/// be truncated without a whole copy, for the owner to record.
pub(crate) fn rotate(view: &View, warned: &mut Warned) -> Vec<LogDroppedEvent> {
    let mut dropped = Vec::new();
    let Some(logs) = &view.spec.request.logs else {
        return dropped;
    };
    let dir = match files::open_run_dir(&view.spec.agent_dir, &view.log_dir) {
        Ok(dir) => dir,
        Err(e) => {
            warned.report(view, view.log_dir.clone(), &e);
            return dropped;
        }
    };
    warned.0.remove(&view.log_dir);
    // The logs are the agent's user's when it has one, else ours. A user that
    // cannot be resolved now owned the run dir corral made for it (nobody
    // but root can give a file away).
    let owner = match view.spec.user.user() {
        Ok(Some(u)) => u.credentials.uid,
        Ok(None) => rustix::process::geteuid().as_raw(),
        Err(_) => match rustix::fs::fstat(&dir) {
            Ok(st) => st.st_uid,
            Err(e) => {
                warned.report(view, view.log_dir.clone(), &e.into());
                return dropped;
            }
        },
    };
    for (stream, path) in [("stdout", view.stdout_log()), ("stderr", view.stderr_log())] {
        let name = format!("{stream}.log");
        match rotate_log(&dir, &name, max_bytes(logs.max_mb), logs.keep, owner) {
            Ok(rotated) => {
                warned.0.remove(&path);
                match rotated {
                    None => {}
                    Some(Rotated::Copied(bytes)) => {
                        tracing::info!(agent_id = %view.id, run = view.run, path = %path.display(), bytes, keep = logs.keep, "log rotated");
                    }
                    Some(Rotated::Dropped(d)) => {
                        tracing::warn!(agent_id = %view.id, run = view.run, path = %path.display(), dropped_bytes = d.dropped, kept_bytes = d.kept, cause = %d.cause, "log truncated without a whole copy; its older part is lost");
                        dropped.push(LogDroppedEvent {
                            stream: stream.into(),
                            dropped_bytes: d.dropped,
                            kept_bytes: d.kept,
                            reason: d.cause,
                        });
                    }
                }
            }
            Err(e) => warned.report(view, path, &e),
        }
    }
    dropped
}

/// Adds what was being done to an error.
fn doing(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Ignores "no such file".
fn unless_missing(r: rustix::io::Result<()>) -> rustix::io::Result<()> {
    match r {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => other,
    }
}

/// Rotates log `name` of run dir `dir` if it is larger than `limit` bytes,
/// keeping `keep` copies; what it did, when it rotated. `owner` is the uid
/// the log must belong to.
fn rotate_log(
    dir: &OwnedFd,
    name: &str,
    limit: u64,
    keep: u32,
    owner: u32,
) -> io::Result<Option<Rotated>> {
    let seen = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(seen.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file (a symlink, FIFO, device or directory); not rotated",
        ));
    }
    if seen.st_size as u64 <= limit {
        return Ok(None);
    }
    let log = rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| doing("opening it".into())(e.into()))?;
    // What was opened, which may not be what was looked at.
    let st = rustix::fs::fstat(&log)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file; not rotated",
        ));
    }
    if st.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it has {} links (a hard link to another file?); not rotated",
                st.st_nlink
            ),
        ));
    }
    if st.st_uid != owner {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to the agent's uid {owner}; not rotated",
                st.st_uid
            ),
        ));
    }
    if st.st_size as u64 <= limit {
        return Ok(None);
    }
    for i in (1..keep).rev() {
        let (from, to) = (format!("{name}.{i}"), format!("{name}.{}", i + 1));
        unless_missing(rustix::fs::renameat(dir, &from, dir, &to))
            .map_err(|e| doing(format!("renaming {from} to {to}"))(e.into()))?;
    }
    let first = format!("{name}.1");
    unless_missing(rustix::fs::unlinkat(dir, &first, AtFlags::empty()))
        .map_err(|e| doing(format!("removing {first}"))(e.into()))?;
    let log = File::from(log);
    let truncate = |log: &File| {
        rustix::fs::ftruncate(log, 0).map_err(|e| doing("truncating it".into())(e.into()))
    };
    let whole = room_for(&log, st.st_size as u64)
        .and_then(|()| copy_range(dir, &first, &log, &st, 0, None));
    let cause = match whole {
        Ok(copied) => {
            return match truncate(&log) {
                Ok(()) => Ok(Some(Rotated::Copied(copied))),
                Err(e) => {
                    // Leave no copy of a log that stays: the next pass tries again.
                    let _ = rustix::fs::unlinkat(dir, &first, AtFlags::empty());
                    Err(e)
                }
            };
        }
        Err(e) => e.to_string(),
    };
    // No whole copy: free the older part of the log first (the agent appends,
    // so only its end matters to it), keep the newest `limit` bytes if they
    // fit, and truncate the log whatever happens, so that the disk use stays
    // bounded.
    let size = rustix::fs::fstat(&log).map_or(st.st_size as u64, |s| s.st_size as u64);
    let from = size.saturating_sub(limit);
    if from > 0 {
        // Where punching holes is not supported, the tail may still fit.
        let _ = rustix::fs::fallocate(
            &log,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            from,
        );
    }
    let kept = copy_range(dir, &first, &log, &st, from, Some(size - from)).unwrap_or(0);
    truncate(&log)?;
    Ok(Some(Rotated::Dropped(Dropped {
        kept,
        dropped: size - kept,
        cause,
    })))
}

/// Fails early when the log's file system has no room for a copy of `size`
/// bytes: writing most of a copy only to remove it would be wasted work.
fn room_for(log: &File, size: u64) -> io::Result<()> {
    let vfs = rustix::fs::fstatvfs(log)?;
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if free < size {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{free} bytes are free on its file system; a copy needs {size}"),
        ));
    }
    Ok(())
}

/// Creates `copy` in `dir` (exclusively) with the log's owner and mode and
/// copies the log into it from offset `from` (`len` bytes, or to its end);
/// the bytes copied. On failure the partial copy is removed.
fn copy_range(
    dir: &OwnedFd,
    copy: &str,
    log: &File,
    st: &rustix::fs::Stat,
    from: u64,
    len: Option<u64>,
) -> io::Result<u64> {
    let fd = rustix::fs::openat(
        dir,
        copy,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| doing(format!("creating {copy}"))(e.into()))?;
    fill_copy(log, fd, st, from, len).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, copy, AtFlags::empty());
        doing(format!("copying it to {copy}"))(e)
    })
}

/// Gives `copy` the log's owner and mode, then copies the log into it from
/// offset `from` (`len` bytes, or to its end).
fn fill_copy(
    mut log: &File,
    copy: OwnedFd,
    st: &rustix::fs::Stat,
    from: u64,
    len: Option<u64>,
) -> io::Result<u64> {
    let created = rustix::fs::fstat(&copy)?;
    if (created.st_uid, created.st_gid) != (st.st_uid, st.st_gid) {
        rustix::fs::fchown(
            &copy,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?;
    }
    rustix::fs::fchmod(&copy, Mode::from_raw_mode(st.st_mode & 0o777))?;
    log.seek(io::SeekFrom::Start(from))?;
    let mut copy = File::from(copy);
    match len {
        Some(len) => io::copy(&mut log.take(len), &mut copy),
        None => io::copy(&mut log, &mut copy),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    use super::*;

    fn me() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// A run dir `<tmp>/a/runs/1` and its open fd.
    fn run_dir() -> (tempfile::TempDir, PathBuf, OwnedFd) {
        let tmp = tempfile::tempdir().unwrap();
        let agent_dir = tmp.path().join("a");
        let run = agent_dir.join("runs/1");
        std::fs::create_dir_all(&run).unwrap();
        let fd = files::open_run_dir(&agent_dir, &run).unwrap();
        (tmp, run, fd)
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_log_over_the_limit_is_copied_then_truncated_keeping_k_copies() {
        let (_tmp, run, dir) = run_dir();
        let log = run.join("stdout.log");
        // The agent's file: appending, as corral hands it over.
        let mut agent = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&log)
            .unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).unwrap();
        agent.write_all(b"small\n").unwrap();
        assert_eq!(rotate_log(&dir, "stdout.log", 10, 2, me()).unwrap(), None);
        assert!(!run.join("stdout.log.1").exists());

        for round in 1..=3 {
            agent
                .write_all(format!("round {round} text\n").as_bytes())
                .unwrap();
            let copied = rotate_log(&dir, "stdout.log", 10, 2, me()).unwrap();
            assert!(
                matches!(copied, Some(Rotated::Copied(_))),
                "round {round}: {copied:?}"
            );
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "truncated");
            // The next write lands at the new start: no hole of zeros.
            agent.write_all(b"next\n").unwrap();
            assert_eq!(read(&log), "next\n");
        }
        assert_eq!(read(&run.join("stdout.log.1")), "next\nround 3 text\n");
        assert_eq!(read(&run.join("stdout.log.2")), "next\nround 2 text\n");
        assert!(!run.join("stdout.log.3").exists(), "keep = 2");
        let copy = std::fs::metadata(run.join("stdout.log.1")).unwrap();
        assert_eq!(copy.mode() & 0o777, 0o640, "the log's mode");
        assert_eq!(copy.uid(), me());
        // A missing log is nothing to do.
        assert_eq!(rotate_log(&dir, "stderr.log", 10, 2, me()).unwrap(), None);
    }

    #[test]
    fn keep_one_replaces_the_single_copy() {
        let (_tmp, run, dir) = run_dir();
        let log = run.join("stderr.log");
        for text in ["first long line\n", "second long line\n"] {
            std::fs::write(&log, text).unwrap();
            rotate_log(&dir, "stderr.log", 4, 1, me()).unwrap().unwrap();
            assert_eq!(read(&run.join("stderr.log.1")), text);
        }
        assert!(!run.join("stderr.log.2").exists());
    }

    #[test]
    fn planted_links_are_never_followed_and_foreign_files_never_touched() {
        let (tmp, run, dir) = run_dir();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious ".repeat(10)).unwrap();
        let log = run.join("stdout.log");

        // The log itself a symlink: refused.
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let err = rotate_log(&dir, "stdout.log", 1, 3, me()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_file(&log).unwrap();

        // A hard link to another file: refused.
        std::fs::hard_link(&victim, &log).unwrap();
        let err = rotate_log(&dir, "stdout.log", 1, 3, me()).unwrap_err();
        assert!(err.to_string().contains("2 links"), "{err}");
        std::fs::remove_file(&log).unwrap();

        // Someone else's file: refused.
        std::fs::write(&log, "a long enough log\n").unwrap();
        let err = rotate_log(&dir, "stdout.log", 1, 3, me() + 1).unwrap_err();
        assert!(err.to_string().contains("not to the agent's uid"), "{err}");
        assert_eq!(read(&log), "a long enough log\n");

        // Symlinks planted at the copies' names are moved or replaced, not written through.
        for n in 1..=3 {
            std::os::unix::fs::symlink(&victim, run.join(format!("stdout.log.{n}"))).unwrap();
        }
        rotate_log(&dir, "stdout.log", 1, 3, me()).unwrap().unwrap();
        let one = std::fs::symlink_metadata(run.join("stdout.log.1")).unwrap();
        assert!(one.is_file(), "a new regular file");
        assert_eq!(read(&run.join("stdout.log.1")), "a long enough log\n");
        assert_eq!(read(&victim), "precious ".repeat(10));
        assert!(!run.join("stdout.log.4").exists());

        // A symlinked run dir is not entered.
        let agent_dir = tmp.path().join("a");
        std::os::unix::fs::symlink(tmp.path(), agent_dir.join("runs/2")).unwrap();
        assert!(files::open_run_dir(&agent_dir, &agent_dir.join("runs/2")).is_err());
        assert!(files::open_run_dir(&agent_dir, tmp.path()).is_err());
    }

    /// A small tmpfs, unmounted when dropped (after a failed assertion too).
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn new(size: &str) -> Self {
            assert_eq!(
                me(),
                0,
                "this test needs root (it mounts a small tmpfs to fill)"
            );
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "mount -t tmpfs failed");
            Self(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    const MIB: u64 = 1024 * 1024;

    /// `len` bytes of numbered 16-byte lines.
    fn lines(len: u64) -> Vec<u8> {
        (0..len / 16)
            .flat_map(|i| format!("line {i:010}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_log_larger_than_the_free_space_is_truncated_keeping_what_fits() {
        let disk = SmallDisk::new("4m");
        let agent_dir = disk.0.path().join("a");
        let run = agent_dir.join("runs/1");
        std::fs::create_dir_all(&run).unwrap();
        let dir = files::open_run_dir(&agent_dir, &run).unwrap();
        let log = run.join("stdout.log");
        let copy = run.join("stdout.log.1");

        // 3 MiB on a 4 MiB disk: no room for a whole copy, room for the
        // newest 1 MiB once the older part is punched out.
        let text = lines(3 * MIB);
        std::fs::write(&log, &text).unwrap();
        let Some(Rotated::Dropped(d)) = rotate_log(&dir, "stdout.log", MIB, 2, me()).unwrap()
        else {
            panic!("the log was not truncated without a copy")
        };
        assert_eq!((d.kept, d.dropped), (MIB, 2 * MIB), "{d:?}");
        assert!(d.cause.contains("free on its file system"), "{d:?}");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "truncated");
        assert_eq!(std::fs::read(&copy).unwrap(), &text[(2 * MIB) as usize..]);

        // A disk full to the last byte: not even the newest part fits; the
        // partial copy is removed and the log truncated all the same.
        std::fs::remove_file(&copy).unwrap();
        std::fs::write(&log, lines(3 * MIB / 2)).unwrap();
        let mut fill = std::fs::File::create(disk.0.path().join("fill")).unwrap();
        let block = vec![b'x'; 64 * 1024];
        while fill.write_all(&block).is_ok() {}
        while fill.write_all(b"x").is_ok() {}
        let Some(Rotated::Dropped(d)) = rotate_log(&dir, "stdout.log", MIB, 2, me()).unwrap()
        else {
            panic!("the log was not truncated without a copy")
        };
        assert_eq!((d.kept, d.dropped), (0, 3 * MIB / 2), "{d:?}");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "truncated");
        assert!(!copy.exists(), "no partial copy left");
        assert!(!run.join("stdout.log.2").exists());
        drop(fill);
    }

    #[test]
    fn the_copy_belongs_to_the_logs_owner() {
        assert_eq!(
            me(),
            0,
            "this test needs root (it gives a log to another user, as `user` agents have)"
        );
        let (_tmp, run, dir) = run_dir();
        let log = run.join("stdout.log");
        std::fs::write(&log, "nobody's output\n").unwrap();
        std::os::unix::fs::chown(&log, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o604)).unwrap();
        // Only as the agent's user: root's own file is not the agent's.
        assert!(rotate_log(&dir, "stdout.log", 1, 2, 0).is_err());
        rotate_log(&dir, "stdout.log", 1, 2, 65534)
            .unwrap()
            .unwrap();
        let copy = std::fs::metadata(run.join("stdout.log.1")).unwrap();
        assert_eq!((copy.uid(), copy.gid()), (65534, 65534));
        assert_eq!(copy.mode() & 0o777, 0o604);
    }
}
