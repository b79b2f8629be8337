//! `corral top` end to end, in a real terminal: tmux runs the dashboard
//! against a private daemon, the test reads the screen with `capture-pane`,
//! types with `send-keys`, and checks what happened in /proc.
//!
//! tmux is required: without it this test fails and says so (CI installs it).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, proc_stat, wait_gone};

/// One tmux session on a tmux server of its own (its socket in the test's
/// temp dir, so no other tmux is touched). Dropping it kills the session by
/// name, then the server — also when the test fails half-way.
struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        tmux_cmd(&self.socket)
    }

    /// Starts `command` in a detached session of `width` × `height`.
    fn start(socket: &Path, session: &str, width: u16, height: u16, command: &str) -> Self {
        let tmux = Self {
            socket: socket.to_owned(),
            session: session.to_owned(),
        };
        let out = tmux
            .cmd()
            .args(["new-session", "-d", "-s", session])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            text(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// The screen as plain text.
    fn screen(&self) -> String {
        text(
            &self
                .run(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
    }

    fn keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", &self.session, keys]);
        assert!(
            out.status.success(),
            "tmux send-keys: {}",
            text(&out.stderr)
        );
    }

    /// Whether the session still exists.
    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", &self.session])
            .status
            .success()
    }

    /// The pid of the program in the session's pane.
    fn pane_pid(&self) -> i32 {
        let out = self.run(&["display-message", "-p", "-t", &self.session, "#{pane_pid}"]);
        text(&out.stdout).trim().parse().unwrap()
    }

    /// Polls the screen until `ok` holds (or the deadline passes).
    fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < end,
                "the dashboard never showed {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-session", "-t", &self.session]);
        let _ = self.run(&["kill-server"]);
    }
}

fn tmux_cmd(socket: &Path) -> Command {
    let mut c = Command::new("tmux");
    c.arg("-S").arg(socket);
    // A test run from inside tmux must not reach the outer server.
    c.env_remove("TMUX").env("TERM", "xterm-256color");
    c.env_remove("CORRAL_AGENT_ID").env_remove("CORRAL_SOCKET");
    c
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn require_tmux() {
    match Command::new("tmux").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs tmux, and `tmux -V` failed: {}",
            text(&out.stderr)
        ),
        Err(e) => panic!("this test needs tmux (Debian/Ubuntu: apt-get install tmux): {e}"),
    }
}

/// The line of the screen that shows `id` in the table.
fn row<'a>(screen: &'a str, id: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == id))
}

/// `corral top` against `env`'s daemon, in a tmux window of `width` × `height`.
fn start_top(env: &Env, width: u16, height: u16) -> Tmux {
    let dir = env.dir.as_ref().unwrap().path();
    let session = format!(
        "corral-top-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let command = format!(
        "exec '{}' --no-autostart --state-dir '{}' top",
        env!("CARGO_BIN_EXE_corral"),
        env.state.display()
    );
    Tmux::start(&dir.join("tmux.sock"), &session, width, height, &command)
}

#[test]
fn top_shows_agents_and_stops_the_selected_one_after_yes() {
    require_tmux();
    let env = Env::new();
    let mut pids = Vec::new();
    for id in ["alpha", "bravo", "charlie"] {
        let out = env.run(&["spawn", id, "--", "sleep", "300"]);
        assert!(out.status.success(), "spawn {id}: {}", text(&out.stderr));
        pids.push(env.json(&["status", id])["pid"].as_i64().unwrap() as i32);
    }
    let [alpha, bravo, charlie] = pids[..] else {
        unreachable!()
    };

    let tmux = start_top(&env, 120, 30);
    let top = tmux.pane_pid();

    tmux.wait_screen("the three agents", |s| {
        ["alpha", "bravo", "charlie"]
            .iter()
            .all(|id| row(s, id).is_some_and(|l| l.contains("healthy") && l.contains("running")))
    });

    // The first row is selected; one down is bravo.
    tmux.keys("j");
    tmux.wait_screen("bravo selected", |s| {
        row(s, "bravo").is_some_and(|l| l.contains("▶"))
    });
    tmux.keys("x");
    tmux.wait_screen("the stop question", |s| s.contains("Stop bravo?"));
    tmux.keys("y");

    wait_gone(bravo);
    // The row (from the event stream) and the note (the stop's answer) may
    // come in either order.
    tmux.wait_screen("bravo cancelled, and the stop's outcome", |s| {
        row(s, "bravo").is_some_and(|l| l.contains("cancelled"))
            && s.contains("bravo cancelled after")
    });
    for pid in [alpha, charlie] {
        let stat = proc_stat(pid).expect("the other agents still run");
        assert_ne!(stat[0], "Z", "pid {pid} runs");
    }

    // The detail pane shows the whole status, though the table's refreshes
    // carry only the table's fields: the tree and the start time come from
    // the pane's own fetch.
    tmux.keys("k");
    tmux.wait_screen("alpha selected", |s| {
        row(s, "alpha").is_some_and(|l| l.contains("▶"))
    });
    tmux.keys("Enter");
    let field = |s: &str, name: &str, value: &str| {
        s.lines()
            .any(|l| l.contains(&format!("│{name} ")) && l.contains(value))
    };
    tmux.wait_screen("alpha's detail with its tree and start", |s| {
        s.contains("alpha · run 1") && field(s, "tree", "1 process") && field(s, "started", "20")
    });
    tmux.keys("Escape");
    tmux.wait_screen("the detail closed", |s| !s.contains("alpha · run 1"));

    tmux.keys("q");
    let end = Instant::now() + DEADLINE;
    while tmux.alive() {
        assert!(Instant::now() < end, "q did not end the dashboard");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The dashboard itself has ended (reaped by tmux, or a zombie of ours
    // that `finish` reaps if tmux went first).
    let end = Instant::now() + DEADLINE;
    while proc_stat(top).is_some_and(|s| s[0] != "Z") {
        assert!(
            Instant::now() < end,
            "corral top (pid {top}) is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(tmux);
    env.finish();
}

#[test]
fn a_narrow_window_keeps_the_progress_and_tells_the_ids_apart() {
    require_tmux();
    let env = Env::new();
    for n in [1, 10, 11] {
        let id = format!("research.crawler.worker.{n}");
        let out = env.run(&["spawn", &id, "--", "sleep", "300"]);
        assert!(out.status.success(), "spawn {id}: {}", text(&out.stderr));
        let message = format!("page {n}");
        let out = env.run(&["progress", "40", "--message", &message, "--agent", &id]);
        assert!(out.status.success(), "progress {id}: {}", text(&out.stderr));
    }
    let tmux = start_top(&env, 60, 20);
    let screen = tmux.wait_screen("three rows with their progress", |s| {
        ["page 1", "page 10", "page 11"].iter().all(|m| {
            s.lines()
                .any(|l| l.trim_end_matches('│').trim_end().ends_with(m))
        })
    });
    let header = screen
        .lines()
        .find(|l| l.contains(" ID "))
        .unwrap_or_default();
    assert!(header.contains("PROGRESS"), "{screen}");
    assert!(
        !header.contains("THR") && !header.contains("READY"),
        "{screen}"
    );
    // Each row's id keeps its start and its last segment.
    for n in [1, 10, 11] {
        let end = format!(".{n} ");
        let page = format!("page {n}");
        assert!(
            screen
                .lines()
                .any(|l| l.contains("research.") && l.contains(&end) && l.contains(&page)),
            "{n}: {screen}"
        );
    }
    tmux.keys("q");
    let end = Instant::now() + DEADLINE;
    while tmux.alive() {
        assert!(Instant::now() < end, "q did not end the dashboard");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(tmux);
    env.finish();
}
