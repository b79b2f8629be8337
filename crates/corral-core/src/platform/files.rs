//! Files corral creates for agents, created so that nobody can redirect them.
//!
//! The daemon often runs as root and writes into directories a user named
//! (`agent_dir`). Every directory and log file corral creates below such a
//! directory is made with `mkdirat`/`openat` relative to an open parent and
//! `O_NOFOLLOW`, so a symlink planted at `runs`, `runs/<n>` or a log path is an
//! error, never a redirect to `/etc/shadow`. Log files are opened
//! `O_NONBLOCK` (a FIFO planted at a log path fails at once instead of hanging
//! the opener) and must turn out to be regular files. Everything is private:
//! directories 0700, files 0600, owned by the agent's user when it has one.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::Credentials;

/// A run's two log files, open.
#[derive(Debug)]
pub struct RunFiles {
    /// Its `stdout.log`, open for appending.
    pub stdout: File,
    /// Its `stderr.log`, open for appending.
    pub stderr: File,
}

/// Why a run's files could not be created: which path, and the OS's reason.
#[derive(Debug)]
pub struct FilesError {
    /// The path concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

fn at(path: &Path) -> impl Fn(io::Error) -> FilesError + '_ {
    move |source| FilesError {
        path: path.to_owned(),
        source,
    }
}

/// Creates (or opens) directory `name` below `parent` without following a
/// symlink at `name`: 0700, owned by `owner` when it is created.
fn subdir(parent: &OwnedFd, name: &str, owner: Option<&Credentials>) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            let fd = open_dir_at(parent, name)?;
            if let Some(c) = owner {
                chown(&fd, c)?;
            }
            Ok(fd)
        }
        Err(rustix::io::Errno::EXIST) => open_dir_at(parent, name),
        Err(e) => Err(e.into()),
    }
}

fn open_dir_at(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is a symlink or not a directory; corral does not follow it"),
        ),
        other => other.into(),
    })
}

/// Refuses anything but a regular file behind `fd`.
fn require_regular(fd: &OwnedFd) -> io::Result<rustix::fs::Stat> {
    let stat = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file (a FIFO, device or socket); corral uses only regular files",
        ));
    }
    Ok(stat)
}

fn chown(fd: &impl AsFd, c: &Credentials) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(c.uid)),
        Some(rustix::fs::Gid::from_raw(c.gid)),
    )
    .map_err(Into::into)
}

/// Opens a log file below `dir`: created 0600 (emptied if it exists), never
/// through a symlink, never blocking, and only if it is a regular file.
fn log_file(dir: &OwnedFd, name: &str, owner: Option<&Credentials>) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::TRUNC
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is a symlink; corral does not follow it"),
        ),
        rustix::io::Errno::NXIO => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is a FIFO or socket, not a regular file"),
        ),
        other => other.into(),
    })?;
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{name} is not a regular file (a FIFO, device or socket); corral writes logs only to regular files"
            ),
        ));
    }
    if let Some(c) = owner {
        chown(&fd, c)?;
    }
    // The agent inherits this open file: give it ordinary blocking writes.
    rustix::fs::fcntl_setfl(&fd, OFlags::APPEND)?;
    Ok(File::from(fd))
}

/// Creates `<agent_dir>/runs/<run>/{stdout,stderr}.log` for a new run.
///
/// `agent_dir` itself may be reached through symlinks (it is the caller's
/// choice of path) and is created 0700 when missing; below it nothing is
/// followed.
pub fn create_run_files(
    agent_dir: &Path,
    run: u32,
    owner: Option<&Credentials>,
) -> Result<RunFiles, FilesError> {
    let created = !agent_dir.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(agent_dir)
        .map_err(at(agent_dir))?;
    let top = rustix::fs::open(
        agent_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| at(agent_dir)(e.into()))?;
    if created && let Some(c) = owner {
        chown(&top, c).map_err(at(agent_dir))?;
    }
    let runs_path = agent_dir.join("runs");
    let runs = subdir(&top, "runs", owner).map_err(at(&runs_path))?;
    let dir = runs_path.join(run.to_string());
    let run_fd = subdir(&runs, &run.to_string(), owner).map_err(at(&dir))?;
    let stdout_path = dir.join("stdout.log");
    let stdout = log_file(&run_fd, "stdout.log", owner).map_err(at(&stdout_path))?;
    let stderr_path = dir.join("stderr.log");
    let stderr = log_file(&run_fd, "stderr.log", owner).map_err(at(&stderr_path))?;
    Ok(RunFiles { stdout, stderr })
}

/// Opens a run's log dir, `log_dir`, which lies below `agent_dir`: like
/// [`create_run_files`], `agent_dir` itself may be reached through symlinks;
/// every directory below it is opened without following one, so a symlink an
/// agent planted at `runs` or `runs/<n>` is an error, never a redirect.
pub fn open_run_dir(agent_dir: &Path, log_dir: &Path) -> io::Result<OwnedFd> {
    let below = log_dir.strip_prefix(agent_dir).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not below {}", log_dir.display(), agent_dir.display()),
        )
    })?;
    let mut dir = rustix::fs::open(
        agent_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for part in below.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has a `..` or `.` part", log_dir.display()),
            ));
        };
        let name = name.to_str().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a log dir name is not UTF-8")
        })?;
        dir = open_dir_at(&dir, name)?;
    }
    Ok(dir)
}

/// Makes `dir` corral's private directory, or explains why it cannot be:
/// created 0700 when missing; an existing one must be a real directory (not a
/// symlink), owned by this process's user, and not writable by group or
/// others — anyone who can write in it could swap corral's files for links.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Parents are ordinary directories (e.g. ~/.local/state): the usual modes.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            return std::fs::DirBuilder::new().mode(0o700).create(dir);
        }
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is a symlink; give the real directory",
        ));
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "it is not a directory",
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is owned by uid {}, not by this user (uid {me}); another user could replace corral's files",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is writable by group or others (mode {:o}); run `chmod 700 {}`",
                meta.mode() & 0o777,
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates an empty private file (0600) if none exists, without following a
/// symlink; makes an existing one 0600. For files another library opens by path
/// (SQLite's database, whose `-wal`/`-shm` files take the database's mode).
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is a symlink; corral does not follow it",
        ),
        other => other.into(),
    })?;
    let stat = require_regular(&fd)?;
    if stat.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
    }
    Ok(())
}

/// Opens (creating 0600) a file for appending, never through a symlink and
/// never blocking on a FIFO; it must be a regular file.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    require_regular(&fd)?;
    rustix::fs::fcntl_setfl(&fd, OFlags::APPEND)?;
    Ok(File::from(fd))
}

/// Writes `bytes` to a new or truncated private (0600) file, never through a
/// symlink; it must be a regular file.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::TRUNC
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    require_regular(&fd)?;
    File::from(fd).write_all(bytes)
}

/// Opens a file for reading, never through a symlink and never blocking on a
/// FIFO; it must be a regular file.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    require_regular(&fd)?;
    Ok(File::from(fd))
}

/// A user of this machine, by name or uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Ids to switch to.
    pub credentials: Credentials,
}

/// Looks a user up in the system's user database (`getpwnam_r`/`getpwuid_r`,
/// `getgrouplist`). May block on NSS: call from a blocking thread.
pub fn lookup_user(name_or_uid: &str) -> io::Result<Option<User>> {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::zeroed();
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = if let Ok(uid) = name_or_uid.parse::<u32>() {
        // SAFETY: every pointer refers to a live buffer of the stated size.
        unsafe {
            libc::getpwuid_r(
                uid,
                pwd.as_mut_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        }
    } else {
        let name = CString::new(name_or_uid).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the user name")
        })?;
        // SAFETY: as above; `name` is a valid C string.
        unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                pwd.as_mut_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        }
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: getpw*_r succeeded and filled `pwd`, whose strings live in `buf`.
    let (name, home, uid, gid) = unsafe {
        let p = pwd.assume_init_ref();
        (
            std::ffi::CStr::from_ptr(p.pw_name).to_owned(),
            std::ffi::CStr::from_ptr(p.pw_dir).to_owned(),
            p.pw_uid,
            p.pw_gid,
        )
    };
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            break;
        }
        if groups.len() >= 65_536 {
            groups = vec![gid];
            break;
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
    Ok(Some(User {
        name: name.to_string_lossy().into_owned(),
        home: PathBuf::from(std::ffi::OsStr::from_bytes(home.as_bytes())),
        credentials: Credentials { uid, gid, groups },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_files_refuse_symlinks_and_fifos_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let agent_dir = tmp.path().join("a");
        let _files = create_run_files(&agent_dir, 1, None).unwrap();
        let run_dir = agent_dir.join("runs/1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&agent_dir), 0o700);
        assert_eq!(mode(&run_dir), 0o700);
        assert_eq!(mode(&run_dir.join("stdout.log")), 0o600);

        // A symlink planted where a log goes is refused, and its target untouched.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::create_dir_all(agent_dir.join("runs/2")).unwrap();
        std::os::unix::fs::symlink(&victim, agent_dir.join("runs/2/stdout.log")).unwrap();
        let err = create_run_files(&agent_dir, 2, None).unwrap_err();
        assert!(err.path.ends_with("runs/2/stdout.log"), "{err:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");

        // A symlinked run dir is refused too.
        std::os::unix::fs::symlink(tmp.path(), agent_dir.join("runs/3")).unwrap();
        assert!(create_run_files(&agent_dir, 3, None).is_err());

        // A FIFO fails at once instead of blocking.
        std::fs::create_dir_all(agent_dir.join("runs/4")).unwrap();
        let fifo =
            CString::new(agent_dir.join("runs/4/stdout.log").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = create_run_files(&agent_dir, 4, None).unwrap_err();
        assert!(err.source.to_string().contains("FIFO"), "{err:?}");
    }

    #[test]
    fn a_private_dir_must_be_ours_and_closed_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_dir(&dir).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err());
    }

    #[test]
    fn users_are_found_by_name_and_uid() {
        let root = lookup_user("root").unwrap().unwrap();
        assert_eq!(root.credentials.uid, 0);
        assert_eq!(lookup_user("0").unwrap().unwrap().name, "root");
        assert!(lookup_user("no-such-user-here").unwrap().is_none());
    }
}
