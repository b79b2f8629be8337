//! The bare baselines: the same work done without corral, in the same run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

/// Starts `n` copies of `argv` the bare way — for each, create its two log
/// files and posix_spawn it (what std does) — and the seconds it took.
pub fn spawn_loop(dir: &Path, n: usize, argv: &[&str]) -> Result<(Vec<Child>, f64)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let t = Instant::now();
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let out = std::fs::File::create(dir.join(format!("{i}.stdout.log")))?;
        let err = std::fs::File::create(dir.join(format!("{i}.stderr.log")))?;
        children.push(
            Command::new(argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()?,
        );
    }
    Ok((children, t.elapsed().as_secs_f64()))
}

/// SIGTERM every child, then wait for each: the seconds it took.
pub fn term_wait(mut children: Vec<Child>) -> Result<f64> {
    let t = Instant::now();
    for c in &children {
        if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    for c in &mut children {
        c.wait()?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The staged stop done by hand: SIGTERM every child, sleep through the two
/// TERM waits (`term_s`), SIGKILL every child, then wait for each: the
/// seconds it took.
pub fn staged_kill(mut children: Vec<Child>, term_s: f64) -> Result<f64> {
    use rustix::process::{Pid, Signal, kill_process};
    let signal_all = |children: &[Child], sig: Signal| {
        for c in children {
            if let Some(p) = Pid::from_raw(c.id() as i32) {
                let _ = kill_process(p, sig);
            }
        }
    };
    let t = Instant::now();
    signal_all(&children, Signal::TERM);
    std::thread::sleep(std::time::Duration::from_secs_f64(term_s));
    signal_all(&children, Signal::KILL);
    for c in &mut children {
        c.wait()?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Removes the baseline's files (their cost is not part of any figure).
pub fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
