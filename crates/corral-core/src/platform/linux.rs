//! Linux: starting agents (clone3, posix_spawn), pidfds, and `/proc/<pid>/stat`.
//!
//! Why not `std::process::Command`: each agent must lead its own session (so a
//! terminal's SIGINT/SIGHUP never reaches it and its whole group can be
//! signalled), with signal mask and dispositions reset, possibly born in a
//! cgroup, as another user, with its own `RLIMIT_NOFILE`. `Command` can only do
//! most of that through a `pre_exec` closure, which forces fork+exec; fork's
//! cost grows with the daemon's size (≈14 ms at 1 GiB RSS against ≈0.6 ms for a
//! vfork-style spawn on this kind of machine). [`spawn`] does what glibc's
//! posix_spawn does — a `clone3` child sharing the daemon's memory until it
//! execs (`CLONE_VM | CLONE_VFORK`) — with those extra steps, and falls back
//! to glibc's posix_spawn where `clone3` is refused (old kernels, seccomp).
//! Exec and `chdir` failures come back synchronously with the OS reason.
//!
//! Identity: a process is (pid, start time in clock ticks since boot, boot id).
//! A pidfd is held for every live agent — its only descriptor — and exits are
//! noticed by pidfd readiness. The exit status is read without reaping
//! (`waitid(P_PIDFD, WNOWAIT)`) so the process stays a zombie, its pid reserved,
//! until its end is committed; then it is reaped through the same pidfd. corral
//! never calls `waitpid(-1)` and never takes an exit status that belongs to
//! someone else.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use procfs_core::FromRead;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

/// How an ended process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It called `exit` with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// The three standard streams of a new agent.
pub struct Stdio<'a> {
    /// fd 0.
    pub stdin: BorrowedFd<'a>,
    /// fd 1.
    pub stdout: BorrowedFd<'a>,
    /// fd 2.
    pub stderr: BorrowedFd<'a>,
}

/// Who a new agent runs as, when not the daemon's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Everything [`spawn`] needs, prepared before the clone (the child may only
/// make system calls on data that already exists).
pub struct SpawnSpec<'a> {
    /// Resolved path of the program.
    pub program: &'a CStr,
    /// argv.
    pub argv: &'a [CString],
    /// The whole environment, `K=V`.
    pub envp: &'a [CString],
    /// Working directory.
    pub cwd: &'a CStr,
    /// fds 0, 1, 2.
    pub stdio: Stdio<'a>,
    /// A cgroup directory to be born in (`CLONE_INTO_CGROUP`).
    pub cgroup: Option<BorrowedFd<'a>>,
    /// Switch to this user before exec.
    pub credentials: Option<&'a Credentials>,
    /// `RLIMIT_NOFILE` (soft and hard) to set before exec.
    pub nofile: Option<u64>,
}

/// Starts an agent: the leader of a new session, with `argv`, exactly `envp`,
/// working directory `cwd` and the given standard streams; every other
/// descriptor closed, the signal mask empty and every disposition at its
/// default (the daemon ignores SIGPIPE; agents must not inherit that); born in
/// `cgroup`, with `nofile`, as `credentials`, when given.
///
/// Returns once the child has called `execve` successfully; a failed `chdir` or
/// `execve` comes back as the error, with no process left behind. An error of
/// kind [`io::ErrorKind::Unsupported`] means clone3 (or clone3 into a cgroup)
/// is refused here: the caller may retry without a cgroup.
pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<Pid> {
    match spawn_clone3(spec) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            if spec.cgroup.is_some() {
                return Err(e);
            }
            if spec.credentials.is_some() || spec.nofile.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("cannot set the agent's user or open-file limit here: {e}"),
                ));
            }
            posix_spawn(spec)
        }
        other => other,
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Owns glibc's spawn attribute and file-action objects for one call.
struct SpawnConfig {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl SpawnConfig {
    fn new() -> io::Result<Box<Self>> {
        // SAFETY: both objects are plain C structs that the *_init calls fill in;
        // they live in a Box so their addresses stay fixed until Drop destroys them.
        unsafe {
            let mut cfg = Box::new(MaybeUninit::<Self>::zeroed().assume_init());
            check(libc::posix_spawnattr_init(&mut cfg.attr))?;
            if let Err(e) = check(libc::posix_spawn_file_actions_init(&mut cfg.actions)) {
                libc::posix_spawnattr_destroy(&mut cfg.attr);
                return Err(e);
            }
            Ok(cfg)
        }
    }
}

impl Drop for SpawnConfig {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once here.
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attr);
        }
    }
}

fn c_ptrs(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// dup2(fd, fd) would leave FD_CLOEXEC set; lift every stream fd above 2 first.
fn lift(stdio: &Stdio<'_>) -> io::Result<Vec<OwnedFd>> {
    [stdio.stdin, stdio.stdout, stdio.stderr]
        .into_iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(io::Error::from))
        .collect()
}

/// glibc's posix_spawn (`POSIX_SPAWN_SETSID`, `addchdir_np`,
/// `addclosefrom_np`): the fallback where clone3 is refused.
fn posix_spawn(spec: &SpawnSpec<'_>) -> io::Result<Pid> {
    let lifted = lift(&spec.stdio)?;
    let mut cfg = SpawnConfig::new()?;
    let argv_ptrs = c_ptrs(spec.argv);
    let envp_ptrs = c_ptrs(spec.envp);
    let mut pid: libc::pid_t = 0;
    // SAFETY: cfg's objects are initialised; every pointer handed to glibc points
    // into `spec` or `lifted`, all of which outlive the call.
    unsafe {
        let flags = libc::POSIX_SPAWN_SETSID
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        check(libc::posix_spawnattr_setflags(&mut cfg.attr, flags))?;
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        check(libc::posix_spawnattr_setsigmask(&mut cfg.attr, &set))?;
        libc::sigfillset(&mut set);
        check(libc::posix_spawnattr_setsigdefault(&mut cfg.attr, &set))?;
        for (target, fd) in lifted.iter().enumerate() {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut cfg.actions,
                fd.as_raw_fd(),
                target as libc::c_int,
            ))?;
        }
        check(libc::posix_spawn_file_actions_addchdir_np(
            &mut cfg.actions,
            spec.cwd.as_ptr(),
        ))?;
        check(libc::posix_spawn_file_actions_addclosefrom_np(
            &mut cfg.actions,
            3,
        ))?;
        check(libc::posix_spawn(
            &mut pid,
            spec.program.as_ptr(),
            &cfg.actions,
            &cfg.attr,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        ))?;
    }
    Pid::from_raw(pid).ok_or_else(|| io::Error::other("posix_spawn returned pid 0"))
}

/// `struct clone_args` of `linux/sched.h` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the child reports through the error pipe when it cannot exec.
const STEP_CHDIR: u32 = 1;
const STEP_EXEC: u32 = 2;
const STEP_SETUP: u32 = 3;
const STEP_USER: u32 = 4;
const STEP_RLIMIT: u32 = 5;

/// What the child needs, prepared before the clone.
#[repr(C)]
struct ChildCtx {
    program: *const libc::c_char,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
    cwd: *const libc::c_char,
    fds: [libc::c_int; 3],
    report: libc::c_int,
    /// uid, gid (u32::MAX: keep the daemon's).
    uid: u32,
    gid: u32,
    groups: *const libc::gid_t,
    ngroups: usize,
    /// 0: keep the daemon's.
    nofile: u64,
}

/// The clone3 spawn: glibc 2.36 has no posix_spawn attribute for a cgroup or a
/// user, so this does what its posix_spawn does, by hand — `clone3` with
/// `CLONE_VFORK` (the parent waits until the child has called `execve`), then
/// in the child only system calls on prepared data. A failed step comes back
/// through a close-on-exec pipe as the error, and the child is reaped.
fn spawn_clone3(spec: &SpawnSpec<'_>) -> io::Result<Pid> {
    let lifted = lift(&spec.stdio)?;
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let argv_ptrs = c_ptrs(spec.argv);
    let envp_ptrs = c_ptrs(spec.envp);
    let groups: &[u32] = spec.credentials.map_or(&[], |c| c.groups.as_slice());
    let ctx = ChildCtx {
        program: spec.program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: spec.cwd.as_ptr(),
        fds: [
            lifted[0].as_raw_fd(),
            lifted[1].as_raw_fd(),
            lifted[2].as_raw_fd(),
        ],
        report: err_write.as_raw_fd(),
        uid: spec.credentials.map_or(u32::MAX, |c| c.uid),
        gid: spec.credentials.map_or(u32::MAX, |c| c.gid),
        groups: groups.as_ptr(),
        ngroups: groups.len(),
        nofile: spec.nofile.unwrap_or(0),
    };
    let ret = clone3_exec(spec.cgroup, &ctx);
    if ret < 0 {
        let err = io::Error::last_os_error();
        // No clone3, or not into a cgroup, here (old kernel, a seccomp filter):
        // say so distinctly, so the caller can fall back.
        return Err(match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM | libc::EINVAL) => io::Error::new(
                io::ErrorKind::Unsupported,
                format!("clone3 is not available: {err}"),
            ),
            _ => err,
        });
    }
    let pid = Pid::from_raw(ret as i32).ok_or_else(|| io::Error::other("clone3 returned pid 0"))?;
    drop(err_write);
    // CLONE_VFORK: the child has exec'd (pipe closed, EOF) or reported and exited.
    let mut msg = [0u8; 8];
    let n = rustix::io::read(&err_read, &mut msg).unwrap_or(0);
    if n == 8 {
        let step = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        let err = io::Error::from_raw_os_error(errno);
        return Err(match step {
            STEP_CHDIR => io::Error::new(
                err.kind(),
                format!("working directory {}: {err}", spec.cwd.to_string_lossy()),
            ),
            STEP_SETUP => io::Error::new(err.kind(), format!("setting up the new process: {err}")),
            STEP_USER => {
                io::Error::new(err.kind(), format!("switching to the agent's user: {err}"))
            }
            STEP_RLIMIT => io::Error::new(err.kind(), format!("setting RLIMIT_NOFILE: {err}")),
            _ => err,
        });
    }
    Ok(pid)
}

/// clone3, the child running [`child_exec`]; returns clone3's result.
///
/// On x86_64 the child shares the parent's memory (`CLONE_VM | CLONE_VFORK`, as
/// glibc's posix_spawn does) and runs on a stack of its own, so nothing of the
/// daemon is copied: no page tables, no copy-on-write faults afterwards. The
/// parent's signals are blocked around the clone so no handler of the daemon
/// can run in the child before it resets them. Elsewhere the child gets a copy
/// of the memory (fork semantics), which is correct but costs more.
fn clone3_exec(cgroup_dir: Option<BorrowedFd<'_>>, ctx: &ChildCtx) -> libc::c_long {
    let mut args = CloneArgs {
        flags: libc::CLONE_VFORK as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(dir) = cgroup_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    #[cfg(target_arch = "x86_64")]
    {
        const STACK: usize = 128 * 1024;
        let mut stack = vec![0u128; STACK / 16];
        args.flags |= libc::CLONE_VM as u64;
        args.stack = stack.as_mut_ptr() as u64;
        args.stack_size = STACK as u64;
        // SAFETY: all-signals mask around the clone, restored after; the child runs
        // child_entry on `stack`, which outlives it (the parent is suspended until
        // the child has exec'd or exited: CLONE_VFORK).
        unsafe {
            let mut all = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
            let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let ret: libc::c_long;
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                // The child, on its own stack: never returns.
                "xor ebp, ebp",
                "mov rdi, r12",
                "call {entry}",
                "ud2",
                "2:",
                entry = sym child_entry,
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &mut args as *mut CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") ctx as *const ChildCtx,
                lateout("rcx") _,
                lateout("r11") _,
            );
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            drop(stack);
            if ret < 0 {
                *libc::__errno_location() = -ret as libc::c_int;
                return -1;
            }
            ret
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: without CLONE_VM the child has its own copy of memory and runs
        // child_entry on it; it never returns.
        unsafe {
            let ret = libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            );
            if ret == 0 {
                child_entry(ctx as *const ChildCtx);
            }
            ret
        }
    }
}

extern "C" fn child_entry(ctx: *const ChildCtx) -> ! {
    // SAFETY: `ctx` points at the parent's ChildCtx, alive while the parent waits.
    unsafe { child_exec(&*ctx) }
}

/// The child side of [`spawn_clone3`]: never returns.
///
/// Credentials and limits go through raw system calls: glibc's `setuid` family
/// broadcasts to every thread of the process, and this child shares the
/// daemon's memory (and so glibc's idea of its threads).
///
/// # Safety
/// Must only run in a freshly cloned child whose parent waits (CLONE_VFORK);
/// every pointer in `ctx` must be valid.
unsafe fn child_exec(ctx: &ChildCtx) -> ! {
    // SAFETY: async-signal-safe system calls only, on prepared data.
    unsafe {
        let fail = |step: u32| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&step.to_ne_bytes());
            msg[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(ctx.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        };
        // Default dispositions first, while every signal is still blocked.
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            fail(STEP_SETUP);
        }
        if libc::setsid() < 0 {
            fail(STEP_SETUP);
        }
        for (target, fd) in ctx.fds.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(STEP_SETUP);
            }
        }
        if ctx.nofile > 0 {
            let lim = libc::rlimit64 {
                rlim_cur: ctx.nofile,
                rlim_max: ctx.nofile,
            };
            let rc = libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE,
                &lim as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>(),
            );
            if rc != 0 {
                fail(STEP_RLIMIT);
            }
        }
        if ctx.uid != u32::MAX
            && (libc::syscall(libc::SYS_setgroups, ctx.ngroups, ctx.groups) != 0
                || libc::syscall(libc::SYS_setresgid, ctx.gid, ctx.gid, ctx.gid) != 0
                || libc::syscall(libc::SYS_setresuid, ctx.uid, ctx.uid, ctx.uid) != 0)
        {
            fail(STEP_USER);
        }
        // After the switch: the agent's own permissions decide whether it may enter cwd.
        if libc::chdir(ctx.cwd) != 0 {
            fail(STEP_CHDIR);
        }
        // Only 0-2 reach the program; the report pipe closes on exec, telling the parent.
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            fail(STEP_SETUP);
        }
        libc::execve(ctx.program, ctx.argv.cast(), ctx.envp.cast());
        fail(STEP_EXEC)
    }
}

/// Finds the file `program` names, the way `execvp` would but against the
/// agent's own `PATH` (not the daemon's). A name with a `/` is used as it is.
pub fn resolve_program(program: &str, path_var: Option<&str>) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let mut denied = false;
    for dir in path_var
        .unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
    {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() => {
                if rustix::fs::access(&candidate, rustix::fs::Access::EXEC_OK).is_ok() {
                    return Ok(candidate);
                }
                denied = true;
            }
            _ => {}
        }
    }
    Err(if denied {
        io::Error::from_raw_os_error(libc::EACCES)
    } else {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{program}: not found in PATH (No such file or directory)"),
        )
    })
}

/// A string as a C string, refusing interior NULs with a clear error.
pub fn c_string(what: &str, value: &[u8]) -> io::Result<CString> {
    CString::new(value).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// A path as a C string.
pub fn c_path(path: &Path) -> io::Result<CString> {
    c_string("path", path.as_os_str().as_bytes())
}

/// A process corral watches: its pidfd and identity. The pidfd is the only
/// descriptor it holds: `/proc/<pid>/stat` is opened per read and checked
/// against the start time, so a live agent costs one fd and an ended one none.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: Pid,
    start_ticks: u64,
    pidfd: OwnedFd,
}

impl ProcessHandle {
    /// Opens a pidfd for `pid`. With `expect_start`, the process must have that
    /// start time (checked after the pidfd is open, so a match proves the pidfd
    /// refers to the same process): a PID reused by a stranger yields `Ok(None)`.
    pub fn open(pid: Pid, expect_start: Option<u64>) -> io::Result<Option<Self>> {
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let sample = match read_stat_of(pid.as_raw_nonzero().get()) {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if expect_start.is_some_and(|t| t != sample.start_ticks) {
            return Ok(None);
        }
        Ok(Some(Self {
            pid,
            start_ticks: sample.start_ticks,
            pidfd,
        }))
    }

    /// Opens a member of an agent's tree by its identity. `Ok(None)` when that
    /// process is gone or the pid now belongs to someone else.
    pub fn open_member(pid: i32, start_ticks: u64) -> io::Result<Option<Self>> {
        match Pid::from_raw(pid) {
            Some(pid) => Self::open(pid, Some(start_ticks)),
            None => Ok(None),
        }
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Reads `/proc/<pid>/stat`; an error once the process is reaped or the pid
    /// belongs to another process.
    pub fn sample(&self) -> io::Result<StatSample> {
        let s = read_stat_of(self.pid())?;
        if s.start_ticks != self.start_ticks {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(s)
    }

    /// True once the process has exited (zombie or reaped): the pidfd is readable.
    pub fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// How the process ended, without reaping it: it stays a zombie (its pid
    /// reserved) until [`Self::reap`]. `Ok(None)` while it runs; an `ECHILD`
    /// error when it is not our child (re-adopted after a daemon restart).
    pub fn peek_exit(&self) -> io::Result<Option<ExitKind>> {
        let status = rustix::process::waitid(
            WaitId::PidFd(self.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        )?;
        Ok(status.and_then(exit_kind))
    }

    /// Reaps the process (our child) once it has exited. Only this process is
    /// waited for, through its pidfd: never `waitpid(-1)`.
    pub fn reap(&self) -> io::Result<Option<ExitKind>> {
        let status = rustix::process::waitid(
            WaitId::PidFd(self.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        )?;
        Ok(status.and_then(exit_kind))
    }

    /// How a zombie that is not our child ended: the kernel keeps its wait
    /// status in field 52 of `/proc/<pid>/stat`, readable by anyone until its
    /// parent reaps it. `None` when it is not (or no longer) that zombie.
    pub fn zombie_exit(&self) -> Option<ExitKind> {
        let s = read_stat_of(self.pid()).ok()?;
        if s.start_ticks != self.start_ticks || s.state != 'Z' {
            return None;
        }
        s.exit_status.map(decode_wait_status)
    }

    /// Sends `sig` to the process itself, through its pidfd (cannot hit a reused pid).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        rustix::process::pidfd_send_signal(&self.pidfd, sig).map_err(Into::into)
    }

    /// Sends `sig` to the process's whole group. Safe against PID reuse while the
    /// leader is not yet reaped: its pid, and so the group id, cannot be recycled
    /// before corral itself reaps it. Falls back to the leader alone once it has exited.
    pub fn signal_group(&self, sig: Signal) -> io::Result<()> {
        if self.has_exited() {
            return self.signal(sig);
        }
        match rustix::process::kill_process_group(self.pid, sig) {
            Err(rustix::io::Errno::SRCH) => Ok(()),
            other => other.map_err(Into::into),
        }
    }
}

fn exit_kind(s: rustix::process::WaitIdStatus) -> Option<ExitKind> {
    s.exit_status()
        .map(ExitKind::Code)
        .or_else(|| s.terminating_signal().map(ExitKind::Signal))
}

/// A wait(2) status: low 7 bits = terminating signal, else the exit code above them.
fn decode_wait_status(status: i32) -> ExitKind {
    if status & 0x7f == 0 {
        ExitKind::Code((status >> 8) & 0xff)
    } else {
        ExitKind::Signal(status & 0x7f)
    }
}

impl AsRawFd for ProcessHandle {
    /// The pidfd: readable once the process has exited.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.pidfd.as_raw_fd()
    }
}

/// `struct pidfd_info` of `linux/pidfd.h` (the 64-byte first version).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)` with the 64-byte struct.
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;

impl ProcessHandle {
    /// How the process ended, as the kernel keeps it for any pidfd holder
    /// (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`, Linux ≥ 6.15) — also when another
    /// process was its parent. `Ok(None)` while the kernel has no exit status to
    /// give (not yet reaped by its parent); an error on kernels without it.
    pub fn exit_status_from_kernel(&self) -> io::Result<Option<ExitKind>> {
        const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_EXIT,
            ..PidfdInfo::default()
        };
        // SAFETY: PIDFD_GET_INFO writes at most 64 bytes into `info`, which is 64 bytes.
        let rc = unsafe { libc::ioctl(self.pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // ESRCH: the process is gone and the kernel kept nothing for this pidfd.
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(err),
            };
        }
        if info.mask & PIDFD_INFO_EXIT == 0 {
            return Ok(None);
        }
        Ok(Some(decode_wait_status(info.exit_code)))
    }
}

/// What one read of `/proc/<pid>/stat` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatSample {
    /// State letter (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
    /// Thread count.
    pub num_threads: u32,
    /// Start time, clock ticks after boot.
    pub start_ticks: u64,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Session.
    pub session: i32,
    /// A zombie's wait status (field 52), as the kernel keeps it for its parent.
    pub exit_status: Option<i32>,
}

fn read_stat_of(pid: i32) -> io::Result<StatSample> {
    let mut buf = [0u8; 1024];
    let file = File::open(format!("/proc/{pid}/stat"))?;
    let n = file.read_at(&mut buf, 0)?;
    parse_stat(&buf[..n])
}

/// Parses the text of `/proc/<pid>/stat`.
pub fn parse_stat(text: &[u8]) -> io::Result<StatSample> {
    let stat = procfs_core::process::Stat::from_read(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad /proc stat: {e}")))?;
    Ok(StatSample {
        state: stat.state,
        cpu_ticks: stat.utime.saturating_add(stat.stime),
        rss_pages: stat.rss,
        num_threads: u32::try_from(stat.num_threads).unwrap_or(0),
        start_ticks: stat.starttime,
        ppid: stat.ppid,
        pgrp: stat.pgrp,
        session: stat.session,
        exit_status: stat.exit_code,
    })
}

/// psutil's word for a `/proc` state letter.
pub fn psutil_status(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'T' => "stopped",
        't' => "tracing-stop",
        'Z' => "zombie",
        'X' | 'x' => "dead",
        'K' => "wake-kill",
        'W' => "waking",
        'I' => "idle",
        'P' => "parked",
        _ => "unknown",
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once.
pub fn boot_id() -> io::Result<String> {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned();
    Ok(BOOT_ID.get_or_init(|| id).clone())
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Bytes per page.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Seconds since boot on the clock `/proc/<pid>/stat` start times use (CLOCK_BOOTTIME).
pub fn boottime_seconds() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Raises the soft open-file limit to the hard one: corral keeps one fd (a
/// pidfd) per live agent. Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.maximum.is_some() && lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Last resort when a just-spawned child cannot be watched (no fds left): kill it
/// and reap exactly that pid. Safe only for our own unreaped child, whose pid
/// cannot have been reused.
pub fn kill_and_reap_child(pid: Pid) {
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
}

/// One row of the process table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcEntry {
    /// Process id.
    pub pid: i32,
    /// Parent.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Session.
    pub session: i32,
    /// Start time, ticks after boot (with `pid`, the process's identity).
    pub start_ticks: u64,
    /// State letter.
    pub state: char,
    /// User + system CPU time, ticks.
    pub cpu_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
    /// Threads.
    pub num_threads: u32,
}

/// Every process on the system, from `/proc/<pid>/stat` (processes that vanish
/// during the scan are skipped). Each file is opened relative to one open
/// `/proc` directory, read once and closed: no descriptor is kept.
pub fn process_table() -> Vec<ProcEntry> {
    use rustix::fs::{Mode, OFlags, openat};
    let Ok(proc_dir) = rustix::fs::open(
        "/proc",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(512);
    let mut path = String::with_capacity(32);
    let mut buf = [0u8; 1024];
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        path.clear();
        path.push_str(name.to_str().unwrap_or_default());
        path.push_str("/stat");
        let Ok(fd) = openat(
            &proc_dir,
            path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let Ok(n) = rustix::io::read(&fd, &mut buf) else {
            continue;
        };
        if let Ok(s) = parse_stat(&buf[..n]) {
            out.push(ProcEntry::of(pid, s));
        }
    }
    out
}

/// One process's row of the process table, read from its `/proc/<pid>/stat`.
pub fn process_entry(pid: i32) -> io::Result<ProcEntry> {
    read_stat_of(pid).map(|s| ProcEntry::of(pid, s))
}

impl ProcEntry {
    fn of(pid: i32, s: StatSample) -> Self {
        Self {
            pid,
            ppid: s.ppid,
            pgrp: s.pgrp,
            session: s.session,
            start_ticks: s.start_ticks,
            state: s.state,
            cpu_ticks: s.cpu_ticks,
            rss_pages: s.rss_pages,
            num_threads: s.num_threads,
        }
    }
}

/// A variable of the environment a process was started with (`/proc/<pid>/environ`).
pub fn environ_var(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The `CORRAL_AGENT_ID` a process was started with.
pub fn environ_agent_id(pid: i32) -> Option<String> {
    environ_var(pid, "CORRAL_AGENT_ID")
}

/// Makes the calling process a child subreaper: descendants orphaned by their
/// parents are reparented to it instead of to PID 1, so it can reap them.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(Into::into)
}

/// Gives SIGPIPE its default action (end the process) back: Rust ignores it
/// before `main`, which turns a closed pipe into write errors.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with a constant signal and the default action; no
    // handler runs, so nothing about it needs to be async-signal-safe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Pids of the calling process's children (the children of every one of its threads).
pub fn own_children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// Returns the allocator's free memory to the system (glibc keeps freed
/// memory of every arena until asked; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reaps child `pid` if it has exited. Waits for that pid only, never blocks.
pub fn reap_child(pid: i32) -> Option<ExitKind> {
    let pid = Pid::from_raw(pid)?;
    let status = rustix::process::waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )
    .ok()
    .flatten()?;
    status
        .exit_status()
        .map(ExitKind::Code)
        .or_else(|| status.terminating_signal().map(ExitKind::Signal))
}

/// `SO_PEERPIDFD` (asm-generic; Linux 6.5+).
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd of a Unix socket's peer process, as it was when it connected.
pub fn peer_pidfd(socket: BorrowedFd<'_>) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a live c_int.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    // SAFETY: on success the kernel handed us a new descriptor we now own.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True while the pidfd's process has not exited (signal 0 checks existence;
/// a permission refusal still means it exists).
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 sends nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The uid that owns the TCP socket at `peer` connected to `local` (both in
/// this network namespace), from `/proc/net/tcp` or `/proc/net/tcp6`: who is
/// on the other end of a loopback connection. `None` when no such socket is
/// listed (it has gone). Blocking: reads procfs.
pub fn tcp_peer_uid(
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
) -> io::Result<Option<u32>> {
    use std::net::IpAddr;
    // The kernel prints each address as the 32-bit words of its network-order
    // bytes in host order, then the port in hex.
    fn hex(addr: std::net::SocketAddr) -> String {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => v6
                .octets()
                .chunks_exact(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect(),
        };
        format!("{ip}:{:04X}", addr.port())
    }
    let file = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let (want_local, want_remote) = (hex(peer), hex(local));
    let text = std::fs::read_to_string(file)?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7 && f[1] == want_local && f[2] == want_remote {
            return Ok(f[7].parse().ok());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line = b"4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 25 5 0 0 20 0 3 0 123456 1000000 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.cpu_ticks, 30);
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.rss_pages, 2500);
        assert_eq!(s.pgrp, 4242);
    }

    #[test]
    fn maps_state_letters_to_psutil_words() {
        assert_eq!(psutil_status('R'), "running");
        assert_eq!(psutil_status('D'), "disk-sleep");
        assert_eq!(psutil_status('t'), "tracing-stop");
        assert_eq!(psutil_status('Z'), "zombie");
        assert_eq!(psutil_status('I'), "idle");
    }

    #[test]
    fn resolves_against_the_given_path_only() {
        assert!(resolve_program("sh", Some("/bin:/usr/bin")).is_ok());
        let err = resolve_program("sh", Some("/nonexistent")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(resolve_program("./x", None).unwrap(), PathBuf::from("./x"));
    }

    fn sh_exiting_on_stdin_close(code: i32) -> (std::process::Child, ProcessHandle) {
        let child = std::process::Command::new("sh")
            .args(["-c", &format!("read x; exit {code}")])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        let h = ProcessHandle::open(pid, None).unwrap().unwrap();
        (child, h)
    }

    fn wait_exited(h: &ProcessHandle) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !h.has_exited() {
            assert!(std::time::Instant::now() < end, "never exited");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn the_kernel_keeps_the_exit_status_for_a_pidfd_holder() {
        // Needs Linux >= 6.15 (PIDFD_INFO_EXIT): corral's CI kernel has it, and a
        // kernel without it must fail here rather than pass unchecked.
        let (mut child, h) = sh_exiting_on_stdin_close(42);
        drop(child.stdin.take()); // the shell exits 42
        let _ = child.wait();
        assert_eq!(
            h.exit_status_from_kernel().unwrap(),
            Some(ExitKind::Code(42))
        );
    }

    #[test]
    fn a_peeked_exit_leaves_a_zombie_whose_status_anyone_can_read() {
        let (mut child, h) = sh_exiting_on_stdin_close(7);
        drop(child.stdin.take());
        wait_exited(&h);
        assert_eq!(h.peek_exit().unwrap(), Some(ExitKind::Code(7)));
        // Still a zombie: the pid stays reserved, and field 52 holds the status.
        assert_eq!(read_stat_of(h.pid()).unwrap().state, 'Z');
        assert_eq!(h.zombie_exit(), Some(ExitKind::Code(7)));
        assert_eq!(h.reap().unwrap(), Some(ExitKind::Code(7)));
        assert!(read_stat_of(h.pid()).is_err(), "reaped");
        assert_eq!(h.zombie_exit(), None);
        let _ = child.try_wait();
    }

    #[test]
    fn own_stat_reads_and_identity_matches() {
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        let h = ProcessHandle::open(me, None).unwrap().unwrap();
        let again = ProcessHandle::open(me, Some(h.start_ticks())).unwrap();
        assert!(again.is_some());
        let stranger = ProcessHandle::open(me, Some(h.start_ticks() + 1)).unwrap();
        assert!(stranger.is_none(), "a different start time must not match");
        assert!(!h.has_exited());
        assert!(h.sample().unwrap().num_threads >= 1);
        assert!(
            process_table()
                .iter()
                .any(|p| p.pid == h.pid() && p.start_ticks == h.start_ticks())
        );
    }
}
