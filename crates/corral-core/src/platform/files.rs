//! corral's own files (the state dir, its database, lock and log) and the
//! users agents run as.
//!
//! Everything is private: directories 0700, files 0600, never reached through
//! a symlink at their own name, never blocking on a FIFO. What lies below an
//! agent dir is `agent_dir.rs`'s.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
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
    /// Login shell.
    pub shell: PathBuf,
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
    let (name, home, shell, uid, gid) = unsafe {
        let p = pwd.assume_init_ref();
        (
            std::ffi::CStr::from_ptr(p.pw_name).to_owned(),
            std::ffi::CStr::from_ptr(p.pw_dir).to_owned(),
            if p.pw_shell.is_null() {
                std::ffi::CString::default()
            } else {
                std::ffi::CStr::from_ptr(p.pw_shell).to_owned()
            },
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
        shell: PathBuf::from(std::ffi::OsStr::from_bytes(shell.as_bytes())),
        credentials: Credentials { uid, gid, groups },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
