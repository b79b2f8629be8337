//! The command line as a person meets it: help, exit codes, filters, tables,
//! projects, the daemon's own commands — end to end against a real daemon.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::*;
use serde_json::Value;

/// Waits for a child of ours (a daemon we became the parent of) to exit, and reaps it.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waits for one specific pid, which is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(proc_stat(pid).is_none(), "{pid} is gone");
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_speaks_plainly_and_shows_only_what_applies() {
    let env = Env::new();
    let top = text(&env.run(&["--help"]));
    insta::assert_snapshot!("help_top", top);
    for internal in [
        "get_agent_status",
        "monitor_all_agents",
        "cleanup",
        "check_process_health",
    ] {
        assert!(!top.contains(internal), "{internal} in the help");
    }
    let daemon = text(&env.run(&["daemon", "--help"]));
    assert!(
        !daemon.contains("--url") && !daemon.contains("--json"),
        "{daemon}"
    );
    insta::assert_snapshot!("help_daemon", daemon);
    let spawn = text(&env.run(&["spawn", "--help"]));
    assert!(
        spawn.contains("[default: 100]") && spawn.contains("[default: 10,5,5]"),
        "{spawn}"
    );
    insta::assert_snapshot!("help_spawn", spawn);
    insta::assert_snapshot!("help_ps", text(&env.run(&["ps", "--help"])));
    env.finish();
}

#[test]
fn exit_codes_say_what_kind_of_failure_it_was() {
    let env = Env::new();
    assert!(
        env.run(&["spawn", "ok", "--", "sleep", "30"])
            .status
            .success()
    );
    let cases: &[(&[&str], i32)] = &[
        (&["health", "ok"], 0),
        (&["health", "nosuch"], 4),
        (&["status", "nosuch"], 4),
        (&["stop", "*"], 2),
        (&["spawn", "x", "--stop-timeouts", "1,2", "--", "true"], 2),
        (&["spawn", "x", "--env", "novalue", "--", "true"], 2),
        (&["spawn", "../bad", "--", "true"], 2),
        (&["spawn", "--no-such-flag"], 2),
        (&["spawn", "bad", "--", "/no/such/program"], 1),
        (&["ps", "--state", "sleepy"], 2),
    ];
    for (args, code) in cases {
        let out = env.run(args);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "corral {args:?}: {}",
            stderr(&out)
        );
    }
    let star = env.run(&["stop", "*"]);
    assert!(
        stderr(&star).contains("--all") && stderr(&star).contains("PREFIX.*"),
        "{}",
        stderr(&star)
    );
    let after = env.run(&["stop", "ok", "--json"]);
    assert!(after.status.success());
    assert_eq!(
        env.run(&["health", "ok"]).status.code(),
        Some(1),
        "not healthy once stopped"
    );
    env.finish();
}

#[test]
fn ps_filters_and_stop_all_reports_only_what_ran() {
    let env = Env::new();
    for (id, team) in [("L2.1", "a"), ("L2.2", "b"), ("L3.1", "a")] {
        let out = env.run(&[
            "spawn",
            id,
            "--label",
            &format!("team={team}"),
            "--",
            "sleep",
            "30",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(
        !env.run(&["spawn", "gone", "--", "sh", "-c", "exit 3"])
            .status
            .success()
    );
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["ps", "--json"];
        all.extend_from_slice(args);
        let v: Value = serde_json::from_slice(&env.run(&all).stdout).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(ids(&["L2.*"]), ["L2.1", "L2.2"]);
    assert_eq!(ids(&["--label", "team=a"]), ["L2.1", "L3.1"]);
    assert_eq!(ids(&["--state", "failed"]), ["gone"]);
    assert_eq!(
        ids(&["--state", "running", "--label", "team=a", "L3.*"]),
        ["L3.1"]
    );
    let table = text(&env.run(&["ps"]));
    assert!(table.lines().next().unwrap().starts_with("ID"));
    let gone = table.lines().find(|l| l.starts_with("gone")).unwrap();
    assert!(
        gone.contains(" - ") && gone.contains("code 3"),
        "no pid, the exit: {gone}"
    );
    let stop = env.run(&["stop", "--all", "--json"]);
    let reports: Value = serde_json::from_slice(&stop.stdout).unwrap();
    let stopped: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        stopped,
        ["L2.1", "L2.2", "L3.1"],
        "the ended agent is not listed"
    );
    env.finish();
}

#[test]
fn tables_fit_the_terminal_and_wide_shows_everything() {
    let env = Env::new();
    let long_id = format!("team.{}", "x".repeat(60));
    let out = env.run(&["spawn", &long_id, "--", "sh", "-c", "exit 0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut narrow = env.cmd(&["ps"]);
    narrow.env("COLUMNS", "80");
    // COLUMNS counts only on a terminal: through a pipe, tables are never cut.
    let piped = text(&narrow.output().unwrap());
    assert!(piped.contains(&long_id));
    let wide = text(&env.run(&["ps", "--wide"]));
    assert!(wide.contains(&long_id));
    env.finish();
}

#[test]
fn the_command_line_is_shown_quoted_as_typed() {
    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "py",
        "--",
        "python3",
        "-c",
        "print(\"hi\"); import sys",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = env.json(&["status", "py"]);
    assert_eq!(s["cmdline"], r#"python3 -c 'print("hi"); import sys'"#);
    env.finish();
}

#[test]
fn every_data_command_speaks_json() {
    let env = Env::new();
    let out = env.run(&[
        "spawn",
        "j",
        "--",
        "sh",
        "-c",
        "echo one; echo two; sleep 30",
    ]);
    assert!(out.status.success());
    env.wait_for("j", "output", |s| {
        std::fs::read_to_string(s["stdout_log"].as_str().unwrap())
            .unwrap_or_default()
            .contains("two")
    });
    for args in [
        &["status", "j"][..],
        &["ps"],
        &["summary"],
        &["health", "j"],
        &["runs", "j"],
        &["reap"],
        &["daemon", "status"],
    ] {
        let mut all = args.to_vec();
        all.push("--json");
        let out = env.run(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let _: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    let logs = text(&env.run(&["logs", "j", "--json"]));
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["line"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
    let events = text(&env.run(&["events", "--json"]));
    assert!(
        events
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
    // Piped, `events` prints JSON lines without being asked (the contract's
    // format for scripts); one text line per event is for a terminal only.
    let piped = text(&env.run(&["events"]));
    assert!(piped.lines().count() >= events.lines().count(), "{piped}");
    assert!(
        piped
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{piped}"
    );
    env.finish();
}

#[test]
fn the_daemon_says_when_it_starts_and_can_be_asked_about_and_stopped() {
    let env = Env::new();
    let first = env.run(&["spawn", "keep", "--", "sleep", "30"]);
    assert!(
        stderr(&first).starts_with("corral: started a daemon (pid "),
        "{}",
        stderr(&first)
    );
    let second = env.run(&["ps"]);
    assert!(
        stderr(&second).is_empty(),
        "only when it starts one: {}",
        stderr(&second)
    );
    let status = env.json(&["daemon", "status"]);
    let pid = status["pid"].as_i64().unwrap() as i32;
    assert_eq!(pid, env.daemon_pid());
    let agent = env.json(&["status", "keep"])["pid"].as_i64().unwrap() as i32;
    let stop = env.run(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(text(&stop).contains("its agents keep running"));
    reap(pid);
    assert!(proc_stat(agent).is_some(), "the agent outlives the daemon");
    let none = env.run(&["daemon", "status"]);
    assert!(!none.status.success());
    // A new daemon re-adopts it; `daemon stop --stop-agents` takes it down too.
    assert_eq!(env.json(&["status", "keep"])["pid"], agent);
    let pid = env.daemon_pid();
    let all = env.run(&["daemon", "stop", "--stop-agents"]);
    assert!(all.status.success(), "{}", stderr(&all));
    reap(pid);
    // The agent was ours (we are the subreaper of the first daemon's agents).
    reap(agent);
    env.finish();
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let env = Env::new();
    let bash = text(&env.run(&["completions", "bash"]));
    assert!(bash.contains("CORRAL_COMPLETE=bash"), "{bash}");
    let man = text(&env.run(&["man"]));
    assert!(
        man.starts_with(".ie") || man.contains(".TH"),
        "{}",
        &man[..200.min(man.len())]
    );
    env.finish();
}

/// The text of the NAME section of a page: the line after `.SH NAME`.
fn name_line(page: &str) -> &str {
    page.lines()
        .skip_while(|l| *l != ".SH NAME")
        .nth(1)
        .unwrap_or_default()
}

/// `corral man --dir` writes a page per command, each named for it, with its
/// options, a NAME line that says the name once, and a way back to corral(1);
/// groff renders every one without a warning.
#[test]
fn man_writes_a_page_for_every_command() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().join("share/man/man1");
    let out = env.run(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut written: Vec<String> = text(&out).lines().map(str::to_owned).collect();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    written.sort();
    present.sort();
    assert_eq!(written, present, "the paths printed are the pages written");
    for page in [
        "corral",
        "corral-spawn",
        "corral-ps",
        "corral-status",
        "corral-stop",
        "corral-logs",
        "corral-man",
        "corral-completions",
        "corral-daemon",
        "corral-daemon-status",
        "corral-daemon-stop",
    ] {
        assert!(
            dir.join(format!("{page}.1")).is_file(),
            "{page}.1 in {present:?}"
        );
    }
    assert!(
        !dir.join("corral-help.1").exists(),
        "no page for clap's help"
    );

    let groff = std::process::Command::new("groff")
        .arg("--version")
        .output();
    assert!(
        groff.is_ok_and(|o| o.status.success()),
        "this test needs groff (package groff-base) to render the pages"
    );
    for path in &present {
        let page = std::fs::read_to_string(path).unwrap();
        let stem = std::path::Path::new(path)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let escaped = stem.replace('-', "\\-");
        assert!(page.is_ascii(), "{stem}: not ASCII");
        assert!(
            page.contains(&format!(".TH {} 1 ", stem.to_uppercase())),
            "{stem}: title"
        );
        let name = name_line(&page);
        let (named, summary) = name
            .split_once(" \\- ")
            .unwrap_or_else(|| panic!("{stem}: NAME {name:?}"));
        assert_eq!(named, escaped, "{stem}: NAME {name:?}");
        assert!(!summary.is_empty(), "{stem}: NAME {name:?}");
        assert!(
            !summary.to_lowercase().starts_with("corral"),
            "{stem}: NAME repeats the name: {name:?}"
        );
        if stem != "corral" {
            assert!(
                page.contains(".SH \"SEE ALSO\"\n\\fBcorral\\fR(1)"),
                "{stem}: SEE ALSO"
            );
        }
        let rendered = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            rendered.status.success(),
            "groff {stem}: {}",
            stderr(&rendered)
        );
        assert_eq!(stderr(&rendered), "", "groff warns about {stem}");
    }

    let read = |page: &str| std::fs::read_to_string(dir.join(format!("{page}.1"))).unwrap();
    let top = read("corral");
    assert_eq!(
        name_line(&top),
        "corral \\- spawn, watch and stop many long\\-running agents, and keep their record"
    );
    for listed in ["corral\\-spawn(1)", "corral\\-daemon(1)", "corral\\-man(1)"] {
        assert!(top.contains(listed), "the top page lists {listed}");
    }
    assert!(
        top.contains(".SH \"EXIT STATUS\""),
        "exit status on the top page"
    );
    let spawn = read("corral-spawn");
    for option in [
        "\\-\\-restart\\-window",
        "\\-\\-readiness\\-log",
        "\\-\\-state\\-dir",
    ] {
        assert!(spawn.contains(option), "corral-spawn.1 has {option}");
    }
    assert!(
        spawn.contains(".SH SLURM"),
        "spawn's Slurm options under their heading"
    );
    let daemon = read("corral-daemon");
    assert!(
        daemon.contains("corral\\-daemon\\-stop(1)"),
        "corral-daemon.1 lists its commands"
    );
    assert!(
        read("corral-daemon-stop").contains("\\fBcorral\\fR(1), \\fBcorral\\-daemon\\fR(1)"),
        "a nested page points to its parents"
    );

    // Without --dir: one page on stdout, the same as the file.
    assert_eq!(text(&env.run(&["man"])), top);
    assert_eq!(
        text(&env.run(&["man", "daemon", "stop"])),
        read("corral-daemon-stop")
    );
    assert_eq!(text(&env.run(&["man", "spawn"])), spawn);
    let unknown = env.run(&["man", "spwan"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_one_error_line(&unknown, "spawn");
    assert!(env.daemons().is_empty(), "man starts no daemon");
    env.finish();
}

#[test]
fn a_project_comes_up_in_order_changes_only_what_changed_and_goes_down() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let file = dir.join("corral.toml");
    let project = |worker_sleep: &str| {
        format!(
            r#"
name = "t"
[defaults]
stop_timeouts = [1, 1, 1]
[agents.db]
command = ["sh", "-c", "sleep 0.3; echo listening; exec sleep 60"]
probes = {{ readiness = {{ log = "^listening$" }}, interval_s = 0.1 }}
[agents.worker]
command = ["sleep", "{worker_sleep}"]
count = 2
depends_on = ["db"]
"#
        )
    };
    std::fs::write(&file, project("60")).unwrap();
    let f = file.to_str().unwrap();
    let actions = |out: std::process::Output| -> Vec<(String, String)> {
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["agent_id"].as_str().unwrap().into(),
                    a["action"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let first = actions(env.run(&["up", "-f", f, "--json"]));
    assert_eq!(
        first,
        [
            ("t.db".into(), "started".into()),
            ("t.worker.1".into(), "started".into()),
            ("t.worker.2".into(), "started".into())
        ]
    );
    // The workers started after the database was ready.
    let db = env.json(&["status", "t.db"]);
    assert_eq!(db["ready"], true);
    let again = actions(env.run(&["up", "-f", f, "--json"]));
    assert!(again.iter().all(|(_, a)| a == "unchanged"), "{again:?}");
    // --restart NAME restarts that agent from the file, unchanged or not, and
    // leaves what it depends on alone.
    let pid_of = |id: &str| env.json(&["status", id])["pid"].as_i64().unwrap();
    let db_pid = pid_of("t.db");
    let w1_pid = pid_of("t.worker.1");
    let restarted = actions(env.run(&["up", "-f", f, "--restart", "worker", "--json"]));
    assert_eq!(
        restarted,
        [
            ("t.db".into(), "unchanged".into()),
            ("t.worker.1".into(), "restarted".into()),
            ("t.worker.2".into(), "restarted".into())
        ]
    );
    assert_eq!(pid_of("t.db"), db_pid);
    assert_ne!(pid_of("t.worker.1"), w1_pid);
    assert!(
        !std::path::Path::new(&format!("/proc/{w1_pid}")).exists(),
        "the old worker.1 ({w1_pid}) is gone, reaped"
    );
    std::fs::write(&file, project("61")).unwrap();
    let changed = actions(env.run(&["up", "-f", f, "--json"]));
    assert_eq!(
        changed,
        [
            ("t.db".into(), "unchanged".into()),
            ("t.worker.1".into(), "restarted".into()),
            ("t.worker.2".into(), "restarted".into())
        ]
    );
    // Fewer workers: the extra one is stopped.
    std::fs::write(&file, project("61").replace("count = 2", "count = 1")).unwrap();
    let fewer = actions(env.run(&["up", "-f", f, "--json"]));
    assert!(
        fewer.contains(&("t.worker.2".into(), "stopped".into())),
        "{fewer:?}"
    );
    let down = env.run(&["down", "-f", f, "--json"]);
    assert!(down.status.success());
    let reports: Value = serde_json::from_slice(&down.stdout).unwrap();
    let order: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["t.worker.1", "t.db"], "dependents first");
    // An unknown key names file, line and key.
    std::fs::write(&file, "[agents.a]\ncommand = [\"true\"]\ncolour = 1\n").unwrap();
    let bad = env.run(&["up", "-f", f]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("corral.toml:3:1") && stderr(&bad).contains("colour"),
        "{}",
        stderr(&bad)
    );
    env.finish();
}

/// Two projects that name their agents alike don't touch each other's: ids are
/// scoped by project, and an id another project (or a hand spawn) holds is
/// refused before anything changes.
#[test]
fn projects_do_not_collide() {
    let env = Env::new();
    let root = env.dir.as_ref().unwrap().path().to_owned();
    let def =
        "[defaults]\nstop_timeouts = [1, 1, 1]\n[agents.web]\ncommand = [\"sleep\", \"60\"]\n";
    let project = |dir: &str, head: &str| {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("corral.toml");
        std::fs::write(&f, format!("{head}{def}")).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let (pa, pb) = (project("pa", ""), project("pb", ""));
    for f in [&pa, &pb] {
        let out = env.run(&["up", "-f", f]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let pid_of = |id: &str| env.json(&["status", id])["pid"].as_i64();
    let (a, b) = (pid_of("pa.web").unwrap(), pid_of("pb.web").unwrap());
    assert_ne!(a, b);
    assert!(std::path::Path::new(&format!("/proc/{a}")).exists());

    // `up` in pb again changes nothing of pa; `down` in pa leaves pb running.
    let again = env.json(&["up", "-f", &pb, "--json"]);
    assert_eq!(again[0]["action"], "unchanged", "{again}");
    assert_eq!(pid_of("pa.web"), Some(a));
    let down = env.run(&["down", "-f", &pa]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(
        !std::path::Path::new(&format!("/proc/{a}")).exists(),
        "pa.web stopped"
    );
    assert_eq!(
        env.json(&["status", "pb.web"])["persistent_status"],
        "running"
    );
    assert!(std::path::Path::new(&format!("/proc/{b}")).exists());

    // Another directory that calls itself pb: refused, naming the owner, and
    // nothing changed.
    let twin = project("twin", "name = \"pb\"\n");
    let out = env.run(&["up", "-f", &twin]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("pb.web is taken by project \"pb\"") && err.contains("pb/corral.toml"),
        "{err}"
    );
    assert!(
        err.contains("nothing was changed") && err.contains("prefix"),
        "{err}"
    );
    assert_eq!(pid_of("pb.web"), Some(b));
    // Its `down` leaves pb's agent alone too, and says so.
    let out = env.run(&["down", "-f", &twin]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("left pb.web alone"),
        "{}",
        stderr(&out)
    );
    assert!(std::path::Path::new(&format!("/proc/{b}")).exists());

    // A hand-spawned agent holding a project's id.
    let out = env.run(&["spawn", "hand.web", "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hand = project("hand", "");
    let out = env.run(&["up", "-f", &hand]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("hand.web is taken by an agent spawned without a project"),
        "{}",
        stderr(&out)
    );
    // prefix = "" gives bare ids; a prefix names them as the user likes.
    let bare = project("bare", "prefix = \"\"\n");
    let out = env.json(&["up", "-f", &bare, "--json"]);
    assert_eq!(out[0]["agent_id"], "web", "{out}");
    let custom = project("custom", "prefix = \"x.y\"\n");
    let out = env.json(&["up", "-f", &custom, "--json"]);
    assert_eq!(out[0]["agent_id"], "x.y.web", "{out}");
    for f in [&pb, &bare, &custom] {
        assert!(env.run(&["down", "-f", f]).status.success());
    }
    assert!(env.run(&["stop", "hand.web"]).status.success());
    env.finish();
}

/// A reader that goes away (`corral ps | head -1`) ends a client command the
/// way it ends any Unix tool — by SIGPIPE, quietly — never with a panic.
#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    for i in 0..3 {
        let out = env.run(&["spawn", &format!("pipe.{i}"), "--", "sleep", "30"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for args in [&["ps"][..], &["completions", "bash"], &["ps", "--json"]] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the first byte is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "corral {args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "corral {args:?}: {err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "corral {args:?} ended with {:?}: {err}",
            out.status
        );
    }
    env.finish();
}

/// A spawn from a directory whose name is not UTF-8 is the client's own
/// refusal (a usage error naming the directory), not "an unexpected answer".
#[test]
fn a_non_utf8_current_directory_is_a_clear_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let odd = env
        .dir
        .as_ref()
        .unwrap()
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&odd).unwrap();
    let out = env
        .cmd(&["spawn", "odd", "--", "true"])
        .current_dir(&odd)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_one_error_line(&out, "is not valid UTF-8");
    assert!(!stderr(&out).contains("unexpected answer"));
    std::fs::remove_dir(&odd).unwrap();
    env.finish();
}

/// A state dir reached through a symlink (`$HOME` under `/home` → `/var/home`)
/// works end to end: the daemon uses its real path, so removing an agent
/// removes its logs (they are reached without following links).
#[test]
fn a_state_dir_behind_a_symlink_works_end_to_end() {
    let mut env = Env::new();
    let base = env.dir.as_ref().unwrap().path().to_owned();
    std::fs::create_dir(base.join("real")).unwrap();
    std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
    env.state = base.join("link/state");
    let out = env.run(&["spawn", "s", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_for("s", "ended", |s| s["state"] == "ended");
    let logs = base.join("real/state/agents/s");
    assert!(logs.join("runs/1/stdout.log").exists());
    let out = env.run(&["rm", "s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!logs.exists(), "rm left the agent's logs behind");
    env.finish();
}

#[test]
fn ids_sort_naturally_ended_agents_show_no_readiness_and_status_is_one_line_a_field() {
    let env = Env::new();
    for i in [10, 2, 1] {
        let id = format!("w.{i}");
        let out = env.run(&["spawn", &id, "--", "sleep", "30"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // A readiness probe that passes, then an end: READY was "yes", is "-".
    let out = env.run(&[
        "spawn",
        "once",
        "--readiness-exec",
        "true",
        "--",
        "sh",
        "-c",
        "echo 'line one\nline two' >/dev/null; sleep 0.3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["wait", "once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = text(&env.run(&["ps"]));
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(rows, ["once", "w.1", "w.2", "w.10"], "{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let ready_at = header.iter().position(|h| *h == "READY").unwrap();
    let once: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("once"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(once[ready_at], "-", "{table}");
    assert_eq!(
        env.json(&["status", "once"])["ready"],
        false,
        "the JSON keeps false"
    );
    // The multi-line script is one line of `status`, its newline escaped.
    let status = text(&env.run(&["status", "once"]));
    let cmdline = status.lines().find(|l| l.contains("cmdline")).unwrap();
    assert!(cmdline.contains("line one\\nline two"), "{status}");
    assert!(
        !status
            .lines()
            .any(|l| l.trim_start().starts_with("line two")),
        "{status}"
    );
    // `wait` on a subtree reports in the same order.
    let out = env.run(&["stop", "w.*"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let waited = text(&env.run(&["wait", "w.*"]));
    let order: Vec<&str> = waited
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, ["w.1", "w.2", "w.10"], "{waited}");
    // Into a pipe, `ps --watch` writes tables, never terminal codes.
    let mut watch = env.cmd(&["ps", "--watch", "0.2"]);
    watch.stdout(std::process::Stdio::piped());
    let mut child = watch.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    use std::io::Read;
    while seen.windows(2).filter(|w| w == b"ID").count() < 2 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "ps --watch ended");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = child.id() as i32;
    // SAFETY: signals our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = child.wait();
    assert!(!seen.contains(&0x1b), "no escape codes in a pipe");
    env.finish();
}

#[test]
fn restart_stops_each_agent_then_runs_it_again_with_the_same_command() {
    let env = Env::new();
    for id in ["w.1", "w.2"] {
        let out = env.run(&["spawn", id, "--", "sleep", "30"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = env.run(&["spawn", "done", "--", "sh", "-c", "exit 0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.run(&["wait", "done"]).status.success());
    let pid_of = |id: &str| env.json(&["status", id])["pid"].as_i64().unwrap() as i32;
    let old = pid_of("w.1");

    let out = env.run(&["restart", "w.1", "--stop-timeouts", "1,1,1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text(&out).contains("w.1 running"), "{}", text(&out));
    let s = env.json(&["status", "w.1"]);
    let new = s["pid"].as_i64().unwrap() as i32;
    assert_ne!(new, old);
    assert_eq!(
        (s["run"].as_u64(), s["state"].as_str()),
        (Some(2), Some("running"))
    );
    assert!(proc_stat(old).is_none(), "the old run's process is gone");
    assert!(cmdline(new).contains("sleep 30"), "the same command");
    assert_eq!(
        env.json(&["status", "w.2"])["run"],
        1,
        "the other is untouched"
    );

    // Every agent, the ended one too; in natural order, as a batch answers.
    let out = env.run(&["--json", "restart", "--all", "--force"]);
    assert!(out.status.success(), "{}{}", text(&out), stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["done", "w.1", "w.2"]);
    assert_eq!(env.json(&["status", "done"])["run"], 2);
    assert_eq!(env.json(&["status", "w.1"])["run"], 3);
    assert!(proc_stat(new).is_none(), "run 2 of w.1 is gone");

    let out = env.run(&["restart", "nosuch"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    env.finish();
}

/// `corral logs` of a team: every member's lines prefixed with its id (in
/// natural order), `--both` labels the stream, `--json` carries the run, and
/// `-f` follows members as they restart and arrive.
#[test]
fn logs_of_a_team() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let env = Env::new();
    for i in [1, 2, 10] {
        let script = format!("echo start {i}; echo oops {i} >&2; exec sleep 60");
        let out = env.run(&["spawn", &format!("job.{i}"), "--", "sh", "-c", &script]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = env.run(&[
        "spawn",
        "other",
        "--",
        "sh",
        "-c",
        "echo other; exec sleep 60",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Output is written by the agents themselves: wait until each has written.
    let logs = |args: &[&str]| {
        let out = env.run(args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while logs(&["logs", "job.*", "--both"]).lines().count() < 6 {
        assert!(Instant::now() < end, "the agents never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        logs(&["logs", "job.*"]),
        "job.1  | start 1\njob.2  | start 2\njob.10 | start 10\n"
    );
    assert_eq!(
        logs(&["logs", "job.*", "--both"]),
        "job.1  out | start 1\njob.1  err | oops 1\njob.2  out | start 2\njob.2  err | oops 2\njob.10 out | start 10\njob.10 err | oops 10\n"
    );
    assert_eq!(
        logs(&["logs", "job.2", "--both"]),
        "out | start 2\nerr | oops 2\n"
    );
    let all = logs(&["logs", "--all", "--json", "--stderr"]);
    let docs: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 3, "{all}");
    assert!(
        docs.iter()
            .all(|d| d["run"] == 1 && d["stream"] == "stderr"),
        "{all}"
    );
    let stamped = logs(&["logs", "job.1", "-t"]);
    let (at, rest) = stamped.trim_end().split_once(' ').unwrap();
    assert!(at.ends_with('Z') && at.contains('T'), "{stamped}");
    assert_eq!(rest, "start 1");
    let bad = env.run(&["logs", "job.*", "--since", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("neither a duration"),
        "{}",
        stderr(&bad)
    );

    // -f: the current tails, then a restarted member's new run and a newcomer.
    let mut child = env
        .cmd(&["logs", "-f", "job.*", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut expect = |want: &str, times: usize| {
        let end = Instant::now() + Duration::from_secs(20);
        while seen.iter().filter(|l: &&String| *l == want).count() < times {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("never saw {want:?}; saw {seen:?}"),
            }
        }
    };
    expect("job.10 | start 10", 1);
    expect("job.2  | start 2", 1);
    let out = env.run(&["restart", "job.2", "--stop-timeouts", "1,1,1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&[
        "spawn",
        "job.3",
        "--",
        "sh",
        "-c",
        "echo newcomer; exec sleep 60",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    expect("job.3  | newcomer", 1);
    // Run 1's tail, then run 2's first line.
    expect("job.2  | start 2", 2);
    // An agent removed and spawned anew starts again at run 1: followed too.
    for args in [
        &["stop", "job.3", "--stop-timeouts", "1,1,1"][..],
        &["rm", "job.3"],
        &[
            "spawn",
            "job.3",
            "--",
            "sh",
            "-c",
            "echo reborn; exec sleep 60",
        ],
    ] {
        let out = env.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    expect("job.3  | reborn", 1);
    assert!(!seen.iter().any(|l| l.contains("other")), "{seen:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    // --since: every run live since then, oldest first; an agent whose runs all
    // ended before it shows nothing.
    assert_eq!(
        logs(&["logs", "job.2", "--since", "1h"]),
        "start 2\nstart 2\n"
    );
    let out = env.run(&["stop", "other", "--stop-timeouts", "1,1,1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(logs(&["logs", "other", "--since", "1h"]), "other\n");
    assert_eq!(
        logs(&["logs", "other", "--since", "2099-01-01T00:00:00Z"]),
        ""
    );
    env.finish();
}

/// An interpreter that starts, then fails on its missing script, passes the
/// verification window; on a terminal `spawn` watches a moment longer and says
/// so with the stderr tail (exit 1). In a pipe the contract's answer stands.
#[test]
fn a_doomed_interpreter_is_reported_on_a_terminal() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let bin = env!("CARGO_BIN_EXE_corral");
    let line = format!(
        "{bin} --state-dir {} spawn doomed --verify-ms 50 -- sh -c 'sleep 0.3; echo \"cannot open missing.py\" >&2; exit 2'",
        env.state.display()
    );
    // `script` gives the command a terminal (and passes its exit code on).
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(&dir)
        .env_remove("CORRAL_AGENT_ID")
        .env_remove("CORRAL_SOCKET")
        .output()
        .expect("util-linux `script` is needed to give spawn a terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("doomed running"), "{text}");
    assert!(
        text.contains("agent doomed failed right after it started: exited with code 2")
            && text.contains("cannot open missing.py")
            && text.contains("--verify-ms"),
        "{text}"
    );
    // Not on a terminal: `running`, exit 0, as the contract says.
    let out = env.run(&["spawn", "piped", "--", "sh", "-c", "sleep 0.15; exit 2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("piped running"));
    env.finish();
}

#[test]
fn events_take_a_target_and_a_tail() {
    let env = Env::new();
    for (id, code) in [("job.a", 0), ("job.b", 3), ("other", 0)] {
        let _ = env.run(&["spawn", id, "--", "sh", "-c", &format!("exit {code}")]);
        let _ = env.run(&["wait", id]);
    }
    let lines = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--json", "events"];
        all.extend_from_slice(args);
        let out = env.run(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        text(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let every = lines(&[]);
    let ids = |evs: &[Value]| -> std::collections::BTreeSet<String> {
        evs.iter()
            .map(|e| e["agent_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&every),
        ["job.a", "job.b", "other"].map(String::from).into()
    );
    let jobs = lines(&["job.*"]);
    assert_eq!(ids(&jobs), ["job.a", "job.b"].map(String::from).into());
    assert_eq!(
        jobs.len(),
        every.iter().filter(|e| e["agent_id"] != "other").count()
    );
    let b = lines(&["job.b"]);
    assert!(b.iter().all(|e| e["agent_id"] == "job.b"));
    // The last two of job.*, in order: the newest two of what it picked.
    let tail = lines(&["job.*", "--tail", "2"]);
    assert_eq!(tail, jobs[jobs.len() - 2..]);
    assert_eq!(lines(&["--tail", "0"]).len(), 0);
    let out = env.run(&["events", "../bad"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    env.finish();
}

#[test]
fn env_files_reach_the_agents_environment_and_env_wins() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let file = dir.join("worker.env");
    std::fs::write(
        &file,
        "# for the worker\nMODE=batch\nexport WHO='the worker'\n",
    )
    .unwrap();
    let out = env.run(&[
        "spawn",
        "envy",
        "--env-file",
        file.to_str().unwrap(),
        "--env",
        "MODE=stream",
        "--",
        "sleep",
        "30",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = env.json(&["status", "envy"])["pid"].as_i64().unwrap();
    // What the OS holds, not what corral says.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        vars.contains(&"MODE=stream".to_owned()),
        "--env wins: {vars:?}"
    );
    assert!(vars.contains(&"WHO=the worker".to_owned()), "{vars:?}");
    let missing = dir.join("nope.env");
    let out = env.run(&[
        "spawn",
        "broken",
        "--env-file",
        missing.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.env"), "{}", stderr(&out));
    env.finish();
}
