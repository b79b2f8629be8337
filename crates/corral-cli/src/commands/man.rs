//! `corral man`: the manual in roff, one page per command: corral(1), and
//! corral-spawn(1), corral-daemon-stop(1), … for every command under it.
//!
//! clap_mangen renders each page's synopsis, options and list of commands
//! from the grammar; the NAME line, the top page's description and exit
//! status, and SEE ALSO are written here. Every character outside ASCII is
//! written as a groff escape (`\[u2014]`), so a page reads the same through
//! `groff -man` as through man(1).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Command;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::cli::{Cli, ManArgs};

/// The manual section of every page: user commands.
const SECTION: &str = "1";

/// The top page's DESCRIPTION: what corral is, beyond the one line of NAME.
const DESCRIPTION: &[&str] = &[
    "corral supervises long-running worker processes, called agents: it starts \
     each one and proves that it started, reports its health, CPU, memory, runtime \
     and progress, restarts it by policy, and stops its whole process tree in \
     stages (SIGTERM, SIGTERM, SIGKILL). Every run is kept in a SQLite record that \
     survives a crash of corral itself.",
    "One daemon serves each state dir; the first command that needs a daemon \
     starts one (unless --no-autostart). Agents do not depend on the daemon: when \
     it stops they keep running, and the next daemon takes them over again.",
    "Each command has its own page, listed under COMMANDS below: corral-spawn(1), \
     corral-ps(1) and so on. `corral COMMAND --help` says the same in brief.",
];

/// The top page's EXIT STATUS.
const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "Failure: the agent failed or is not healthy, a timeout, a daemon that cannot \
         be reached or started, any other error.",
    ),
    (
        "2",
        "Usage: bad arguments, an invalid id or selector, a request the daemon refused \
         as invalid.",
    ),
    ("3", "Another daemon already owns the state dir."),
    ("4", "No such agent."),
];

/// The commands whose exit status says more, on the top page after EXIT_STATUS.
const OWN_RULES: &[(&str, &str)] = &[
    (
        "corral health",
        "0 healthy, 1 not healthy, 4 no such agent.",
    ),
    (
        "corral wait",
        "The agent's exit code (1 if it ended without one, for example by a signal); \
         with a subtree, 0 when every agent completed, else 1; 1 on --timeout.",
    ),
    (
        "corral spawn",
        "0 when the agent runs, or completed with 0, after its verification window; 1 otherwise.",
    ),
    (
        "corral stop, corral kill",
        "1 when an agent survived SIGKILL (reported as unkillable).",
    ),
];

pub fn run(args: &ManArgs) -> Result<ExitCode> {
    let root = tree();
    if let Some(dir) = &args.dir {
        let mut out = std::io::stdout().lock();
        for path in write_pages(&root, dir)? {
            writeln!(out, "{}", path.display())?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let (cmd, parents) = find(&root, &args.command)?;
    let page = render(cmd, &parents)?;
    let mut out = std::io::stdout().lock();
    out.write_all(page.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The whole command tree, built (so each command knows its page name,
/// `corral-daemon-stop`), without clap's `help` command.
fn tree() -> Command {
    let mut cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// A command's page name: `corral`, `corral-spawn`, `corral-daemon-stop`.
fn page_name(cmd: &Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

/// The visible commands directly under `cmd`.
fn visible(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|c| !c.is_hide_set())
}

/// The command that `words` name under `root` (`daemon stop`), and the
/// commands above it, outermost first.
fn find<'a>(root: &'a Command, words: &[String]) -> Result<(&'a Command, Vec<&'a Command>)> {
    let mut cmd = root;
    let mut parents = Vec::new();
    for word in words {
        let Some(sub) = visible(cmd).find(|c| c.get_name() == word) else {
            let known: Vec<&str> = visible(cmd).map(Command::get_name).collect();
            return Err(super::usage(format!(
                "`{}` has no command {word:?}; it has {}",
                cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()),
                known.join(", ")
            )));
        };
        parents.push(cmd);
        cmd = sub;
    }
    Ok((cmd, parents))
}

/// Every page: the command, the commands above it; parents before children.
fn pages(root: &Command) -> Vec<(&Command, Vec<&Command>)> {
    fn walk<'a>(
        cmd: &'a Command,
        parents: Vec<&'a Command>,
        out: &mut Vec<(&'a Command, Vec<&'a Command>)>,
    ) {
        let mut below = parents.clone();
        below.push(cmd);
        out.push((cmd, parents));
        for sub in visible(cmd) {
            walk(sub, below.clone(), out);
        }
    }
    let mut out = Vec::new();
    walk(root, Vec::new(), &mut out);
    out
}

/// Writes every page into `dir` (made when missing) as `NAME.1`; the paths written.
fn write_pages(root: &Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = Vec::new();
    for (cmd, parents) in pages(root) {
        let path = dir.join(format!("{}.{SECTION}", page_name(cmd)));
        let page = render(cmd, &parents)?;
        std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The line of NAME after the dash: the command's about, without a leading
/// `corral: ` that would repeat the name just before it.
fn summary(cmd: &Command) -> String {
    let about = cmd
        .get_about()
        .or_else(|| cmd.get_long_about())
        .map(ToString::to_string)
        .unwrap_or_default();
    let about = about.lines().next().unwrap_or_default().trim();
    about
        .strip_prefix(cmd.get_name())
        .and_then(|rest| rest.strip_prefix(':'))
        .map_or(about, str::trim_start)
        .to_owned()
}

/// One page in roff.
fn render(cmd: &Command, parents: &[&Command]) -> Result<String> {
    let name = page_name(cmd);
    // A page lists COMMANDS, as `--help` does, and its synopsis ends in <command>.
    let named = cmd
        .clone()
        .subcommand_help_heading("COMMANDS")
        .subcommand_value_name("command");
    let man = Man::new(named)
        .title(name.to_uppercase())
        .section(SECTION)
        .source(format!("corral {}", env!("CARGO_PKG_VERSION")));
    // Each of clap_mangen's sections comes with roff's preamble (the
    // definition of an apostrophe): the page keeps the first one only.
    let preamble = Roff::new().render();
    let mut page = String::new();
    let mut section = |render: &dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        render(&mut buf)?;
        let text = String::from_utf8(buf).context("clap_mangen wrote something not UTF-8")?;
        let text = match text.strip_prefix(&preamble) {
            Some(rest) if !page.is_empty() => rest.to_owned(),
            _ => text,
        };
        page.push_str(&text);
        anyhow::Ok(())
    };

    section(&|w| man.render_title(w))?;
    let mut own = Roff::new();
    own.control("SH", ["NAME"]);
    own.text([roman(format!("{name} - {}", summary(cmd)))]);
    section(&|w| w.write_all(own.to_roff().as_bytes()))?;
    section(&|w| man.render_synopsis_section(w))?;
    if parents.is_empty() {
        let mut own = Roff::new();
        own.control("SH", ["DESCRIPTION"]);
        for (i, paragraph) in DESCRIPTION.iter().enumerate() {
            if i > 0 {
                own.control("PP", []);
            }
            own.text([roman(*paragraph)]);
        }
        section(&|w| w.write_all(own.to_roff().as_bytes()))?;
    } else {
        section(&|w| man.render_description_section(w))?;
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        section(&|w| man.render_options_section(w))?;
    }
    if visible(cmd).next().is_some() {
        section(&|w| man.render_subcommands_section(w))?;
    }
    let mut own = Roff::new();
    if parents.is_empty() {
        own.control("SH", ["EXIT STATUS"]);
        for (code, meaning) in EXIT_STATUS {
            own.control("TP", []);
            own.text([bold(*code)]);
            own.text([roman(*meaning)]);
        }
        own.control("PP", []);
        own.text([roman("Commands with their own rule:")]);
        for (command, rule) in OWN_RULES {
            own.control("TP", []);
            own.text([bold(*command)]);
            own.text([roman(*rule)]);
        }
    } else {
        own.control("SH", ["SEE ALSO"]);
        let mut refs = Vec::new();
        for (i, parent) in parents.iter().enumerate() {
            if i > 0 {
                refs.push(roman(", "));
            }
            refs.push(bold(page_name(parent)));
            refs.push(roman(format!("({SECTION})")));
        }
        own.text(refs);
    }
    section(&|w| w.write_all(own.to_roff().as_bytes()))?;
    Ok(ascii(&page))
}

/// `text` with every character outside ASCII as a groff escape (`—` is
/// `\[u2014]`), which groff and mandoc read without being told the encoding.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_becomes_groff_escapes() {
        assert_eq!(ascii("a — b…"), "a \\[u2014] b\\[u2026]");
        assert_eq!(ascii("plain"), "plain");
    }

    #[test]
    fn the_name_line_does_not_repeat_the_name() {
        let root = tree();
        assert_eq!(
            summary(&root),
            "spawn, watch and stop many long-running agents, and keep their record"
        );
        let (spawn, parents) = find(&root, &["spawn".to_owned()]).expect("spawn");
        assert_eq!(parents.len(), 1);
        assert!(
            summary(spawn).starts_with("Start an agent"),
            "{}",
            summary(spawn)
        );
    }

    #[test]
    fn every_visible_command_has_a_page_named_after_its_path() {
        let root = tree();
        let names: Vec<&str> = pages(&root).iter().map(|(c, _)| page_name(c)).collect();
        for want in [
            "corral",
            "corral-spawn",
            "corral-daemon",
            "corral-daemon-stop",
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.ends_with("-help")), "{names:?}");
        let (stop, parents) =
            find(&root, &["daemon".to_owned(), "stop".to_owned()]).expect("daemon stop");
        let page = render(stop, &parents).expect("page");
        assert!(
            page.contains(".SH \"SEE ALSO\"\n\\fBcorral\\fR(1), \\fBcorral\\-daemon\\fR(1)"),
            "{page}"
        );
        assert!(find(&root, &["nope".to_owned()]).is_err());
    }
}
