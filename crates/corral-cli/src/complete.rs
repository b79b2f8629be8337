//! Shell completion. clap_complete's engine completes the commands, the
//! options and their values from the grammar, asked by the shell at each TAB
//! (`CORRAL_COMPLETE=bash corral -- corral stop w`); agent ids come from the
//! daemon that serves the state dir the command line names.
//!
//! `corral completions SHELL` prints what a shell loads once. For bash, zsh
//! and fish it is a few lines that ask the installed corral for the real
//! registration when the shell loads them, so a completion file written once
//! keeps matching corral across upgrades.
//!
//! Completing never starts a daemon, never waits long for one (an answer
//! within [`IDS_WITHIN`], or no ids), and never prints an error: a shell
//! prints what it gets.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter as _;
use corral_api::Client;

use crate::cli::Cli;

/// The environment variable that turns a run of corral into a completion
/// request: `CORRAL_COMPLETE=bash corral` prints bash's registration.
pub const VAR: &str = "CORRAL_COMPLETE";

/// How long a completion waits for the daemon's list of ids.
const IDS_WITHIN: Duration = Duration::from_secs(1);

/// Answers a completion request and exits, when [`VAR`] asks for one;
/// otherwise returns at once. Call before anything is written to stdout.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command)
        .var(VAR)
        .complete();
}

/// The ids of the daemon's agents that start with `current`, in natural
/// order (`w.2` before `w.10`); none when no daemon answers in time.
pub fn agent_ids(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let line: Vec<OsString> = std::env::args_os().collect();
    let mut ids = daemon_ids(&Line::parse(&line)).unwrap_or_default();
    ids.retain(|id| id.starts_with(prefix));
    ids.sort_by(|a, b| corral_core::natural_cmp(a, b));
    ids.into_iter().map(CompletionCandidate::new).collect()
}

/// Where the command being completed would find its daemon, as its line says.
#[derive(Debug, Default, PartialEq)]
struct Line {
    state_dir: Option<PathBuf>,
    url: Option<String>,
    token_file: Option<PathBuf>,
}

impl Line {
    /// Reads `--state-dir`, `--url` and `--token-file` (`--opt VALUE` or
    /// `--opt=VALUE`; the last one given) from the words of the line being
    /// completed: this process's arguments after the first `--`, up to the
    /// line's own `--`. A leading `~/` is the home directory (the shell has
    /// not expanded it yet).
    fn parse(args: &[OsString]) -> Self {
        let words = match args.iter().position(|a| a == "--") {
            Some(i) => &args[i + 1..],
            None => args.get(1..).unwrap_or_default(),
        };
        let mut line = Self::default();
        let mut words = words.iter().skip(1).map(|w| w.to_string_lossy());
        while let Some(word) = words.next() {
            if word == "--" {
                break;
            }
            let Some((name, inline)) =
                word.strip_prefix("--")
                    .map(|rest| match rest.split_once('=') {
                        Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                        None => (rest.to_owned(), None),
                    })
            else {
                continue;
            };
            if !matches!(name.as_str(), "state-dir" | "url" | "token-file") {
                continue;
            }
            let Some(value) = inline.or_else(|| words.next().map(|v| v.into_owned())) else {
                break;
            };
            match name.as_str() {
                "state-dir" => line.state_dir = Some(home(&value)),
                "url" => line.url = Some(value),
                _ => line.token_file = Some(home(&value)),
            }
        }
        line
    }
}

/// `~/x` as `$HOME/x`; anything else as it is.
fn home(word: &str) -> PathBuf {
    match (word.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => PathBuf::from(word),
    }
}

/// Every agent id of the daemon the line names (its state dir's socket, or
/// `--url` / `$CORRAL_URL` with its token file); `None` when none answers.
fn daemon_ids(line: &Line) -> Option<Vec<String>> {
    let from_env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let url = line
        .url
        .clone()
        .or_else(|| from_env("CORRAL_URL").map(|v| v.to_string_lossy().into_owned()));
    let client = match url {
        Some(url) => {
            let token_file = line
                .token_file
                .clone()
                .or_else(|| from_env("CORRAL_TOKEN_FILE").map(PathBuf::from));
            let (addr, token) = crate::connect::remote(&url, token_file.as_deref()).ok()?;
            Client::tcp(addr, token)
        }
        None => {
            let state_dir = crate::connect::state_dir(line.state_dir.as_deref()).ok()?;
            Client::new(state_dir.join(corral_api::daemon::SOCKET_NAME))
        }
    }
    .with_timeout(IDS_WITHIN);
    let query = corral_core::ListQuery {
        fields: Some("agent_id".to_owned()),
        ..corral_core::ListQuery::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let listed = runtime.block_on(client.list_agent_fields(&query)).ok()?;
    Some(listed.into_keys().collect())
}

/// What `corral completions SHELL` prints.
pub fn script(shell: clap_complete::Shell) -> std::io::Result<Vec<u8>> {
    use clap_complete::Shell;
    let mut out = Vec::new();
    match shell {
        Shell::Bash => out.extend_from_slice(BASH.as_bytes()),
        Shell::Zsh => out.extend_from_slice(ZSH.as_bytes()),
        Shell::Fish => out.extend_from_slice(FISH.as_bytes()),
        Shell::Elvish => {
            clap_complete::env::Elvish
                .write_registration(VAR, "corral", "corral", "corral", &mut out)?;
        }
        Shell::PowerShell => clap_complete::env::Powershell
            .write_registration(VAR, "corral", "corral", "corral", &mut out)?,
        _ => {
            return Err(std::io::Error::other(format!("no completion for {shell}")));
        }
    }
    Ok(out)
}

const BASH: &str = r#"# bash completion for corral.
# The completion code comes from the corral on $PATH when this file is loaded
# (CORRAL_COMPLETE=bash corral), so it always matches the installed version.
if _corral_completion=$(CORRAL_COMPLETE=bash command corral 2>/dev/null); then
    eval "$_corral_completion"
fi
unset _corral_completion
"#;

const ZSH: &str = r#"#compdef corral
# zsh completion for corral.
# The completion code comes from the corral on $PATH on first use
# (CORRAL_COMPLETE=zsh corral), so it always matches the installed version.
_corral() {
    local code
    code=$(CORRAL_COMPLETE=zsh command corral 2>/dev/null) || return 1
    eval "$code"
    local completer=${_comps[corral]-}
    [[ -n $completer && $completer != _corral ]] && "$completer" "$@"
}
if [[ ${funcstack[1]-} == _corral ]]; then
    _corral "$@"
else
    compdef _corral corral
fi
"#;

const FISH: &str = r#"# fish completion for corral.
# The completion code comes from the corral on $PATH when this file is loaded
# (CORRAL_COMPLETE=fish corral), so it always matches the installed version.
CORRAL_COMPLETE=fish command corral 2>/dev/null | source
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn line(words: &[&str]) -> Line {
        let args: Vec<OsString> = words.iter().map(OsString::from).collect();
        Line::parse(&args)
    }

    #[test]
    fn the_line_names_the_daemon() {
        assert_eq!(
            line(&["corral", "--", "corral", "stop", "w"]),
            Line::default()
        );
        assert_eq!(
            line(&["corral", "--", "corral", "stop", "--state-dir", "/s", "w"]).state_dir,
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            line(&[
                "corral",
                "--",
                "corral",
                "--state-dir=/a",
                "stop",
                "--state-dir=/b"
            ])
            .state_dir,
            Some(PathBuf::from("/b"))
        );
        let tcp = line(&[
            "corral",
            "--",
            "corral",
            "ps",
            "--url",
            "127.0.0.1:7",
            "--token-file",
            "/t",
        ]);
        assert_eq!(tcp.url.as_deref(), Some("127.0.0.1:7"));
        assert_eq!(tcp.token_file, Some(PathBuf::from("/t")));
        // The agent's own command line is not corral's.
        assert_eq!(
            line(&[
                "corral",
                "--",
                "corral",
                "spawn",
                "a",
                "--",
                "x",
                "--state-dir",
                "/s"
            ]),
            Line::default()
        );
        // A flag at the end, its value not typed yet.
        assert_eq!(
            line(&["corral", "--", "corral", "stop", "--state-dir"]),
            Line::default()
        );
    }
}
