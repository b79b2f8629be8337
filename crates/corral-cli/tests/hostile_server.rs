//! The CLI against a fake daemon that misbehaves: an endless answer, an
//! answer that drips, a silent long poll, answers that are not JSON or not
//! HTTP. Each must end in one `error:` line and exit 1 (never a panic's 101),
//! within its deadline, with its memory bounded — measured by the kernel
//! (`ru_maxrss` from wait4, `VmRSS` while it runs), not by what corral says.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;
#[path = "../../corral-api/tests/support/misbehaving.rs"]
mod misbehaving;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use misbehaving::{Misbehaving, Mode};

/// A CLI that uses more than this is stopped (the old client grew by GBs a second).
const RSS_GUARD_KIB: i64 = 1 << 20;
/// A CLI still running after this is stopped.
const TIME_GUARD: Duration = Duration::from_secs(15);

struct Run {
    out: Output,
    took: Duration,
    /// Peak resident memory, KiB (the kernel's `ru_maxrss`).
    peak_kib: i64,
}

/// A state dir holding a fake daemon's socket.
fn fake_daemon(mode: Mode, health_ok: bool) -> (Env, Misbehaving) {
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let server = Misbehaving::start(&env.state.join("corral.sock"), mode, health_ok);
    (env, server)
}

fn vm_rss_kib(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `corral --no-autostart ARGS` with `envs`, stopping it (and failing
/// the test) when it grows past [`RSS_GUARD_KIB`] or runs past [`TIME_GUARD`].
// The child is reaped by wait4 on its pid, which also gives its peak memory.
#[allow(clippy::zombie_processes)]
fn run_guarded(env: &Env, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let stderr_path = env.dir.as_ref().unwrap().path().join("stderr");
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = env.cmd(&["--no-autostart"]);
    cmd.args(args)
        .env_remove("CORRAL_CLIENT_TIMEOUT")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_file);
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let mut stdout = child.stdout.unwrap();
    let mut guard_tripped = None;
    let (status, peak_kib) = loop {
        let mut status = 0;
        // SAFETY: wait4 on our own child's pid with a local status and rusage.
        let (rc, rusage) = unsafe {
            let mut rusage = std::mem::zeroed::<libc::rusage>();
            let rc = libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage);
            (rc, rusage)
        };
        if rc == pid {
            break (std::process::ExitStatus::from_raw(status), rusage.ru_maxrss);
        }
        assert_eq!(rc, 0, "wait4 failed");
        if guard_tripped.is_none() {
            let rss = vm_rss_kib(pid);
            if rss > RSS_GUARD_KIB {
                guard_tripped = Some(format!("grew to {} MiB", rss >> 10));
            } else if start.elapsed() > TIME_GUARD {
                guard_tripped = Some(format!("still running after {TIME_GUARD:?}"));
            }
            if guard_tripped.is_some() {
                // SAFETY: a signal to our own unreaped child (its pid cannot be reused yet).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
    let stderr = std::fs::read(&stderr_path).unwrap();
    if let Some(why) = guard_tripped {
        panic!(
            "corral {args:?} {why}; stopped it. stderr: {}",
            String::from_utf8_lossy(&stderr)
        );
    }
    Run {
        out: Output {
            status,
            stdout: out,
            stderr,
        },
        took,
        peak_kib,
    }
}

/// Exit 1 with one `error:` line mentioning `needle`.
fn assert_fails_cleanly(run: &Run, needle: &str) {
    assert_eq!(
        run.out.status.code(),
        Some(1),
        "exit {:?}: {}",
        run.out.status,
        stderr(&run.out)
    );
    assert_one_error_line(&run.out, needle);
}

#[test]
fn an_endless_answer_ends_at_the_size_limit_with_memory_bounded() {
    // The fake answers everything endlessly, the health check too.
    let (env, server) = fake_daemon(Mode::Endless, false);
    let run = run_guarded(&env, &["ps"], &[]);
    assert_fails_cleanly(&run, "the answer to GET /v1/agents");
    assert_one_error_line(&run.out, "larger than 64 MiB");
    // The 64 MiB answer buffer, plus the binary and runtime.
    assert!(
        run.peak_kib < 200 << 10,
        "peak RSS {} MiB",
        run.peak_kib >> 10
    );
    drop(server);
    env.finish();
}

#[test]
fn a_dripping_answer_ends_at_the_deadline() {
    let (env, server) = fake_daemon(Mode::Drip(Duration::from_millis(100)), true);
    let run = run_guarded(&env, &["ps"], &[("CORRAL_CLIENT_TIMEOUT", "1")]);
    assert_fails_cleanly(&run, "no complete answer to GET /v1/agents");
    assert_one_error_line(&run.out, "within 1s");
    // A byte arrived every 100 ms all along: only an overall deadline ends it.
    assert!(run.took >= Duration::from_secs(1), "took {:?}", run.took);
    assert!(run.took < Duration::from_secs(4), "took {:?}", run.took);
    drop(server);
    env.finish();
}

#[test]
fn a_wait_may_take_its_own_timeout_and_no_more() {
    let (env, server) = fake_daemon(Mode::Silent, true);
    let run = run_guarded(
        &env,
        &["wait", "a", "--timeout", "1s"],
        &[("CORRAL_CLIENT_TIMEOUT", "1")],
    );
    assert_fails_cleanly(&run, "no complete answer to GET /v1/agents/a/wait");
    assert_one_error_line(&run.out, "within 2s");
    assert!(run.took >= Duration::from_secs(2), "took {:?}", run.took);
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
    drop(server);
    env.finish();
}

#[test]
fn an_answer_that_is_not_json_names_what_was_expected() {
    let (env, server) = fake_daemon(Mode::NotJson, true);
    let run = run_guarded(&env, &["ps"], &[]);
    assert_fails_cleanly(
        &run,
        "GET /v1/agents: expected JSON for BTreeMap<String, AgentStatus>",
    );
    assert_one_error_line(&run.out, "<html>corral? never heard of it</html>");
    drop(server);
    env.finish();
}

#[test]
fn an_answer_that_is_not_http_is_not_taken_for_a_missing_daemon() {
    let (env, server) = fake_daemon(Mode::BadStatus, false);
    let run = run_guarded(&env, &["ps"], &[]);
    assert_fails_cleanly(&run, "GET /v1/agents: expected an HTTP/1.1 answer");
    drop(server);
    env.finish();
}

#[test]
fn a_client_timeout_that_is_not_seconds_is_one_error_line() {
    let (env, server) = fake_daemon(Mode::NotJson, true);
    let run = run_guarded(&env, &["ps"], &[("CORRAL_CLIENT_TIMEOUT", "soon")]);
    assert_fails_cleanly(
        &run,
        "CORRAL_CLIENT_TIMEOUT must be a number of seconds above 0",
    );
    assert!(
        server.requests.lock().unwrap().is_empty(),
        "it sent a request"
    );
    drop(server);
    env.finish();
}
