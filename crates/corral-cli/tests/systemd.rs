//! corral under systemd, end to end with the real binary: the daemon's
//! readiness notification (`Type=notify`, `$NOTIFY_SOCKET`), which agents
//! never inherit, the shipped unit file, and `corral startup`'s units that
//! bring a project back at boot.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The workspace's root (for `contrib/`).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
}

/// Starts `corral daemon` (our child) with `NOTIFY_SOCKET=address`.
fn daemon_told_to_notify(env: &Env, address: &str) -> Child {
    env.cmd(&["daemon", "--sample-ms", "200"])
        .env("NOTIFY_SOCKET", address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Receives datagrams on the service manager's socket until one has the line
/// `want`, for up to [`DEADLINE`]; fails early, with the daemon's log, if the
/// daemon exits first. Returns every datagram received.
fn receive_until(manager: &UnixDatagram, daemon: &mut Child, env: &Env, want: &str) -> Vec<String> {
    let end = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want} within {DEADLINE:?}; received {got:?}"
        );
        manager
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .unwrap();
        match manager.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == want);
                got.push(message);
                if done {
                    return got;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Ok(Some(status)) = daemon.try_wait() {
                    let log =
                        std::fs::read_to_string(env.state.join("daemon.log")).unwrap_or_default();
                    panic!(
                        "the daemon exited ({status}) before {want}; received {got:?}; log:\n{log}"
                    );
                }
            }
            Err(e) => panic!("receiving on the notify socket: {e}"),
        }
    }
}

/// The `K=V` entries of a process's environment.
fn environ(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

fn has_notify_socket(pid: i32) -> bool {
    environ(pid)
        .iter()
        .any(|kv| kv.starts_with("NOTIFY_SOCKET="))
}

/// Spawns a sleeping agent through the daemon (never starting one) and
/// returns its pid.
fn sleeping_agent(env: &Env, id: &str) -> i32 {
    let out = env.run(&["spawn", id, "--no-autostart", "--", "sleep", "60"]);
    assert!(out.status.success(), "spawn: {}", stderr(&out));
    let status = env.json(&["status", id, "--no-autostart"]);
    status["pid"].as_i64().unwrap() as i32
}

/// The daemon is ready when it says so: the very first request after
/// `READY=1` is answered, with no retry.
fn assert_answers_at_once(env: &Env) {
    let out = env.run(&["daemon", "status", "--json"]);
    assert!(
        out.status.success(),
        "GET /v1/health right after READY=1: {}",
        stderr(&out)
    );
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(health["pid"].as_i64().is_some(), "{health}");
}

#[test]
fn the_daemon_says_ready_once_it_serves_and_its_agents_cannot_speak_for_it() {
    let env = Env::new();
    let address = env.dir.as_ref().unwrap().path().join("notify.sock");
    let manager = UnixDatagram::bind(&address).unwrap();
    let mut daemon = daemon_told_to_notify(&env, address.to_str().unwrap());

    let got = receive_until(&manager, &mut daemon, &env, "READY=1");
    assert_eq!(got.len(), 1, "READY=1 is the first word: {got:?}");
    assert!(got[0].contains("STATUS=serving "), "{got:?}");
    assert_answers_at_once(&env);
    assert_eq!(env.daemon_pid(), daemon.id() as i32);
    assert!(
        has_notify_socket(daemon.id() as i32),
        "the daemon keeps it (for STOPPING=1)"
    );

    let agent = sleeping_agent(&env, "worker");
    let agent_env = environ(agent);
    assert!(
        agent_env.iter().any(|kv| kv == "CORRAL_AGENT_ID=worker"),
        "{agent_env:?}"
    );
    assert!(
        !agent_env.iter().any(|kv| kv.starts_with("NOTIFY_SOCKET=")),
        "an agent must not be able to tell systemd the daemon is ready or stopping: {agent_env:?}"
    );

    let out = env.run(&["stop", "--all", "--force", "--no-autostart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_gone(agent);
    // Stopping through the API: the daemon says so before it goes.
    let out = env.run(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    receive_until(&manager, &mut daemon, &env, "STOPPING=1");
    assert!(daemon.wait().unwrap().success());
    drop(manager);
    env.finish();
}

#[test]
fn an_abstract_notify_socket_is_reached_and_a_signal_stop_is_announced() {
    use std::os::linux::net::SocketAddrExt;
    let env = Env::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("corral-test-notify-{}-{nanos}", me());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let manager = UnixDatagram::bind_addr(&addr).unwrap();
    let mut daemon = daemon_told_to_notify(&env, &format!("@{name}"));

    receive_until(&manager, &mut daemon, &env, "READY=1");
    assert_answers_at_once(&env);
    // systemd stops the unit with SIGTERM.
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    receive_until(&manager, &mut daemon, &env, "STOPPING=1");
    drop(manager);
    env.finish();
}

#[test]
fn a_daemon_the_cli_starts_in_the_background_is_not_the_services() {
    // A CLI run inside a Type=notify unit (NOTIFY_SOCKET in its environment)
    // that starts a daemon must not let that daemon report for the unit.
    let env = Env::new();
    let address = env.dir.as_ref().unwrap().path().join("notify.sock");
    let out = env
        .cmd(&["summary"])
        .env("NOTIFY_SOCKET", &address)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let daemon = env.daemon_pid();
    assert!(!has_notify_socket(daemon), "{:?}", environ(daemon));
    env.finish();
}

#[test]
fn the_shipped_unit_is_type_notify_and_verifies() {
    let unit = std::fs::read_to_string(repo().join("contrib/corral.service")).unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    for want in [
        "Type=notify",
        "Documentation=man:corral(1) man:corral-daemon(1)",
        "KillMode=process",
        "Delegate=yes",
    ] {
        assert!(lines.contains(&want), "{want} in\n{unit}");
    }
    assert!(
        !unit.contains("ExecStartPost"),
        "readiness comes from the daemon itself"
    );
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: checked the unit's lines only");
        return;
    };
    // The unit names /usr/local/bin/corral; verify it with this build instead.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("corral.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/corral", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        stderr(&out)
    );
    dir.close().unwrap();
}

/// A program on `PATH`, if there is one.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Checks unit files with `systemd-analyze verify` (every file in `dir`
/// that ends in `.service`), where that tool is installed; `false` when it
/// is not (the caller has checked the key lines).
fn systemd_accepts(dir: &Path) -> bool {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: checked the units' lines only");
        return false;
    };
    let units: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .collect();
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {units:?}: {}",
        stderr(&out)
    );
    true
}

/// A project dir `name` under the test's temp dir with a corral.toml
/// holding `toml`; returns the file.
fn project(env: &Env, name: &str, toml: &str) -> std::path::PathBuf {
    let dir = env.dir.as_ref().unwrap().path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("corral.toml");
    std::fs::write(&file, toml).unwrap();
    file
}

const TEAM: &str = "name = \"team\"\n\n[agents.worker]\ncommand = [\"sleep\", \"600\"]\n";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn startup_prints_a_boot_unit_with_absolute_paths_that_systemd_accepts() {
    let env = Env::new();
    let file = project(&env, "my team", TEAM);
    let top = env.dir.as_ref().unwrap().path();
    // A relative -f, from the directory above the project.
    let out = env
        .cmd(&["startup", "-f", "my team/corral.toml"])
        .current_dir(top)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let unit = stdout(&out);
    let lines: Vec<&str> = unit.lines().collect();
    let (exe, file_s, state) = (
        bin().display().to_string(),
        file.display().to_string(),
        env.state.display().to_string(),
    );
    assert!(
        unit.starts_with("# corral-team.service: "),
        "named after the file's name: {unit}"
    );
    for want in [
        format!("ExecStart={exe} up -f \"{file_s}\" --state-dir {state} --no-autostart"),
        format!("ExecStop={exe} down -f \"{file_s}\" --state-dir {state} --no-autostart"),
        format!("WorkingDirectory={}", file.parent().unwrap().display()),
        format!("Description=corral project team ({file_s})"),
        "Type=oneshot".into(),
        "RemainAfterExit=yes".into(),
        "Wants=corral.service".into(),
        "After=corral.service".into(),
        "WantedBy=multi-user.target".into(),
        "Documentation=man:corral(1)".into(),
    ] {
        assert!(lines.contains(&want.as_str()), "{want}\nnot in\n{unit}");
    }
    assert!(
        !unit.contains("Requires="),
        "a daemon restart must not stop the agents"
    );
    assert!(
        stderr(&out).contains("/var/lib/corral"),
        "a system unit for another state dir says whose daemon corral.service is: {}",
        stderr(&out)
    );
    assert!(!env.state.exists(), "printing a unit starts no daemon");

    // Beside the daemon's own unit (run with this build), systemd takes it.
    let units = top.join("units");
    std::fs::create_dir(&units).unwrap();
    std::fs::write(units.join("corral-team.service"), &unit).unwrap();
    let daemon_unit = std::fs::read_to_string(repo().join("contrib/corral.service")).unwrap();
    std::fs::write(
        units.join("corral.service"),
        daemon_unit.replace("/usr/local/bin/corral", &exe),
    )
    .unwrap();
    systemd_accepts(&units);

    // Without a state dir anywhere, a system unit goes with corral.service's.
    let out = std::process::Command::new(bin())
        .args(["startup", "-f"])
        .arg(&file)
        .env_remove("CORRAL_STATE_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(" --state-dir /var/lib/corral --no-autostart\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stderr(&out), "", "nothing to note");
    env.finish();
}

#[test]
fn a_user_unit_is_named_after_the_directory_and_may_start_its_daemon() {
    let env = Env::new();
    // A directory name that needs care: a space, % and $ (systemd specifiers
    // and variables).
    let file = project(
        &env,
        "odd 100% $dir",
        "[agents.worker]\ncommand = [\"sleep\", \"600\"]\n",
    );
    let out = std::process::Command::new(bin())
        .args(["startup", "--user", "-f"])
        .arg(&file)
        .env("CORRAL_STATE_DIR", &env.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let unit = stdout(&out);
    let lines: Vec<&str> = unit.lines().collect();
    assert!(
        unit.starts_with("# corral-odd-100---dir.service: "),
        "{unit}"
    );
    let escaped = file
        .display()
        .to_string()
        .replace('%', "%%")
        .replace('$', "$$");
    let state = env.state.display().to_string();
    for want in [
        format!(
            "ExecStart={} up -f \"{escaped}\" --state-dir {state}",
            bin().display()
        ),
        format!(
            "WorkingDirectory={}",
            file.parent()
                .unwrap()
                .display()
                .to_string()
                .replace('%', "%%")
        ),
        "KillMode=process".into(),
        "WantedBy=default.target".into(),
    ] {
        assert!(lines.contains(&want.as_str()), "{want}\nnot in\n{unit}");
    }
    assert!(
        !unit.contains("corral.service") && !unit.contains("--no-autostart"),
        "a user unit has no system daemon to wait for: {unit}"
    );
    let units = env.dir.as_ref().unwrap().path().join("units");
    std::fs::create_dir(&units).unwrap();
    std::fs::write(units.join("corral-odd-100---dir.service"), &unit).unwrap();
    systemd_accepts(&units);
    env.finish();
}

#[test]
fn startup_install_writes_the_unit_and_says_how_to_enable_it() {
    let env = Env::new();
    let file = project(&env, "team", TEAM);
    let units = env.dir.as_ref().unwrap().path().join("etc/systemd/system");
    let file_s = file.to_str().unwrap();
    let printed = stdout(&env.run(&["startup", "-f", file_s]));
    let install = || {
        env.run(&[
            "startup",
            "-f",
            file_s,
            "--install",
            "--unit-dir",
            units.to_str().unwrap(),
        ])
    };
    let out = install();
    assert!(out.status.success(), "{}", stderr(&out));
    let path = units.join("corral-team.service");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), printed);
    let said = stdout(&out);
    assert!(
        said.contains(&format!("installed {}", path.display()))
            && said.contains("systemctl daemon-reload && systemctl enable corral-team.service"),
        "{said}"
    );
    assert!(
        stderr(&out).contains("no corral.service is installed"),
        "{}",
        stderr(&out)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    assert!(stdout(&install()).contains(&format!("unchanged {}", path.display())));

    // A user unit: systemctl --user, and how to start it without a login.
    let user_units = env.dir.as_ref().unwrap().path().join("user");
    let out = env.run(&[
        "startup",
        "--user",
        "-f",
        file_s,
        "--install",
        "--unit-dir",
        user_units.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains(
            "systemctl --user daemon-reload && systemctl --user enable corral-team.service"
        ) && said.contains("loginctl enable-linger"),
        "{said}"
    );
    let unit = std::fs::read_to_string(user_units.join("corral-team.service")).unwrap();
    assert!(unit.contains("WantedBy=default.target"), "{unit}");
    // Only the units: no temporary file left beside them.
    for dir in [&units, &user_units] {
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["corral-team.service"], "{}", dir.display());
    }
    assert!(!env.state.exists(), "installing a unit starts no daemon");
    env.finish();
}

#[test]
fn startup_refuses_a_project_file_it_cannot_read() {
    let env = Env::new();
    let missing = env.dir.as_ref().unwrap().path().join("nowhere/corral.toml");
    let out = env.run(&["startup", "-f", missing.to_str().unwrap()]);
    assert_one_error_line(&out, &missing.display().to_string());
    assert_eq!(out.status.code(), Some(1));

    let broken = project(&env, "broken", "name = \"x\"\n[agents.a\ncommand = []\n");
    let out = env.run(&["startup", "-f", broken.to_str().unwrap()]);
    assert_one_error_line(&out, &format!("{}:2:", broken.display()));
    assert_eq!(out.status.code(), Some(2));

    let nameless = project(&env, "nameless", "name = 3\n");
    let out = env.run(&["startup", "-f", nameless.to_str().unwrap()]);
    assert_one_error_line(&out, "name must be a non-empty string");
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "no unit is printed for a bad file");

    // A directory is not a project file.
    let dir = broken.parent().unwrap();
    let out = env.run(&["startup", "-f", dir.to_str().unwrap()]);
    assert_one_error_line(&out, "is not a file");
    env.finish();
}
