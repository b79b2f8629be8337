//! One contract behind every client: the CLI, `top` and `mcp` call the typed
//! methods of `corral-client`, which is the one place a route's path is
//! written. This test reads the CLI's sources and fails on a route path
//! written anywhere else, so a new command cannot drift from the API by
//! typing a path of its own.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

/// Files that may name routes, and why.
const ALLOWED: &[(&str, &str)] = &[
    // `corral bench` measures the routes themselves: the time the daemon takes
    // to answer a path, body read but not decoded.
    ("commands/bench/mod.rs", "measures routes by path"),
    ("commands/bench/slurm.rs", "measures routes by path"),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_route_path_is_written_outside_the_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 10, "the CLI's sources were not found");
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if ALLOWED.iter().any(|(f, _)| *f == rel) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if ["\"/v1/", "\"/v1\"", "\"/metrics", "format!(\"/v1"]
                .iter()
                .any(|p| code.contains(p))
            {
                found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "route paths written outside corral-client (add a typed method there instead):\n{}",
        found.join("\n")
    );
}
