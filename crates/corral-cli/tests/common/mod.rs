//! Helpers shared by the end-to-end tests: a state dir with an autostarted
//! daemon, `/proc` readers, and clean-up by pid.
//!
//! Each test makes itself a child subreaper, so the daemon the CLI starts in the
//! background (and, once the daemon is gone, its agents) are reparented to the
//! test, which stops and reaps them by pid and then asserts that nothing it
//! started is left: no process, no zombie.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Env {
    pub dir: Option<tempfile::TempDir>,
    pub state: PathBuf,
    /// Force the daemon's process-group fallback (no cgroups).
    pub no_cgroups: bool,
    /// Environment every command gets (and so the daemon a command starts).
    pub vars: Vec<(String, String)>,
}

/// The corral binary under test: this build's, or the one `CORRAL_TEST_BIN`
/// names (to run a test against an older build and see it fail).
pub fn bin() -> PathBuf {
    std::env::var_os("CORRAL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_corral")))
}

pub fn me() -> i32 {
    std::process::id() as i32
}

/// Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...].
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Our direct children (with the subreaper set, every orphan we caused).
pub fn children() -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
            && proc_stat(pid).is_some_and(|s| s[1] == me().to_string())
        {
            out.push(pid);
        }
    }
    out
}

/// Polls `f` until it returns Some, for up to `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills one of our children through a pidfd (no PID-reuse race) and reaps exactly it.
pub fn kill_and_reap(pid: i32, sig: i32) {
    // SAFETY: plain syscalls on an integer pid; the pidfd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd >= 0 {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<u8>(),
                0,
            );
            libc::close(fd);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

impl Env {
    pub fn new() -> Self {
        // SAFETY: prctl with constant arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "cannot become a child subreaper");
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Self {
            dir: Some(dir),
            state,
            no_cgroups: false,
            vars: Vec::new(),
        }
    }

    /// This env, with `key=value` in every command's environment.
    pub fn with_var(mut self, key: &str, value: &str) -> Self {
        self.vars.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn without_cgroups() -> Self {
        let mut env = Self::new();
        env.no_cgroups = true;
        env
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--state-dir").arg(&self.state).args(args);
        c.env_remove("CORRAL_AGENT_ID").env_remove("CORRAL_SOCKET");
        if self.no_cgroups {
            c.env("CORRAL_NO_CGROUPS", "1");
        } else {
            c.env_remove("CORRAL_NO_CGROUPS");
        }
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed and print JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "corral {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("corral {args:?}: not JSON ({e})"))
    }

    pub fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.json(&["status", id]);
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{id} never reached {what}: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemons(&self) -> Vec<i32> {
        let state = self.state.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                let c = cmdline(*pid);
                c.contains(" daemon")
                    && c.contains(&state)
                    && proc_stat(*pid).is_some_and(|s| s[0] != "Z")
            })
            .collect()
    }

    /// Stops every agent through corral, stops the daemon, reaps everything by pid,
    /// then proves that nothing we started remains.
    pub fn finish(mut self) {
        self.teardown();
        let end = Instant::now() + DEADLINE;
        loop {
            let left: Vec<String> = children()
                .iter()
                .map(|p| format!("{p}: {}", cmdline(*p)))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "processes left behind: {left:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !self.state.join("corral.sock").exists(),
            "socket left behind"
        );
        if let Some(sock) = self.agent_socket() {
            assert!(
                !sock.exists(),
                "agent socket {} left behind",
                sock.display()
            );
        }
        let dir = self.dir.take().unwrap();
        let path = dir.path().to_owned();
        dir.close().unwrap();
        assert!(!path.exists());
    }

    pub fn teardown(&mut self) {
        if self.state.join("corral.sock").exists() {
            let _ = self
                .cmd(&["--no-autostart", "stop", "--all", "--force"])
                .output();
        }
        for pid in self.daemons() {
            kill_and_reap(pid, libc::SIGTERM);
        }
        for pid in children() {
            kill_and_reap(pid, libc::SIGKILL);
        }
        // A daemon killed on purpose leaves its agent socket behind.
        if let Some(sock) = self.agent_socket()
            && self.daemons().is_empty()
        {
            let _ = std::fs::remove_file(sock);
        }
        // A test that took the daemon's means away (its database, its disk)
        // leaves cgroups behind that no daemon could remove: remove them here.
        if let Some(subtree) = self.cgroup_subtree() {
            for leaf in std::fs::read_dir(&subtree).into_iter().flatten().flatten() {
                if leaf.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(leaf.path());
                }
            }
            let _ = std::fs::remove_dir(&subtree);
        }
    }

    /// The daemon's agent socket, as its log says.
    pub fn agent_socket(&self) -> Option<PathBuf> {
        let log = std::fs::read_to_string(self.state.join("daemon.log")).ok()?;
        log.lines()
            .filter(|l| l.contains("serving agents of other users"))
            .find_map(|l| l.split("agent_socket=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(PathBuf::from)
    }

    /// The daemon's cgroup subtree, as its log says.
    pub fn cgroup_subtree(&self) -> Option<PathBuf> {
        let log = std::fs::read_to_string(self.state.join("daemon.log")).ok()?;
        log.lines()
            .filter(|l| l.contains("agents are contained in cgroups"))
            .find_map(|l| l.split("cgroup=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(PathBuf::from)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.dir.is_some() {
            self.teardown();
        }
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failure that says why in one `error: …` line (after the notice
/// of an autostarted daemon, when the command started one).
pub fn assert_one_error_line(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure, got success");
    let err: String = stderr(out)
        .lines()
        .filter(|l| !l.starts_with("corral: started a daemon"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(err.starts_with("error: "), "{err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

impl Env {
    /// The pid of the daemon serving this state dir (from its lock file).
    pub fn daemon_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.state.join("corral.lock")).unwrap();
        text.trim().parse().unwrap()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it (it is our
    /// child: the CLI that started it has exited and we are a subreaper).
    pub fn crash_daemon(&self) -> i32 {
        let pid = self.daemon_pid();
        assert!(proc_stat(pid).is_some(), "daemon {pid} runs");
        kill_and_reap(pid, libc::SIGKILL);
        assert!(proc_stat(pid).is_none());
        pid
    }
}

/// Does what init does for orphans, for the given pids only: once one of them
/// exits, reap it (they are our children once their daemon is gone). Event
/// driven: one thread blocks in poll(2) on their pidfds.
pub struct InitReaper {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InitReaper {
    pub fn new(pids: Vec<i32>) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: plain syscalls on integer pids and fds this thread owns.
            let mut fds: Vec<(i32, i32)> = pids
                .into_iter()
                .map(|pid| {
                    (pid, unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }
                        as i32)
                })
                .filter(|(_, fd)| *fd >= 0)
                .collect();
            while !fds.is_empty() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut polls: Vec<libc::pollfd> = fds
                    .iter()
                    .map(|(_, fd)| libc::pollfd {
                        fd: *fd,
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                // A bounded wait so the thread notices `stop`.
                let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 100) };
                if n <= 0 {
                    continue;
                }
                let mut keep = Vec::new();
                for ((pid, fd), p) in fds.into_iter().zip(&polls) {
                    if p.revents != 0 {
                        let mut status = 0;
                        unsafe {
                            libc::waitpid(pid, &mut status, 0);
                            libc::close(fd);
                        }
                    } else {
                        keep.push((pid, fd));
                    }
                }
                fds = keep;
            }
            for (_, fd) in fds {
                unsafe { libc::close(fd) };
            }
        });
        Self {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for InitReaper {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pids of every agent the daemon reports, by id.
pub fn agent_pids(ps: &Value) -> std::collections::BTreeMap<String, i32> {
    ps.as_object()
        .unwrap()
        .iter()
        .map(|(id, s)| (id.clone(), s["pid"].as_i64().unwrap() as i32))
        .collect()
}

/// Waits until `pid` has no /proc entry at all (not even a zombie).
pub fn wait_gone(pid: i32) {
    let end = Instant::now() + DEADLINE;
    while proc_stat(pid).is_some() {
        assert!(Instant::now() < end, "pid {pid} left behind");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails the test, saying why, unless it runs as root.
pub fn require_root(what: &str) {
    // SAFETY: a plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root: {what}");
}

/// Starts `corral daemon` in the foreground (our child), its stderr to a file;
/// returns once it answers.
pub fn start_foreground_daemon(env: &Env, stderr_to: &std::path::Path) -> std::process::Child {
    let err = std::fs::File::create(stderr_to).unwrap();
    let child = env
        .cmd(&["daemon", "--sample-ms", "200"])
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the daemon answers", || {
        env.run(&["--no-autostart", "summary"])
            .status
            .success()
            .then_some(())
    });
    child
}

/// A small tmpfs, unmounted when dropped (after a failed assertion too).
/// Declare it before the `Env`, so that everything in it is stopped first.
pub struct SmallDisk {
    dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    pub fn new(size: &str) -> Self {
        require_root("it mounts a small tmpfs to fill");
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t tmpfs failed");
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Bytes free for an ordinary file on it.
    pub fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(self.path()).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Writes until the disk is full.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("fill");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let one = [0u8; 1];
        while f.write_all(&one).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let path = self.path().to_owned();
        let ok = Command::new("umount")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file there: detach it now, it goes when released.
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Live (non-zombie) processes whose environment names agent `id`: what the
/// OS holds of an agent, whoever started it (a cluster node's too: the test
/// nodes share this host's process table).
pub fn agent_processes(id: &str) -> Vec<i32> {
    let needle = format!("CORRAL_AGENT_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s[0] != "Z"))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Waits (up to `within`) until no process of agent `id` is left.
pub fn assert_nothing_left(id: &str, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let left = agent_processes(id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "processes of {id} left behind: {:?}",
            left.iter()
                .map(|p| format!("{p} {}", cmdline(*p)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
