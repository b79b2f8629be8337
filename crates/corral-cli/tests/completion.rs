//! Shell completion end to end: agent ids come from the daemon that serves
//! the state dir the line names (or `$CORRAL_STATE_DIR`), in natural order;
//! with no daemon there are none, silently, and no daemon is started. Real
//! bash and fish load what `corral completions` prints and complete with it.
//!
//! bash and fish are required: without them these tests fail and say so (CI
//! installs fish).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Env, bin, stderr};

/// A completion request as fish makes it (`CORRAL_COMPLETE=fish corral --
/// WORDS…`, the last word the one being completed), with `env` as the
/// environment's state dir when given. Nothing else of the test's
/// environment names a daemon.
fn ask(state_dir: Option<&Path>, words: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.env("CORRAL_COMPLETE", "fish")
        .arg("--")
        .args(words)
        .env_remove("CORRAL_STATE_DIR")
        .env_remove("CORRAL_URL")
        .env_remove("CORRAL_TOKEN_FILE");
    if let Some(dir) = state_dir {
        cmd.env("CORRAL_STATE_DIR", dir);
    }
    cmd.output().unwrap()
}

/// The candidates of a fish completion answer (each line's value, before its tab).
fn candidates(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", stderr(out));
    assert_eq!(stderr(out), "", "completion is quiet");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

/// The candidates that are not options.
fn ids(out: &Output) -> Vec<String> {
    candidates(out)
        .into_iter()
        .filter(|c| !c.starts_with('-'))
        .collect()
}

/// Spawns `w.1` … `w.10` and `x.1`, each a `sleep`.
fn spawn_team(env: &Env) {
    let out = env.run(&["spawn", "w", "--count", "10", "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["spawn", "x.1", "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn agent_ids_come_from_the_daemon_in_natural_order() {
    let env = Env::new();
    spawn_team(&env);
    let state = env.state.to_str().unwrap();
    let all_w: Vec<String> = (1..=10).map(|i| format!("w.{i}")).collect();

    // The state dir on the line, before or after the command, or in the environment.
    let on_line = ask(None, &["corral", "stop", "--state-dir", state, "w"]);
    assert_eq!(ids(&on_line), all_w);
    let before = ask(
        None,
        &["corral", &format!("--state-dir={state}"), "stop", "w"],
    );
    assert_eq!(ids(&before), all_w);
    assert_eq!(
        ids(&ask(Some(&env.state), &["corral", "status", "w.1"])),
        ["w.1", "w.10"]
    );
    // An empty word: every id (then the options).
    let every = ids(&ask(Some(&env.state), &["corral", "logs", ""]));
    let mut want = all_w.clone();
    want.push("x.1".to_owned());
    assert_eq!(every, want);

    // Every place that takes an agent id.
    for words in [
        &["corral", "status", "x"][..],
        &["corral", "health", "x"],
        &["corral", "stop", "x"],
        &["corral", "kill", "x"],
        &["corral", "restart", "x"],
        &["corral", "logs", "-n", "5", "x"],
        &["corral", "runs", "x"],
        &["corral", "wait", "x"],
        &["corral", "rm", "x"],
        &["corral", "events", "x"],
        &["corral", "ps", "x"],
        &["corral", "progress", "50", "--agent", "x"],
    ] {
        assert_eq!(ids(&ask(Some(&env.state), words)), ["x.1"], "{words:?}");
    }
    // A new id is not completed from the old ones.
    assert_eq!(
        ids(&ask(Some(&env.state), &["corral", "spawn", "w"])),
        Vec::<String>::new()
    );
    // Commands and options still complete from the grammar.
    assert!(candidates(&ask(None, &["corral", "sto"])).contains(&"stop".to_owned()));
    assert!(
        candidates(&ask(None, &["corral", "spawn", "--restart", ""]))
            .contains(&"on-failure".to_owned())
    );
    env.finish();
}

#[test]
fn without_a_daemon_completion_says_nothing_and_starts_none() {
    let env = Env::new();
    let state = env.state.to_str().unwrap();
    for out in [
        ask(None, &["corral", "stop", "--state-dir", state, "w"]),
        ask(Some(&env.state), &["corral", "status", ""]),
    ] {
        assert_eq!(ids(&out), Vec::<String>::new());
    }
    assert!(!env.state.exists(), "completion made the state dir");
    assert!(env.daemons().is_empty(), "completion started a daemon");
    env.finish();
}

/// A socket that takes the request and never answers costs a completion
/// about a second, not a hung shell.
#[test]
fn a_daemon_that_does_not_answer_costs_about_a_second() {
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    let socket = env.state.join("corral.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let started = Instant::now();
    let out = ask(Some(&env.state), &["corral", "stop", "w"]);
    let took = started.elapsed();
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
    assert_eq!(ids(&out), Vec::<String>::new());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    env.finish();
}

/// A directory holding `corral` (a link to the binary under test), to put first on PATH.
fn path_with_corral(env: &Env) -> String {
    let dir = env.dir.as_ref().unwrap().path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(bin(), dir.join("corral")).unwrap();
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", dir.display())
}

/// What bash's completion function for `corral` (as loaded from `script`)
/// puts in COMPREPLY for `words`, the last one being completed.
fn bash_complete(env: &Env, path: &str, script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        r#"source {script}
f=$(complete -p corral | sed -E 's/.* -F ([^ ]+) .*/\1/')
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMP_TYPE=9
"$f" corral "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script.display(),
        words = quoted.join(" "),
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env("PATH", path)
        .env("CORRAL_STATE_DIR", &env.state)
        .env_remove("CORRAL_URL")
        .env_remove("CORRAL_TOKEN_FILE")
        .output()
        .expect("this test needs bash");
    assert!(out.status.success(), "bash: {}", stderr(&out));
    assert_eq!(stderr(&out), "", "bash completion is quiet");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_agent_ids_with_the_installed_script() {
    let env = Env::new();
    let path = path_with_corral(&env);
    let script: PathBuf = env.dir.as_ref().unwrap().path().join("corral.bash");
    let out = env.run(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&script, &out.stdout).unwrap();

    // No daemon yet: no ids, and none is started.
    assert_eq!(
        bash_complete(&env, &path, &script, &["corral", "stop", "w"]),
        Vec::<String>::new()
    );
    assert!(env.daemons().is_empty(), "completion started a daemon");

    spawn_team(&env);
    let w: Vec<String> = (1..=10).map(|i| format!("w.{i}")).collect();
    assert_eq!(
        bash_complete(&env, &path, &script, &["corral", "stop", "w"]),
        w
    );
    assert_eq!(
        bash_complete(&env, &path, &script, &["corral", "logs", "w.1"]),
        ["w.1", "w.10"]
    );
    assert!(
        bash_complete(&env, &path, &script, &["corral", "res"]).contains(&"restart".to_owned())
    );
    env.finish();
}

#[test]
fn fish_completes_agent_ids_with_the_installed_script() {
    let env = Env::new();
    let path = path_with_corral(&env);
    let dir = env.dir.as_ref().unwrap().path().join("fish");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.run(&["completions", "fish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.join("corral.fish"), &out.stdout).unwrap();
    spawn_team(&env);
    let fish = |line: &str| -> Vec<String> {
        let out = Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!(
                "set -p fish_complete_path {}; complete -C '{line}'",
                dir.display()
            ))
            .env("PATH", &path)
            .env("HOME", env.dir.as_ref().unwrap().path())
            .env("XDG_CONFIG_HOME", env.dir.as_ref().unwrap().path())
            .env("XDG_DATA_HOME", env.dir.as_ref().unwrap().path())
            .env("CORRAL_STATE_DIR", &env.state)
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN_FILE")
            .output()
            .expect("this test needs fish (CI installs it)");
        candidates(&out)
    };
    assert_eq!(fish("corral kill w.1"), ["w.1", "w.10"]);
    assert_eq!(fish("corral wait x"), ["x.1"]);
    env.finish();
}
