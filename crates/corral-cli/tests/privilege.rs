//! No privilege crosses a boundary: agents that run as another user, under a
//! root daemon, get nothing of root's — not its file writes, not its uid, not
//! its environment — and still reach the daemon for what is theirs.
//!
//! Every test here needs root (it switches agents to `nobody` or to a user it
//! creates with `useradd`); each says so and fails without it. Claims are
//! checked against the OS: file owners and contents, `/proc/<pid>/status`
//! and `/proc/<pid>/environ`, socket modes.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A directory every user can enter, with a sticky, world-writable `pub`
/// inside (like /tmp): where an agent of another user can rename its own dir.
fn shared_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let public = dir.path().join("pub");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    (dir, public)
}

fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

/// A user made with `useradd` for one test, removed (`userdel -f`) when dropped.
struct TempUser(String);

/// `useradd -M -s /bin/sh EXTRA... NAME`.
fn useradd(name: &str, extra: &[&str]) {
    let made = std::process::Command::new("useradd")
        .args(["-M", "-s", "/bin/sh"])
        .args(extra)
        .arg(name)
        .output()
        .expect("useradd is needed for this test");
    assert!(made.status.success(), "useradd: {}", stderr(&made));
}

impl TempUser {
    fn add(name: &str, extra: &[&str]) -> Self {
        useradd(name, extra);
        Self(name.to_owned())
    }

    /// Deletes the account (`userdel -f`: its processes may still run) and
    /// makes a new one of the same name with `extra` options.
    fn recreate(&self, extra: &[&str]) {
        let deleted = std::process::Command::new("userdel")
            .args(["-f", &self.0])
            .output()
            .unwrap();
        assert!(deleted.status.success(), "userdel: {}", stderr(&deleted));
        useradd(&self.0, extra);
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .args(["-f", &self.0])
            .output();
    }
}

fn running_pid(env: &Env, id: &str) -> i32 {
    let s = env.wait_for(id, "running", |s| s["state"] == "running");
    s["pid"].as_i64().unwrap() as i32
}

#[test]
fn an_agent_cannot_redirect_the_daemons_writes_through_its_agent_dir() {
    require_root("its agents run as nobody and attack root's file writes");
    let env = Env::new();
    let (_shared, public) = shared_dir();
    // Another agent's log (the victim), and a directory only root may enter.
    let victim = public.parent().unwrap().join("victim");
    std::fs::create_dir_all(victim.join("runs/2")).unwrap();
    let victim_log = victim.join("runs/2/stdout.log");
    std::fs::write(&victim_log, "secret\n").unwrap();
    let root_only = public.parent().unwrap().join("root-only/x");
    std::fs::create_dir_all(&root_only).unwrap();
    std::fs::set_permissions(
        root_only.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();

    // Each agent swaps its own agent dir for a symlink, then fails, so that
    // its restart (run 2) makes its files through the link.
    for (id, target) in [("swap", &victim), ("climb", &root_only)] {
        let dir = public.join(id);
        let script = format!(
            "mv {d} {d}.moved && ln -s {t} {d}; exit 1",
            d = dir.display(),
            t = target.display()
        );
        let out = env.run(&[
            "spawn",
            id,
            "--user",
            "nobody",
            "--agent-dir",
            dir.to_str().unwrap(),
            "--restart",
            "on-failure",
            "--max-restarts",
            "1",
            "--backoff",
            "0.05,0.05",
            "--verify-ms",
            "0",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ended: Vec<Value> = ["swap", "climb"]
        .iter()
        .map(|id| {
            env.wait_for(id, "its second run over", |s| {
                s["run"].as_u64() >= Some(2) && s["state"] == "ended"
            })
        })
        .collect();
    // What the OS holds: the victim's log has its content and its owner.
    assert_eq!(std::fs::read_to_string(&victim_log).unwrap(), "secret\n");
    let meta = std::fs::metadata(&victim_log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert!(!victim.join("runs/2/stderr.log").exists());
    // Nothing was made under the root-only dir, for nobody or anyone.
    assert_eq!(std::fs::read_dir(&root_only).unwrap().count(), 0);
    // And each refused run says why.
    for s in ended {
        let why = s["end_reason"].as_str().unwrap_or_default();
        assert!(why.contains("symlink"), "{s}");
        assert_eq!(s["persistent_status"], "failed", "{s}");
    }
    env.finish();
}

#[test]
fn a_user_that_cannot_be_resolved_at_restart_never_runs_as_another() {
    require_root("it creates and deletes a user with useradd/userdel");
    let name = format!("crl{}", std::process::id());
    let user = TempUser::add(&name, &[]);

    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "u",
        "--user",
        &name,
        "--restart",
        "always",
        "--backoff",
        "0.05,0.05",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "id -u; exec sleep 300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = running_pid(&env, "u");
    let uid = uid_of(pid);
    assert_ne!(uid, 0);

    // The daemon dies; so does the agent; the user is deleted meanwhile.
    env.crash_daemon();
    kill_and_reap(pid, libc::SIGKILL);
    let deleted = std::process::Command::new("userdel")
        .arg(&name)
        .output()
        .unwrap();
    assert!(deleted.status.success(), "userdel: {}", stderr(&deleted));

    // The next daemon plans run 2, which fails for want of its user.
    let s = env.wait_for("u", "run 2 refused", |s| {
        s["run"].as_u64() >= Some(2)
            && s["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains("cannot be resolved"))
    });
    assert!(s["pid"].is_null(), "{s}");
    assert!(s["end_reason"].as_str().unwrap().contains(&name), "{s}");
    // No process of the agent ran as root (or at all): every run after the
    // first has no output, and nothing runs with its command.
    let runs = env.json(&["runs", "u"]);
    for r in runs.as_array().unwrap().iter().skip(1) {
        assert!(r["pid"].is_null(), "{r}");
        let log = PathBuf::from(r["stdout_log"].as_str().unwrap());
        assert!(
            std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
            "{r}"
        );
    }
    let root_sleepers: Vec<i32> = processes_of("u")
        .into_iter()
        .filter(|p| cmdline(*p).starts_with("sleep 300"))
        .collect();
    assert!(root_sleepers.is_empty(), "{root_sleepers:?}");
    let stop = env.run(&["stop", "u", "--force"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    drop(user);
    env.finish();
}

/// A user deleted and its name given to a new account while the daemon runs:
/// the agent's next run does not start as the new account's uid.
#[test]
fn a_name_that_comes_to_mean_another_account_does_not_run_the_agent() {
    require_root("it creates, deletes and recreates a user with useradd/userdel");
    let name = format!("crm{}", std::process::id());
    let user = TempUser::add(&name, &[]);

    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "renamed",
        "--user",
        &name,
        "--restart",
        "always",
        "--backoff",
        "0.05,0.05",
        "--cwd",
        "/",
        "--",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = running_pid(&env, "renamed");
    let first = uid_of(pid);
    assert_ne!(first, 0);

    // The account goes (its process still runs); a new one gets its name
    // (and another uid).
    let other = (first + 7919).to_string();
    user.recreate(&["-u", &other]);

    // Run 1 ends; run 2 would be the new account's.
    kill_and_reap(pid, libc::SIGKILL);
    let s = env.wait_for("renamed", "run 2 refused", |s| {
        s["run"].as_u64() >= Some(2)
            && s["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains("is now uid"))
    });
    assert!(s["pid"].is_null(), "{s}");
    let theirs = processes_of("renamed");
    assert!(theirs.is_empty(), "{theirs:?} run as the new account");
    let stop = env.run(&["stop", "renamed", "--force"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    drop(user);
    env.finish();
}

/// Every process in `/proc` started with `CORRAL_AGENT_ID=<id>`.
fn processes_of(id: &str) -> Vec<i32> {
    let kv = format!("CORRAL_AGENT_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| environ_has(*p, &kv))
        .collect()
}

fn environ_has(pid: i32, kv: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| b.split(|c| *c == 0).any(|e| e == kv.as_bytes()))
        .unwrap_or(false)
}

#[test]
fn an_agent_of_another_user_gets_a_clean_environment() {
    require_root("one agent runs as nobody");
    let env = Env::new();
    // The daemon the first command starts inherits this environment.
    let out = env
        .cmd(&["spawn", "mine", "--env", "ASKED=1", "--", "sleep", "300"])
        .env("CORRAL_TEST_SECRET", "s3cret")
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&[
        "spawn", "theirs", "--user", "nobody", "--env", "ASKED=1", "--", "sleep", "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mine = environ(running_pid(&env, "mine"));
    let theirs = environ(running_pid(&env, "theirs"));
    let has = |e: &[String], kv: &str| e.iter().any(|x| x == kv);
    let keys = |e: &[String]| {
        let mut k: Vec<String> = e
            .iter()
            .map(|kv| kv.split('=').next().unwrap().to_owned())
            .collect();
        k.sort();
        k
    };
    // The daemon's own user inherits by default.
    assert!(has(&mine, "CORRAL_TEST_SECRET=s3cret"), "{mine:?}");
    assert!(has(&mine, "ASKED=1"));
    // Another user: exactly the clean set, the request's and corral's.
    assert!(!has(&theirs, "CORRAL_TEST_SECRET=s3cret"), "{theirs:?}");
    assert_eq!(
        keys(&theirs),
        [
            "ASKED",
            "CORRAL_AGENT_ID",
            "CORRAL_RUN_ID",
            "CORRAL_SOCKET",
            "HOME",
            "LANG",
            "LOGNAME",
            "PATH",
            "SHELL",
            "USER"
        ],
        "{theirs:?}"
    );
    assert!(has(&theirs, "USER=nobody") && has(&theirs, "LOGNAME=nobody"));
    assert!(has(&theirs, "LANG=C.UTF-8"));
    assert!(
        has(
            &theirs,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
        "{theirs:?}"
    );
    // `inherit_env: false` for the daemon's own user: clean too.
    let out = env.run(&[
        "spawn",
        "clean",
        "--no-inherit-env",
        "--env",
        "ASKED=1",
        "--",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clean = environ(running_pid(&env, "clean"));
    assert!(!has(&clean, "CORRAL_TEST_SECRET=s3cret"), "{clean:?}");
    assert!(has(&clean, "ASKED=1") && has(&clean, "CORRAL_AGENT_ID=clean"));
    let status = env.json(&["status", "clean"]);
    assert!(status.get("pid").is_some());
    env.finish();
}

#[test]
fn an_agent_of_another_user_reports_progress_on_the_agent_socket() {
    require_root("its agents run as nobody");
    let env = Env::new();
    let corral = bin();
    let corral = corral.to_str().unwrap();
    let script = format!(
        "{c} progress 42 --message mine; echo own=$?; \
         {c} progress 7 --agent other; echo other=$?; exec sleep 300",
        c = corral
    );
    let out = env.run(&["spawn", "other", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&[
        "spawn", "nob", "--user", "nobody", "--cwd", "/", "--", "sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = env.wait_for("nob", "its own progress", |s| s["progress"] == 42);
    assert_eq!(s["progress_message"], "mine");
    let pid = s["pid"].as_i64().unwrap() as i32;
    assert_eq!(uid_of(pid), 65534);

    // It was told the agent socket, which the OS lets every user reach.
    let sock = environ(pid)
        .into_iter()
        .find_map(|kv| kv.strip_prefix("CORRAL_SOCKET=").map(PathBuf::from))
        .unwrap();
    assert_eq!(Some(sock.clone()), env.agent_socket());
    assert!(sock.starts_with("/run/corral"), "{}", sock.display());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o666);
    let dir = std::fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o755));

    // Only for itself: another agent's progress is refused.
    let log = PathBuf::from(s["stdout_log"].as_str().unwrap());
    let text = eventually(DEADLINE, "both reports answered", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("other=").then_some(t)
    });
    assert!(text.contains("own=0"), "{text}");
    assert!(!text.contains("other=0"), "{text}");
    assert!(env.json(&["status", "other"])["progress"].is_null());

    // A process of nobody's outside every agent is refused, and no route but
    // the agents' is served there.
    let outside = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(corral)
        .args(["progress", "5", "--agent", "nob"])
        .env("CORRAL_SOCKET", &sock)
        .env_remove("CORRAL_AGENT_ID")
        .output()
        .unwrap();
    assert!(!outside.status.success());
    assert!(
        stderr(&outside).contains("not inside any agent"),
        "{}",
        stderr(&outside)
    );
    assert_eq!(env.json(&["status", "nob"])["progress"], 42);
    let list = raw_get(&sock, "/v1/agents");
    assert!(
        list.starts_with("HTTP/1.1 403") || list.starts_with("HTTP/1.1 404"),
        "{list}"
    );

    env.finish();
    assert!(
        !sock.exists(),
        "the agent socket is removed with the daemon"
    );
}

/// A GET over a Unix socket from this (root, non-agent) process: the status line and body.
fn raw_get(sock: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn paths_with_dots_are_refused_and_prune_stays_below_the_state_dir() {
    let env = Env::new();
    let base = env.state.parent().unwrap().to_owned();
    let dotted = format!("{}/agents/../../out", env.state.display());
    // Not there yet: the CLI cannot resolve the `..`, and says so.
    let out = env.run(&["spawn", "a", "--agent-dir", &dotted, "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_one_error_line(&out, "`..`");
    // Straight to the API: refused, naming the field.
    let line = serde_json::json!({"agent_id": "a", "command": ["true"], "agent_dir": dotted});
    let mut child = env
        .cmd(&["spawn", "--from", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{line}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("agent_dir") && all.contains("`..`"), "{all}");

    // Once it exists, the CLI resolves it to where it really is: outside the
    // state dir, so prune never removes it.
    let outside = base.join("out");
    std::fs::create_dir(&outside).unwrap();
    for _ in 0..2 {
        let out = env.run(&["spawn", "a", "--agent-dir", &dotted, "--", "true"]);
        assert!(out.status.success(), "{}", stderr(&out));
        env.wait_for("a", "ended", |s| s["state"] == "ended");
    }
    let s: Value = env.json(&["status", "a"]);
    assert_eq!(s["run"], 2);
    assert!(
        s["stdout_log"]
            .as_str()
            .unwrap()
            .starts_with(outside.to_str().unwrap()),
        "{s}"
    );
    let out = env.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(outside.join("runs/1/stdout.log").exists());
    assert!(outside.join("runs/2/stdout.log").exists());
    env.finish();
}
