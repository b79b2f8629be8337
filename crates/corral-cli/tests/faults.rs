//! Faults an operator or an attacker can cause around a running daemon — a
//! disk too full for a log's copy, the signals a service manager sends, an
//! emptied database — each checked end to end against the real binary and
//! what the OS holds (`/proc`, file sizes, `statvfs`), not what corral says.
//!
//! Some of these need root (mounting a small tmpfs); they say so and fail
//! when run without it.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every event so far, as JSON.
fn events(env: &Env) -> Vec<Value> {
    let out = env.run(&["--no-autostart", "--json", "events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn size(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.len())
}

/// Fills its stdout as fast as it can until the disk refuses, then writes one
/// numbered line every 20 ms for ever, ignoring write errors (as a program
/// that keeps running on a full disk does).
/// Writes until the disk is full, says so in the file `$FULL` (on another
/// file system), then writes a tick line every 20 ms.
const FILLER: &str = "\
import os, time
block = b'x' * 65535 + b'\\n'
while True:
    try:
        os.write(1, block)
    except OSError:
        break
open(os.environ['FULL'], 'w').close()
i = 0
while True:
    i += 1
    try:
        os.write(1, b'tick %d\\n' % i)
    except OSError:
        pass
    time.sleep(0.02)
";

#[test]
fn a_log_larger_than_the_free_space_is_truncated_anyway_and_said_so() {
    let disk = SmallDisk::new("8m");
    let env = Env::new();
    let mut daemon = start_foreground_daemon(&env, &env.state.with_extension("stderr"));
    let agent_dir = disk.path().join("filler");
    let full = env.dir.as_ref().unwrap().path().join("full");
    let out = env.run(&[
        "--no-autostart",
        "spawn",
        "filler",
        "--agent-dir",
        agent_dir.to_str().unwrap(),
        "--log-max-mb",
        "1",
        "--log-keep",
        "2",
        "--env",
        &format!("FULL={}", full.display()),
        "--",
        "python3",
        "-c",
        FILLER,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = env.json(&["--no-autostart", "status", "filler"]);
    let pid = status["pid"].as_i64().unwrap() as i32;
    let log = PathBuf::from(status["stdout_log"].as_str().unwrap());
    let run_dir = log.parent().unwrap().to_owned();
    assert!(run_dir.starts_with(disk.path()), "{}", run_dir.display());

    // The disk fills up (the writer is told so: a glance at the free space
    // could fall between its last write and a rotation that frees room); then
    // the log is cut back although no copy of it fits.
    eventually(Duration::from_secs(10), "the disk filled up", || {
        full.exists().then_some(())
    });
    let dropped = eventually(Duration::from_secs(15), "the log cut back", || {
        let small = size(&log) < 1024 * 1024 && disk.free() >= 1024 * 1024;
        let ev = events(&env)
            .into_iter()
            .find(|e| e["kind"] == "log_dropped" && e["agent_id"] == "filler");
        ev.filter(|_| small)
    });
    assert_eq!(dropped["stream"], "stdout", "{dropped}");
    assert_eq!(dropped["run"], 1, "{dropped}");
    assert!(
        dropped["dropped_bytes"].as_u64().unwrap() > 1024 * 1024,
        "{dropped}"
    );
    assert!(
        dropped["kept_bytes"].as_u64().unwrap() <= 1024 * 1024,
        "{dropped}"
    );
    assert!(!dropped["reason"].as_str().unwrap().is_empty(), "{dropped}");

    // It stays bounded while the agent keeps running and writing: its new
    // lines land in the log, the copies stay within keep = 2, and the disk
    // keeps room.
    let ticks = |p: &Path| {
        std::fs::read(p)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"tick "))
            .count()
    };
    let first = eventually(Duration::from_secs(10), "new lines in the log", || {
        let n = ticks(&log);
        (n > 0).then_some(n)
    });
    eventually(Duration::from_secs(10), "more new lines in the log", || {
        (ticks(&log) >= first + 10).then_some(())
    });
    let stat = proc_stat(pid).expect("the agent runs");
    assert_ne!(stat[0], "Z", "the agent runs");
    assert!(size(&log) < 1024 * 1024);
    assert!(size(&run_dir.join("stdout.log.1")) <= 8 * 1024 * 1024);
    assert!(!run_dir.join("stdout.log.3").exists(), "keep = 2");
    assert!(disk.free() >= 1024 * 1024, "{} bytes free", disk.free());
    let s = env.json(&["--no-autostart", "status", "filler"]);
    assert_eq!(s["persistent_status"], "running", "{s}");

    let stop = env.run(&["--no-autostart", "stop", "filler", "--force"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    wait_gone(pid);
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    let _ = daemon.try_wait();
    env.finish();
    drop(disk);
}

/// The daemon, our unreaped child, still runs (not even a zombie yet).
fn alive(daemon: &mut Child) -> bool {
    daemon.try_wait().unwrap().is_none()
        && proc_stat(daemon.id() as i32).is_some_and(|s| s[0] != "Z")
}

/// Sends `sig` to the daemon: our child, not reaped, so its pid is its own.
fn signal(daemon: &Child, sig: i32) {
    // SAFETY: a plain syscall on a pid that cannot have been reused.
    let rc = unsafe { libc::kill(daemon.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", daemon.id());
}

/// Lines of a file that contain every needle.
fn lines_with(path: &Path, needles: &[&str]) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn the_daemon_lives_through_hup_usr1_usr2_alrm_and_pipe_reopens_its_log_and_stops_on_quit() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    let mut daemon = start_foreground_daemon(&env, &env.state.with_extension("stderr"));
    let log = env.state.join("daemon.log");
    let answers = || env.run(&["--no-autostart", "summary"]).status.success();

    for (sig, name, what, lines) in [
        (libc::SIGHUP, "SIGHUP", "daemon log reopened", 1),
        (libc::SIGUSR1, "SIGUSR1", "carries on", 1),
        (libc::SIGUSR2, "SIGUSR2", "carries on", 1),
        (libc::SIGALRM, "SIGALRM", "carries on", 1),
        // SIGPIPE leaves no line: were it fatal, the daemon would be gone
        // before the SIGUSR1 sent after it could be logged.
        (libc::SIGPIPE, "SIGPIPE", "", 0),
        (libc::SIGUSR1, "SIGUSR1", "carries on", 2),
    ] {
        signal(&daemon, sig);
        eventually(
            Duration::from_secs(10),
            &format!("a log line about {name}"),
            || {
                assert!(alive(&mut daemon), "{name} ended the daemon");
                (lines_with(&log, &[name, what]) == lines).then_some(())
            },
        );
        assert!(answers(), "the daemon answers after {name}");
    }

    // Signals whose default would end it and that nobody means for it (power
    // events, async I/O, profiling timers, real-time signals): ignored.
    for sig in [
        libc::SIGPWR,
        libc::SIGIO,
        libc::SIGPROF,
        libc::SIGVTALRM,
        libc::SIGSTKFLT,
        libc::SIGRTMIN() + 3,
        libc::SIGRTMAX(),
    ] {
        signal(&daemon, sig);
        assert!(answers(), "the daemon answers after signal {sig}");
        assert!(alive(&mut daemon), "signal {sig} ended the daemon");
    }
    // What the daemon ignores, its agents do not inherit.
    let out = env.run(&["--no-autostart", "spawn", "plain", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = env.json(&["--no-autostart", "status", "plain"])["pid"]
        .as_i64()
        .unwrap() as i32;
    let status = std::fs::read_to_string(format!("/proc/{plain}/status")).unwrap();
    let ignored = status.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    let mask = u64::from_str_radix(ignored.split_whitespace().nth(1).unwrap(), 16).unwrap();
    // Signals 32 and 33 are the C library's own (no program can set them
    // through it); whatever this test's runner left there is not corral's.
    let glibc_own = (1u64 << 31) | (1u64 << 32);
    assert_eq!(mask & !glibc_own, 0, "the agent ignores signals: {ignored}");
    let stop = env.run(&["--no-autostart", "stop", "plain", "--force"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    wait_gone(plain);

    // logrotate's way: move the log aside, then SIGHUP; a new file takes the lines.
    let moved = env.state.join("daemon.log.1");
    std::fs::rename(&log, &moved).unwrap();
    signal(&daemon, libc::SIGHUP);
    eventually(Duration::from_secs(10), "a new daemon.log", || {
        (lines_with(&log, &["SIGHUP", "daemon log reopened"]) == 1).then_some(())
    });
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the new log is private");
    assert_eq!(
        lines_with(&moved, &["SIGHUP", "daemon log reopened"]),
        1,
        "the moved log keeps the first reopening only"
    );
    assert!(alive(&mut daemon));

    // A SIGHUP in the middle of a batch spawn does not cut it.
    let batch = env
        .cmd(&[
            "--no-autostart",
            "--json",
            "spawn",
            "many",
            "--count",
            "20",
            "--verify-ms",
            "1500",
            "--",
            "sleep",
            "300",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the batch under way", || {
        env.state.join("agents/many.1").exists().then_some(())
    });
    signal(&daemon, libc::SIGHUP);
    let out = batch.wait_with_output().unwrap();
    assert!(out.status.success(), "the batch: {}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pids: Vec<i32> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "running", "{r}");
            r["pid"].as_i64().unwrap() as i32
        })
        .collect();
    assert_eq!(pids.len(), 20);
    for pid in &pids {
        assert!(
            proc_stat(*pid).is_some_and(|s| s[0] != "Z"),
            "agent {pid} runs"
        );
    }
    assert_eq!(lines_with(&log, &["SIGHUP", "daemon log reopened"]), 2);
    assert!(alive(&mut daemon));
    let stop = env.run(&["--no-autostart", "stop", "--all"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    for pid in &pids {
        wait_gone(*pid);
    }

    // SIGQUIT stops it gracefully: exit code 0, socket removed, said in the log.
    signal(&daemon, libc::SIGQUIT);
    let status = eventually(Duration::from_secs(10), "the daemon stopped", || {
        daemon.try_wait().unwrap()
    });
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "SIGQUIT: {status:?}"
    );
    assert!(!env.state.join("corral.sock").exists(), "socket removed");
    assert_eq!(lines_with(&log, &["SIGQUIT", "stopping the daemon"]), 1);
    assert_eq!(lines_with(&log, &["daemon stopped"]), 1);
    env.finish();
}

#[test]
fn an_emptied_database_is_refused_loudly_and_the_live_agent_left_alone() {
    let env = Env::new();
    let out = env.run(&["spawn", "keep", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = env.json(&["status", "keep"])["pid"].as_i64().unwrap() as i32;
    // Field 22 of /proc/<pid>/stat: the start time, which names the process.
    let started = proc_stat(pid).unwrap()[19].clone();
    env.crash_daemon();
    let db = env.state.join("corral.db");
    let wal = env.state.join("corral.db-wal");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    let wal_before = std::fs::read(&wal).unwrap();
    assert!(!wal_before.is_empty(), "a killed daemon leaves its WAL");

    let err_path = env.state.with_extension("stderr");
    let mut daemon = env
        .cmd(&["daemon"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let status = eventually(Duration::from_secs(10), "the daemon refusing", || {
        let status = daemon.try_wait().unwrap();
        if status.is_none() && env.run(&["--no-autostart", "summary"]).status.success() {
            let ps = env.run(&["--no-autostart", "--json", "ps"]);
            panic!(
                "the daemon took the emptied store for a new one; ps: {}",
                String::from_utf8_lossy(&ps.stdout)
            );
        }
        status
    });
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(!status.success(), "{status:?}: {err}");
    assert!(status.code().is_some(), "an exit, not a signal: {status:?}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "one error line: {err:?}"
    );
    assert!(
        err.contains(&format!("{} is empty (0 bytes)", db.display())),
        "{err}"
    );
    assert!(err.contains("agents/ holds 1 entry"), "{err}");
    assert!(
        err.contains("Restore") && err.contains("move the state dir aside"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // The agent runs on, the same process; the files are as they were.
    let stat = proc_stat(pid).expect("the agent still runs");
    assert_ne!(stat[0], "Z", "the agent still runs");
    assert_eq!(stat[19], started, "the same process");
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "corral.db untouched"
    );
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        wal_before,
        "its WAL untouched"
    );

    // Clean up: the agent is our child (the daemon that started it is gone).
    kill_and_reap(pid, libc::SIGKILL);
    std::fs::remove_file(env.state.join("corral.sock")).unwrap();
    env.finish();
}
