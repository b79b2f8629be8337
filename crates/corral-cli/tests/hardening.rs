//! Attacks and faults, end to end against the real daemon binary: each ends in
//! a clear error, with nothing lost and nobody let in. Every claim is checked
//! against what the OS holds (`/proc`, file modes, descriptors), not against
//! what corral says.
//!
//! Some of these need root (mounting a small tmpfs to fill, files owned by
//! another user); they say so and fail when run without it.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Lifts this process's soft open-file limit to its hard one (a flood needs fds).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn daemon_log(env: &Env) -> String {
    std::fs::read_to_string(env.state.join("daemon.log")).unwrap_or_default()
}

#[test]
fn an_ended_run_holds_no_descriptor() {
    let env = Env::new();
    let ok = env.run(&["spawn", "warm", "--", "true"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let daemon = env.daemon_pid();
    let before = fd_count(daemon);
    let out = env.run(&[
        "spawn",
        "once",
        "--count",
        "200",
        "--verify-ms",
        "0",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(Duration::from_secs(10), "all 200 ended", || {
        let all = env.json(&["ps"]);
        all.as_object()
            .unwrap()
            .values()
            .all(|s| s["persistent_status"] == "completed")
            .then_some(())
    });
    let after = fd_count(daemon);
    assert!(
        after <= before + 2,
        "descriptors: {before} before, {after} after 200 ended agents"
    );
    env.finish();
}

#[test]
fn a_state_dir_others_can_write_or_another_user_owns_is_refused() {
    require_root("it creates a state dir owned by another user");
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.run(&["ps"]);
    assert_one_error_line(&out, "writable by group or others");
    assert!(env.daemons().is_empty(), "no daemon on an open state dir");

    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&env.state, Some(65534), Some(65534)).unwrap();
    let out = env.run(&["ps"]);
    assert_one_error_line(&out, "owned by uid 65534");
    std::os::unix::fs::chown(&env.state, Some(0), Some(0)).unwrap();
    env.finish();
}

#[test]
fn the_cli_sends_nothing_to_a_socket_another_user_owns() {
    require_root("it makes a socket owned by another user");
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = env.state.join("corral.sock");
    let fake = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fake.set_nonblocking(true).unwrap();
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    let out = env.run(&["--no-autostart", "ps"]);
    assert_one_error_line(&out, "refusing to talk to");
    assert!(fake.accept().is_err(), "the fake socket got a connection");
    drop(fake);
    std::fs::remove_file(&socket).unwrap();
    env.finish();
}

#[test]
fn symlinks_in_the_state_dir_are_not_followed() {
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = env.dir.as_ref().unwrap().path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, env.state.join("daemon.log")).unwrap();
    let out = env.run(&["ps"]);
    assert!(!out.status.success(), "started through a symlinked log");
    assert!(stderr(&out).contains("daemon.log"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(env.state.join("daemon.log")).unwrap();

    let _ = std::fs::remove_file(env.state.join("corral.lock"));
    std::os::unix::fs::symlink(&victim, env.state.join("corral.lock")).unwrap();
    let out = env.run(&["ps"]);
    assert!(
        !out.status.success(),
        "started through a symlinked lock file"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(env.state.join("corral.lock")).unwrap();
    env.finish();
}

#[test]
fn every_file_corral_makes_is_private() {
    let env = Env::new();
    let outside = env.dir.as_ref().unwrap().path().join("elsewhere/agent");
    let out = env.run(&["spawn", "p", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&[
        "spawn",
        "q",
        "--agent-dir",
        outside.to_str().unwrap(),
        "--",
        "sleep",
        "30",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&env.state), 0o700);
    for f in [
        "corral.db",
        "corral.db-wal",
        "corral.db-shm",
        "corral.lock",
        "daemon.log",
    ] {
        assert_eq!(mode(&env.state.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&env.state.join("corral.sock")), 0o600);
    for d in ["agents", "agents/p", "agents/p/runs", "agents/p/runs/1"] {
        assert_eq!(mode(&env.state.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&env.state.join("agents/p/runs/1/stdout.log")), 0o600);
    assert_eq!(mode(&outside), 0o700);
    assert_eq!(mode(&outside.join("runs/1/stderr.log")), 0o600);
    env.finish();
}

#[test]
fn a_deleted_database_is_noticed_and_nothing_more_is_acknowledged() {
    let env = Env::new();
    let out = env.run(&["spawn", "before", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(env.state.join("corral.db")).unwrap();
    let out = env.run(&["spawn", "after", "--", "sleep", "30"]);
    assert!(
        !out.status.success(),
        "a spawn was acknowledged without a database"
    );
    let err = stderr(&out);
    assert!(err.contains("deleted or replaced"), "{err}");
    assert!(env.json(&["status", "before"])["process_alive"] == true);
    assert!(
        env.run(&["status", "after"]).status.code() != Some(0),
        "the refused spawn is not shown"
    );
    assert!(daemon_log(&env).contains("deleted or replaced"));
    // The daemon still serves reads, and stops what runs.
    let out = env.run(&["--no-autostart", "stop", "before", "--force"]);
    assert!(
        !out.status.success(),
        "a stop that cannot be recorded is refused"
    );
    env.finish();
}

#[test]
fn a_deleted_lock_file_does_not_let_a_second_daemon_in() {
    let env = Env::new();
    let out = env.run(&["ps"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = env.daemon_pid();
    std::fs::remove_file(env.state.join("corral.lock")).unwrap();
    let second = env.run(&["daemon"]);
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    assert_eq!(env.daemons(), [first]);
    // Put the pid back so the teardown finds the daemon.
    std::fs::write(env.state.join("corral.lock"), format!("{first}\n")).unwrap();
    env.finish();
}

#[test]
fn a_client_that_leaves_during_the_window_does_not_leave_the_agent_spawning() {
    use std::io::Write;
    let env = Env::new();
    assert!(env.run(&["ps"]).status.success());
    let body = r#"{"agent_id": "c3", "command": ["sleep", "100"], "verify_ms": 1500}"#;
    let mut s = std::os::unix::net::UnixStream::connect(env.state.join("corral.sock")).unwrap();
    write!(
        s,
        "POST /v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let st = env.wait_for("c3", "running", |s| s["persistent_status"] == "running");
    assert!(proc_stat(st["pid"].as_i64().unwrap() as i32).is_some());
    env.finish();
}

#[test]
fn one_spawn_answer_is_one_snapshot() {
    let env = Env::new();
    for i in 0..15 {
        let id = format!("x{i}");
        let out = env.run(&[
            "--json",
            "spawn",
            &id,
            "--verify-ms",
            "0",
            "--",
            "sh",
            "-c",
            "exit 2",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        match (v["status"].as_str().unwrap(), v["exit_code"].as_i64()) {
            ("running", None) | ("failed", Some(2)) => {}
            other => panic!("incoherent answer {other:?}: {v}"),
        }
    }
    env.finish();
}

#[test]
fn each_run_has_its_own_logs() {
    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "t.fast",
        "--",
        "sh",
        "-c",
        "echo 'config missing: /etc/x.toml' >&2; exit 3",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config missing"));
    let out = env.run(&["spawn", "t.fast", "--", "sh", "-c", "exit 4"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("exited with code 4"), "{err}");
    assert!(
        !err.contains("config missing"),
        "run 1's output leaked: {err}"
    );
    let logs = env.run(&["logs", "t.fast", "--stderr"]);
    assert!(logs.status.success());
    assert!(
        logs.stdout.is_empty(),
        "run 2 wrote nothing: {:?}",
        String::from_utf8_lossy(&logs.stdout)
    );
    let first = env.run(&["logs", "t.fast", "--stderr", "--run", "1"]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("config missing"));
    let runs = env.json(&["runs", "t.fast"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0]["run"].as_i64(), runs[0]["exit_code"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(
        (runs[1]["run"].as_i64(), runs[1]["exit_code"].as_i64()),
        (Some(2), Some(4))
    );
    let s = env.json(&["status", "t.fast"]);
    assert_eq!(s["run"], 2);
    assert!(
        s["stderr_log"]
            .as_str()
            .unwrap()
            .ends_with("runs/2/stderr.log")
    );
    env.finish();
}

#[test]
fn user_strings_cannot_forge_daemon_log_lines() {
    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "inj",
        "--cwd",
        "/nonexistent\nFORGED ERROR agent_id=admin\r",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    let log = daemon_log(&env);
    assert!(log.contains("FORGED"), "the line was logged: {log}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged line: {log}"
    );
    assert!(!log.contains('\0'));
    env.finish();
}

#[test]
fn a_token_file_others_can_read_is_warned_about_or_refused() {
    let env = Env::new();
    let token = env.dir.as_ref().unwrap().path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let strict = env.run(&[
        "--token-file",
        token.to_str().unwrap(),
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--strict",
    ]);
    assert_one_error_line(&strict, "readable by group or others");
    let mut daemon = env
        .cmd(&[
            "--token-file",
            token.to_str().unwrap(),
            "daemon",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the warning", || {
        daemon_log(&env)
            .contains("readable by group or others")
            .then_some(())
    });
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    let _ = daemon.try_wait();
    env.finish();
}

#[test]
fn an_agent_may_report_progress_only_for_itself() {
    let env = Env::new();
    let corral = env!("CARGO_BIN_EXE_corral");
    let out = env.run(&["spawn", "a", "--", "sleep", "60"]);
    assert!(out.status.success());
    let script = format!(
        r#"if "{corral}" progress 90 --agent a 2>err.txt; then echo sent; else echo refused; fi; "{corral}" progress 10; sleep 60"#
    );
    let cwd = env
        .dir
        .as_ref()
        .unwrap()
        .path()
        .to_str()
        .unwrap()
        .to_owned();
    let out = env.run(&["spawn", "b", "--cwd", &cwd, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = env.wait_for("b", "its own report", |s| s["progress"] == 10);
    let cwd = PathBuf::from(b["stdout_log"].as_str().unwrap());
    let said = std::fs::read_to_string(&cwd).unwrap();
    assert_eq!(said.trim(), "refused", "agent b reported for agent a");
    assert_eq!(env.json(&["status", "a"])["progress"], Value::Null);
    // The coordinator, outside every agent, may report for anyone.
    let ok = env.run(&["progress", "50", "--agent", "a"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(env.json(&["status", "a"])["progress"], 50);
    env.finish();
}

#[test]
fn a_dead_agent_is_never_reported_running_after_a_restart() {
    let env = Env::new();
    let out = env.run(&["spawn", "victim", "--", "sleep", "300"]);
    assert!(out.status.success());
    let pid = env.json(&["status", "victim"])["pid"].as_i64().unwrap() as i32;
    env.crash_daemon();
    // The agent is now our child (we are its subreaper): killed, it stays a
    // zombie until we reap it, and the kernel keeps its status in its stat.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually(Duration::from_secs(5), "a zombie", || {
        proc_stat(pid).filter(|s| s[0] == "Z").map(drop)
    });
    let s = env.json(&["status", "victim"]);
    assert_eq!(s["persistent_status"], "failed", "{s}");
    assert_eq!(s["process_alive"], false);
    assert_eq!(
        s["exit_signal"], 9,
        "the real end, read from the zombie: {s}"
    );
    assert_ne!(s["health"], "healthy");
    kill_and_reap(pid, libc::SIGKILL);
    env.finish();
}

#[test]
fn readopted_agents_stop_as_fast_as_any() {
    let env = Env::new();
    for i in 0..5 {
        let out = env.run(&["spawn", &format!("r{i}"), "--", "sleep", "300"]);
        assert!(out.status.success());
    }
    let pids: Vec<i32> = agent_pids(&env.json(&["ps"])).into_values().collect();
    env.crash_daemon();
    // As init would: reap them once they exit (their parent, the daemon, is gone).
    let _init = InitReaper::new(pids.clone());
    assert!(
        env.run(&["ps"]).status.success(),
        "restarted and re-adopted"
    );
    let began = Instant::now();
    let out = env.run(&["stop", "--all"]);
    let took = began.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(2),
        "5 re-adopted agents took {took:?}"
    );
    for pid in pids {
        wait_gone(pid);
    }
    env.finish();
}

#[test]
fn a_full_disk_refuses_changes_shows_nothing_unstored_and_catches_up_when_freed() {
    let disk = SmallDisk::new("3m");
    let mut env = Env::new();
    env.state = disk.path().join("state");
    let mut daemon = start_foreground_daemon(&env, &disk.path().join("daemon.stderr"));
    let out = env.run(&["--no-autostart", "spawn", "a", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = env.json(&["--no-autostart", "status", "a"])["pid"]
        .as_i64()
        .unwrap() as i32;
    let fill = disk.fill();

    // Writes fail now: spawns are refused until the store gives way, then stay refused.
    let refused = eventually(Duration::from_secs(20), "a refused spawn", || {
        let out = env.run(&[
            "--no-autostart",
            "spawn",
            "b",
            "--verify-ms",
            "0",
            "--",
            "true",
        ]);
        (!out.status.success() && stderr(&out).contains("cannot record")).then_some(out)
    });
    assert!(stderr(&refused).contains("unavailable") || stderr(&refused).contains("cannot record"));
    let health = env.run(&["--no-autostart", "health", "a"]);
    assert_eq!(
        health.status.code(),
        Some(0),
        "agent health is a read: {}",
        stderr(&health)
    );
    // The agent dies while nothing can be recorded: shown as the zombie it is,
    // never as running-and-healthy, and never as an end that is not stored.
    kill_agent_process(pid);
    let s = eventually(Duration::from_secs(5), "the exit seen", || {
        let s = env.json(&["--no-autostart", "status", "a"]);
        (s["process_alive"] == false).then_some(s)
    });
    assert_eq!(s["health"], "zombie", "{s}");
    assert_eq!(
        s["persistent_status"], "running",
        "not ahead of the store: {s}"
    );
    let stop = env.run(&["--no-autostart", "stop", "a"]);
    assert!(
        !stop.status.success(),
        "a stop that cannot be recorded is refused"
    );
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is alive");

    // Space comes back: the pending end is committed, the agent reaped.
    std::fs::remove_file(fill).unwrap();
    let s = eventually(Duration::from_secs(15), "the end recorded", || {
        let s = env.json(&["--no-autostart", "status", "a"]);
        (s["persistent_status"] == "failed").then_some(s)
    });
    assert_eq!(s["exit_signal"], 9, "{s}");
    wait_gone(pid);
    let ok = env.run(&["--no-autostart", "spawn", "c", "--", "true"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The record survives a restart as it was shown.
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    let _ = daemon.try_wait();
    daemon = start_foreground_daemon(&env, &disk.path().join("daemon2.stderr"));
    let s = env.json(&["--no-autostart", "status", "a"]);
    assert_eq!(
        (s["persistent_status"].as_str(), s["exit_signal"].as_i64()),
        (Some("failed"), Some(9))
    );
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    let _ = daemon.try_wait();
    env.finish();
    drop(disk);
}

/// SIGKILLs an agent that is the daemon's child (the daemon reaps it).
fn kill_agent_process(pid: i32) {
    // SAFETY: a plain syscall; the pid is the daemon's unreaped child, so it
    // cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn a_connection_flood_is_capped_and_local_clients_are_still_served() {
    raise_nofile();
    let env = Env::new();
    let token = env.dir.as_ref().unwrap().path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = env
        .cmd(&[
            "--token-file",
            token.to_str().unwrap(),
            "daemon",
            "--listen",
            &addr,
            "--max-connections",
            "64",
            "--header-timeout-ms",
            "1500",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the daemon answers", || {
        env.run(&["--no-autostart", "summary"])
            .status
            .success()
            .then_some(())
    });
    let pid = daemon.id() as i32;
    let baseline = fd_count(pid);
    // 2000 idle connections, no token, never a byte sent.
    let flood: Vec<std::net::TcpStream> = (0..2000)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert!(flood.len() > 1000, "opened {}", flood.len());
    std::thread::sleep(Duration::from_millis(200));
    let held = fd_count(pid);
    assert!(
        held <= baseline + 64 + 4,
        "the daemon holds {held} fds (baseline {baseline})"
    );
    // Local clients are served during the flood, quickly.
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let out = env.run(&["--no-autostart", "ps"]);
        assert!(out.status.success(), "{}", stderr(&out));
        times.push(t.elapsed());
    }
    times.sort();
    assert!(
        times[19] < Duration::from_secs(2),
        "slowest {:?}",
        times[19]
    );
    // Idle connections are closed by the header timeout.
    eventually(Duration::from_secs(10), "idle connections closed", || {
        (fd_count(pid) <= baseline + 2).then_some(())
    });
    assert!(daemon_log(&env).contains("too many open connections"));
    drop(flood);
    kill_and_reap(pid, libc::SIGTERM);
    let _ = daemon.try_wait();
    env.finish();
}

#[test]
fn an_ordinary_user_runs_corral_in_a_dir_of_their_own() {
    require_root("it switches to uid 65534 with setpriv");
    let env = Env::new();
    let top = env.dir.as_ref().unwrap().path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run_as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_corral"))
            .arg("--state-dir")
            .arg(&env.state)
            .args(args)
            .env("HOME", top)
            .output()
            .unwrap()
    };
    let out = run_as_nobody(&["spawn", "mine", "--cwd", "/tmp", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&env.state).unwrap().uid(), 65534);
    assert_eq!(mode(&env.state), 0o700);
    let status = run_as_nobody(&["--json", "status", "mine"]);
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = s["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}")).unwrap().uid(),
        65534,
        "the agent runs as its daemon's user"
    );
    // Only a root daemon may run agents as another user.
    let refused = run_as_nobody(&["spawn", "other", "--user", "root", "--", "true"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("only when the daemon runs as root"),
        "{}",
        stderr(&refused)
    );
    // root's CLI does not talk to a socket another user owns.
    let out = env.run(&["--no-autostart", "ps"]);
    assert_one_error_line(&out, "refusing to talk to");
    let stop = run_as_nobody(&["stop", "--all", "--force"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    env.finish();
}
