//! Everything below an agent dir: created, opened, read and removed without
//! following a symlink, so an agent cannot redirect the daemon's file work.
//!
//! The daemon often runs as root; an agent that runs as another user owns its
//! agent dir and may rename, replace or fill it while the daemon is not
//! looking. So:
//!
//! - an agent dir is stored as its real path (resolved once, when the agent is
//!   spawned, by [`real_path`]); from then on every path below and including
//!   it is opened with `openat2(RESOLVE_NO_SYMLINKS)`: a symlink that appears
//!   anywhere on it later (the agent dir itself renamed away and replaced by a
//!   link to another agent's dir, `runs` pointed at `/etc`) is an error, never
//!   a redirect;
//! - what is missing is created one directory at a time relative to an open
//!   parent (`mkdirat`, then `openat(O_NOFOLLOW)`);
//! - a run's files are created exclusively (`O_CREAT|O_EXCL`): an existing file
//!   is never truncated nor given to another owner. Only what corral created
//!   itself is handed (`fchown`) to the agent's user;
//! - files of an earlier incarnation of the id (removed, then spawned again,
//!   so run numbers start over) are set aside under a new name, never reused;
//! - removal walks directories by descriptor and unlinks entries without
//!   following any link.
//!
//! Log files are opened `O_NONBLOCK` (a FIFO planted at a log path fails at
//! once instead of hanging the daemon) and must be regular files.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::Credentials;
use super::files::{FilesError, RunFiles};

/// No symlink, and no `/proc` magic link, anywhere on a path.
const NO_LINKS: ResolveFlags = ResolveFlags::NO_SYMLINKS.union(ResolveFlags::NO_MAGICLINKS);
/// How deep [`remove_tree`] descends before it gives up (an agent could build
/// a tree deep enough to exhaust the daemon's stack).
const MAX_DEPTH: usize = 128;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Refuses a path corral would not reach safely: relative, or with a `.` or
/// `..` part (`a/../../out` must not pass a prefix check and land elsewhere).
pub fn check_plain(path: &Path) -> io::Result<()> {
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(format!(
            "{} has a `..` or `.` part; give the path without it",
            path.display()
        )));
    }
    Ok(())
}

/// The real path of `path` (absolute, no `.` or `..`), as realpath(3) gives
/// it — symlinks followed, a missing tail kept as given — except that a
/// symlink owned by anyone but root or this process's user is refused: that
/// is a link another user planted (an agent dir in `/tmp` swapped for a link
/// to `/root/...`), and corral must not create or re-own files through it.
pub fn real_path(path: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    check_plain(path)?;
    let me = rustix::process::geteuid().as_raw();
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let mut out = PathBuf::from("/");
    let mut missing = false;
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        if name == "." {
            continue;
        }
        if name == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&name);
        if missing {
            out = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                out = next;
            }
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                if m.uid() != 0 && m.uid() != me {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{} is a symlink of uid {}; corral follows only links of root or its own user",
                            next.display(),
                            m.uid()
                        ),
                    ));
                }
                hops += 1;
                if hops > 40 {
                    return Err(invalid(format!(
                        "{}: too many levels of symlinks",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        std::path::Component::Normal(n) => todo.push(n.to_owned()),
                        std::path::Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => out = next,
        }
    }
    Ok(out)
}

/// Explains the errors of a no-symlink open.
fn explain(path: &Path) -> impl Fn(Errno) -> io::Error + '_ {
    move |e| match e {
        Errno::LOOP | Errno::XDEV => invalid(format!(
            "{}: a part of it is a symlink; corral does not follow symlinks to or below an agent dir",
            path.display()
        )),
        Errno::NOTDIR => invalid(format!(
            "{}: a part of it is not a directory",
            path.display()
        )),
        Errno::NXIO => invalid(format!(
            "{} is a FIFO or socket, not a regular file",
            path.display()
        )),
        other => other.into(),
    }
}

/// Opens `path` (absolute, no `..`) with no symlink anywhere on it.
fn open_no_links(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    check_plain(path)?;
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        NO_LINKS,
    )
    .map_err(explain(path))
}

/// Opens directory `name` of `parent`, refusing a symlink.
fn open_dir_at(parent: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => invalid(format!(
            "{} is a symlink or not a directory; corral does not follow it",
            name.to_string_lossy()
        )),
        other => other.into(),
    })
}

fn chown(fd: &impl AsFd, c: &Credentials) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(c.uid)),
        Some(rustix::fs::Gid::from_raw(c.gid)),
    )
    .map_err(Into::into)
}

/// Creates directory `name` below `parent` (0700, given to `owner`) or opens
/// the one there, never through a symlink. Only a directory made here is
/// given to `owner`.
fn subdir(parent: &OwnedFd, name: &OsStr, owner: Option<&Credentials>) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            let fd = open_dir_at(parent, name)?;
            if let Some(c) = owner {
                chown(&fd, c)?;
            }
            Ok(fd)
        }
        Err(Errno::EXIST) => open_dir_at(parent, name),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory at `dir`, creating what is missing of it one level at
/// a time from an open parent (0700). Only the last level, and only if it is
/// made here, is given to `owner`: parents corral makes stay its own.
fn open_or_create(dir: &Path, owner: Option<&Credentials>) -> io::Result<OwnedFd> {
    match open_no_links(dir, OFlags::RDONLY | OFlags::DIRECTORY) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(invalid(format!("{} cannot be created", dir.display())));
    };
    let parent = open_or_create(parent, None)?;
    subdir(&parent, name, owner)
}

/// Creates a run's log file in `dir`: exclusively (an existing file is never
/// truncated or re-owned), 0600, never blocking, given to `owner`.
fn new_log_file(dir: &OwnedFd, name: &str, owner: Option<&Credentials>) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| match e {
        Errno::EXIST => invalid(format!(
            "{name} already exists; corral creates a run's files afresh and never reuses one"
        )),
        other => other.into(),
    })?;
    if let Some(c) = owner {
        chown(&fd, c)?;
    }
    // The agent inherits this open file: give it ordinary blocking writes.
    rustix::fs::fcntl_setfl(&fd, OFlags::APPEND)?;
    Ok(File::from(fd))
}

/// Makes `runs/<run>` afresh below `runs`. Files an earlier incarnation of the
/// id left under that number (the id was removed and spawned again) are set
/// aside as `<run>.old-<nanoseconds>`, whatever they are: renamed, not
/// followed, not deleted.
fn fresh_run_dir(runs: &OwnedFd, run: u32, owner: Option<&Credentials>) -> io::Result<OwnedFd> {
    let name = run.to_string();
    match rustix::fs::mkdirat(runs, &name, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(Errno::EXIST) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let aside = format!("{name}.old-{nanos}");
            rustix::fs::renameat_with(
                runs,
                &name,
                runs,
                &aside,
                rustix::fs::RenameFlags::NOREPLACE,
            )?;
            tracing::info!(run, aside = %aside, "set aside the files of an earlier run with this number");
            rustix::fs::mkdirat(runs, &name, Mode::from_raw_mode(0o700))?;
        }
        Err(e) => return Err(e.into()),
    }
    let fd = open_dir_at(runs, OsStr::new(&name))?;
    if let Some(c) = owner {
        chown(&fd, c)?;
    }
    Ok(fd)
}

fn at(path: PathBuf) -> impl FnOnce(io::Error) -> FilesError {
    move |source| FilesError { path, source }
}

/// Creates `<agent_dir>/runs/<run>/{stdout,stderr}.log` for a new run.
/// `agent_dir` is a real path (see [`real_path`]); it is created (0700, given
/// to `owner`) when missing. Nothing on the way is followed if it is a link.
pub fn create_run_files(
    agent_dir: &Path,
    run: u32,
    owner: Option<&Credentials>,
) -> Result<RunFiles, FilesError> {
    let top = open_or_create(agent_dir, owner).map_err(at(agent_dir.to_owned()))?;
    let runs_path = agent_dir.join("runs");
    let runs = subdir(&top, OsStr::new("runs"), owner).map_err(at(runs_path.clone()))?;
    let dir = runs_path.join(run.to_string());
    let run_fd = fresh_run_dir(&runs, run, owner).map_err(at(dir.clone()))?;
    let stdout = new_log_file(&run_fd, "stdout.log", owner).map_err(at(dir.join("stdout.log")))?;
    let stderr = new_log_file(&run_fd, "stderr.log", owner).map_err(at(dir.join("stderr.log")))?;
    Ok(RunFiles { stdout, stderr })
}

/// Opens a run's log dir, `log_dir`, which lies below `agent_dir`, with no
/// symlink anywhere on its path.
pub fn open_run_dir(agent_dir: &Path, log_dir: &Path) -> io::Result<OwnedFd> {
    check_plain(log_dir)?;
    if !log_dir.starts_with(agent_dir) || log_dir == agent_dir {
        return Err(invalid(format!(
            "{} is not below {}",
            log_dir.display(),
            agent_dir.display()
        )));
    }
    open_no_links(log_dir, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Opens an agent's file (a log) for reading: no symlink anywhere on its path,
/// never blocking on a FIFO, and only a regular file.
pub fn open_for_reading(path: &Path) -> io::Result<File> {
    let fd = open_no_links(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(invalid(format!(
            "{} is not a regular file; corral reads only regular files",
            path.display()
        )));
    }
    // A hard link to a file elsewhere (a log replaced by a link to
    // /etc/shadow where `fs.protected_hardlinks` is off): corral's own files
    // have one name.
    if stat.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has {} links (a hard link to another file?); corral reads only files it made",
                path.display(),
                stat.st_nlink
            ),
        ));
    }
    Ok(File::from(fd))
}

/// Writes a new private (0600) file at `path` below an agent dir: created
/// exclusively, with no symlink on its path.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    check_plain(path)?;
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
        NO_LINKS,
    )
    .map_err(explain(path))?;
    File::from(fd).write_all(bytes)
}

/// Removes `path` and everything below it, by descriptor, following no link:
/// a symlink anywhere on `path`'s parents is an error, and a symlink met
/// inside is removed as itself. A missing `path` is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid(format!("{} cannot be removed", path.display())));
    };
    let parent = match open_no_links(parent, OFlags::RDONLY | OFlags::DIRECTORY) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    remove_at(&parent, name, 0)
}

fn remove_at(parent: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::NOTDIR) => {
            return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Err(Errno::NOTEMPTY | Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    if depth >= MAX_DEPTH {
        return Err(invalid(format!(
            "more than {MAX_DEPTH} directories deep; corral leaves it"
        )));
    }
    let dir = open_dir_at(parent, name)?;
    let entries = rustix::fs::Dir::read_from(&dir)?;
    for entry in entries {
        let entry = entry?;
        let child = OsStr::from_bytes(entry.file_name().to_bytes());
        if child == "." || child == ".." {
            continue;
        }
        remove_at(&dir, child, depth + 1)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::fs::PermissionsExt;

    fn real_tmp() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(tmp.path()).unwrap();
        (tmp, real)
    }

    #[test]
    fn run_files_are_private_and_created_afresh() {
        let (_tmp, root) = real_tmp();
        let agent_dir = root.join("deep/a");
        let _files = create_run_files(&agent_dir, 1, None).unwrap();
        let run_dir = agent_dir.join("runs/1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("deep")), 0o700);
        assert_eq!(mode(&agent_dir), 0o700);
        assert_eq!(mode(&run_dir), 0o700);
        assert_eq!(mode(&run_dir.join("stdout.log")), 0o600);

        // Run 1 again (the id was removed and spawned anew): the old files are
        // set aside, not truncated.
        std::fs::write(run_dir.join("stdout.log"), "old run").unwrap();
        let _files = create_run_files(&agent_dir, 1, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(run_dir.join("stdout.log")).unwrap(),
            ""
        );
        let aside: Vec<_> = std::fs::read_dir(agent_dir.join("runs"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("1.old-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read_to_string(aside[0].path().join("stdout.log")).unwrap(),
            "old run"
        );
    }

    #[test]
    fn no_symlink_on_the_way_is_followed() {
        let (_tmp, root) = real_tmp();
        let victim = root.join("victim");
        std::fs::create_dir_all(victim.join("runs/2")).unwrap();
        std::fs::write(victim.join("runs/2/stdout.log"), "keep").unwrap();

        // The agent dir itself swapped for a link to another agent's dir.
        let agent_dir = root.join("a");
        std::os::unix::fs::symlink(&victim, &agent_dir).unwrap();
        let err = create_run_files(&agent_dir, 2, None).unwrap_err();
        assert!(err.source.to_string().contains("symlink"), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(victim.join("runs/2/stdout.log")).unwrap(),
            "keep"
        );
        assert!(open_run_dir(&agent_dir, &agent_dir.join("runs/2")).is_err());
        assert!(open_for_reading(&agent_dir.join("runs/2/stdout.log")).is_err());

        // `runs` pointed elsewhere: nothing is created there.
        let b = root.join("b");
        std::fs::create_dir(&b).unwrap();
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, b.join("runs")).unwrap();
        assert!(create_run_files(&b, 1, None).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

        // A link planted at a log path is set aside with its run dir; the
        // target is untouched.
        let c = root.join("c");
        std::fs::create_dir_all(c.join("runs/3")).unwrap();
        std::os::unix::fs::symlink(
            victim.join("runs/2/stdout.log"),
            c.join("runs/3/stdout.log"),
        )
        .unwrap();
        let _files = create_run_files(&c, 3, None).unwrap();
        assert!(!c.join("runs/3/stdout.log").is_symlink());
        assert_eq!(
            std::fs::read_to_string(victim.join("runs/2/stdout.log")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn fifos_fail_at_once_and_paths_with_dots_are_refused() {
        let (_tmp, root) = real_tmp();
        let fifo = root.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = open_for_reading(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        for bad in ["/a/../b", "/a/b/..", "a/b"] {
            assert!(check_plain(Path::new(bad)).is_err(), "{bad}");
            assert!(real_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hard_link_to_another_file_is_not_read() {
        let (_tmp, root) = real_tmp();
        let secret = root.join("secret");
        std::fs::write(&secret, "root's").unwrap();
        let log = root.join("stdout.log");
        std::fs::hard_link(&secret, &log).unwrap();
        let err = open_for_reading(&log).unwrap_err();
        assert!(err.to_string().contains("2 links"), "{err}");
        std::fs::remove_file(&secret).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_for_reading(&log).unwrap(), &mut text).unwrap();
        assert_eq!(text, "root's", "one name left: an ordinary file");
    }

    #[test]
    fn a_symlink_another_user_planted_is_not_followed() {
        // SAFETY: a plain syscall.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root: it chowns a symlink"
        );
        let (_tmp, root) = real_tmp();
        std::fs::create_dir(root.join("target")).unwrap();
        std::os::unix::fs::symlink(root.join("target"), root.join("planted")).unwrap();
        std::os::unix::fs::lchown(root.join("planted"), Some(65534), Some(65534)).unwrap();
        let err = real_path(&root.join("planted/runs/1")).unwrap_err();
        assert!(err.to_string().contains("symlink of uid 65534"), "{err}");
        // A relative link of root's, through `..`, is followed.
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("../target", root.join("sub/rel")).unwrap();
        assert_eq!(
            real_path(&root.join("sub/rel/x")).unwrap(),
            root.join("target/x")
        );
    }

    #[test]
    fn real_paths_resolve_what_exists() {
        let (_tmp, root) = real_tmp();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        assert_eq!(
            real_path(&root.join("link/new/deeper")).unwrap(),
            root.join("real/new/deeper")
        );
    }

    #[test]
    fn removal_follows_no_link() {
        let (_tmp, root) = real_tmp();
        let outside = root.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "x").unwrap();
        let dir = root.join("agent");
        std::fs::create_dir_all(dir.join("runs/1/deep")).unwrap();
        std::fs::write(dir.join("runs/1/deep/f"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("runs/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious"), dir.join("file-link")).unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "x"
        );

        // A link among the parents: refused, the target kept.
        let via = root.join("via");
        std::os::unix::fs::symlink(&outside, &via).unwrap();
        assert!(remove_tree(&via.join("precious")).is_err());
        assert!(outside.join("precious").exists());
        remove_tree(&root.join("missing")).unwrap();
    }
}
