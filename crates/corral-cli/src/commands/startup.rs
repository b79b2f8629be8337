//! `corral startup`: the systemd unit that brings a project's agents back
//! after a reboot, printed or installed.
//!
//! The unit, `corral-<project>.service`, is a oneshot that stays active once
//! it ran (`RemainAfterExit=yes`): starting it runs `corral up -f FILE`,
//! stopping it runs `corral down -f FILE`. Every path in it is absolute and
//! fixed when the unit is made — this corral binary, the project file, its
//! directory (the working directory) and the state dir — since at boot there
//! is no shell, no current directory and no `$CORRAL_STATE_DIR` to find them.
//!
//! - **System unit** (default): `WantedBy=multi-user.target`, and it talks to
//!   the daemon of `corral.service` (`contrib/corral.service`, state dir
//!   `/var/lib/corral`): `Wants=` and `After=` it, so that daemon has said it is
//!   ready before `up` runs, and `--no-autostart`, so no second daemon is ever
//!   started inside this unit. `Wants=`, not `Requires=`: restarting the daemon
//!   (an upgrade) must not stop and restart the project's agents.
//! - **User unit** (`--user`): `WantedBy=default.target` of the user's service
//!   manager; `up` starts a daemon for the state dir when none serves it, and
//!   `KillMode=process` lets that daemon (and agents of other projects it
//!   runs) outlive the unit: stopping it stops this project's agents only.
//!
//! The project's name (the file's top-level `name`, else its directory's
//! name) names the unit; it is read here with a small parse of its own, and
//! the file must parse as TOML. `--install` writes the unit to systemd's
//! directory and enables it when systemd is what runs this machine (PID 1);
//! elsewhere it says what to run.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::usage;
use crate::cli::{Before, StartupArgs};
use crate::connect;

/// The state dir of the system daemon (`contrib/corral.service`).
pub const SYSTEM_STATE_DIR: &str = "/var/lib/corral";
/// Where system units written by an administrator go.
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";
/// The system daemon's unit.
const DAEMON_UNIT: &str = "corral.service";

/// Prints the project's unit, or installs it (blocking: file writes and
/// `systemctl`; run it off the async workers).
pub fn run(before: &Before, args: StartupArgs) -> Result<ExitCode> {
    let file = project_file(args.file.as_deref())?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("read the project file {}", file.display()))?;
    let project = project_name(&file, &text)?;
    let explicit = args.state_dir.or_else(|| before.state_dir.clone());
    let state_dir = match explicit {
        Some(dir) => connect::state_dir(Some(&dir))?,
        None if args.user || env_set("CORRAL_STATE_DIR") => connect::state_dir(None)?,
        None => PathBuf::from(SYSTEM_STATE_DIR),
    };
    if !args.user && state_dir != Path::new(SYSTEM_STATE_DIR) {
        crate::say(&format!(
            "corral: note: this unit runs `corral up` against the daemon of {}; {DAEMON_UNIT} (contrib/corral.service) serves {SYSTEM_STATE_DIR}",
            state_dir.display()
        ));
    }
    let exe = std::env::current_exe().context("cannot find this corral executable")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        bail!(
            "this corral executable ({}) was removed or replaced while it ran; run the installed one",
            exe.display()
        );
    }
    let unit = Unit {
        name: unit_name(&project),
        project,
        exe,
        file,
        state_dir,
        user: args.user,
    };
    let text = unit.render()?;
    if !args.install {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    install(&unit, &text, args.unit_dir.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// Whether an environment variable is set and not empty.
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The project file as an absolute path, checked to be a file. `.` parts are
/// dropped; a path with `..` is resolved through the filesystem.
fn project_file(arg: Option<&Path>) -> Result<PathBuf> {
    let given = arg.unwrap_or(Path::new("corral.toml"));
    let abs = std::path::absolute(given)
        .with_context(|| format!("the project file {}", given.display()))?;
    let meta = std::fs::metadata(&abs).with_context(|| {
        format!(
            "cannot read the project file {} (give it with -f FILE)",
            abs.display()
        )
    })?;
    if !meta.is_file() {
        bail!("the project file {} is not a file", abs.display());
    }
    if abs.components().any(|c| c == Component::ParentDir) {
        return std::fs::canonicalize(&abs)
            .with_context(|| format!("resolve the project file {}", abs.display()));
    }
    Ok(abs.components().collect())
}

/// The project's name: the file's top-level `name`, else the name of its
/// directory (as `corral up` names it).
fn project_name(file: &Path, text: &str) -> Result<String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, col)
        });
        usage(format!(
            "{}:{line}:{col}: {}",
            file.display(),
            e.message().trim()
        ))
    })?;
    match table.get("name") {
        Some(toml::Value::String(name)) if !name.trim().is_empty() => Ok(name.clone()),
        Some(_) => Err(usage(format!(
            "{}: name must be a non-empty string",
            file.display()
        ))),
        None => Ok(file
            .parent()
            .and_then(Path::file_name)
            .map_or("project".into(), |n| n.to_string_lossy().into_owned())),
    }
}

/// `corral-<project>.service`, with every character a unit name cannot hold
/// (or a shell would trip over) as `-`.
fn unit_name(project: &str) -> String {
    let mut name: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    // systemd's limit is 255 bytes for the whole name.
    name.truncate(200);
    if name.trim_matches(['-', '.']).is_empty() {
        name = "project".into();
    }
    format!("corral-{name}.service")
}

/// What goes into the unit.
struct Unit {
    name: String,
    project: String,
    exe: PathBuf,
    file: PathBuf,
    state_dir: PathBuf,
    user: bool,
}

impl Unit {
    /// `corral-team` of `corral-team.service`.
    fn stem(&self) -> &str {
        self.name.trim_end_matches(".service")
    }

    fn systemctl(&self) -> &'static str {
        if self.user {
            "systemctl --user"
        } else {
            "systemctl"
        }
    }

    /// `corral <command> -f FILE --state-dir DIR [--no-autostart]` as an
    /// `Exec*=` line.
    fn exec(&self, command: &str) -> Result<String> {
        let mut argv = vec![
            exec_arg(&self.exe)?,
            command.to_owned(),
            "-f".to_owned(),
            exec_arg(&self.file)?,
            "--state-dir".to_owned(),
            exec_arg(&self.state_dir)?,
        ];
        if !self.user {
            argv.push("--no-autostart".to_owned());
        }
        Ok(argv.join(" "))
    }

    fn render(&self) -> Result<String> {
        let dir = self.file.parent().unwrap_or(Path::new("/"));
        let file = text_of(&self.file)?;
        let stem = self.stem();
        let systemctl = self.systemctl();
        let mut out = format!(
            "# {name}: brings the agents of the corral project {project:?}\n\
             # ({file}) back at boot. Made by `corral startup{user}`;\n\
             # `corral startup -f FILE{user} --install` installs and enables it.\n\
             # Starting it runs `corral up`, stopping it `corral down`\n\
             # (`{systemctl} stop {stem}` stops the project's agents).\n",
            name = self.name,
            project = one_line(&self.project),
            user = if self.user { " --user" } else { "" },
        );
        if self.user {
            out.push_str(
                "# A unit of your user's service manager: it starts at your login, or at\n\
                 # boot once `loginctl enable-linger` lets your services run without one.\n\
                 # `corral up` starts a daemon for the state dir when none serves it; that\n\
                 # daemon and its other agents outlive this unit (KillMode=process).\n",
            );
        } else {
            out.push_str(
                "# It needs the corral daemon's unit, corral.service (contrib/corral.service),\n\
                 # and starts it first; restarting that daemon leaves the agents running.\n",
            );
        }
        out.push_str("[Unit]\n");
        out.push_str(&format!(
            "Description=corral project {} ({})\n",
            specifiers(&one_line(&self.project)),
            specifiers(&file)
        ));
        out.push_str("Documentation=man:corral(1)\n");
        if !self.user {
            out.push_str(&format!("Wants={DAEMON_UNIT}\nAfter={DAEMON_UNIT}\n"));
        }
        out.push_str("\n[Service]\nType=oneshot\nRemainAfterExit=yes\n");
        out.push_str(&format!(
            "WorkingDirectory={}\n",
            specifiers(&text_of(dir)?)
        ));
        out.push_str(&format!("ExecStart={}\n", self.exec("up")?));
        out.push_str(&format!("ExecStop={}\n", self.exec("down")?));
        if self.user {
            out.push_str("KillMode=process\n");
        }
        out.push_str(&format!(
            "\n[Install]\nWantedBy={}\n",
            if self.user {
                "default.target"
            } else {
                "multi-user.target"
            }
        ));
        Ok(out)
    }
}

/// A path as unit-file text: UTF-8, on one line.
fn text_of(path: &Path) -> Result<String> {
    let Some(text) = path.to_str() else {
        bail!(
            "{} is not UTF-8, which a systemd unit cannot name",
            path.display()
        );
    };
    if text.chars().any(char::is_control) {
        bail!("{text:?} holds a control character, which a systemd unit cannot name");
    }
    Ok(text.to_owned())
}

/// `%` written so that systemd does not read it as a specifier.
fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// Control characters (a newline would end the line) as spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One word of an `Exec*=` command line: `%` and `$` escaped (specifiers and
/// variable expansion), and double-quoted unless it is plain.
fn exec_arg(path: &Path) -> Result<String> {
    let word = specifiers(&text_of(path)?).replace('$', "$$");
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.,:+=@%$-".contains(c));
    Ok(if plain {
        word
    } else {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    })
}

/// Writes the unit and enables it (or says how).
fn install(unit: &Unit, text: &str, unit_dir: Option<&Path>) -> Result<()> {
    let dir = match unit_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            dir.to_owned()
        }
        None if unit.user => {
            let dir = user_unit_dir()?;
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            dir
        }
        None => {
            let dir = PathBuf::from(SYSTEM_UNIT_DIR);
            if !dir.is_dir() {
                bail!(
                    "there is no {SYSTEM_UNIT_DIR} here: is systemd installed? (`corral startup` prints the unit)"
                );
            }
            dir
        }
    };
    let path = dir.join(&unit.name);
    let done = match std::fs::read_to_string(&path) {
        Ok(old) if old == text => "unchanged",
        old => {
            write_unit(&path, text).with_context(|| {
                let hint = if unit.user || unit_dir.is_some() {
                    ""
                } else {
                    " (a system unit needs root: run it with sudo, or make a unit of your own with --user)"
                };
                format!("write {}{hint}", path.display())
            })?;
            if old.is_ok() { "replaced" } else { "installed" }
        }
    };
    println!("{done} {}", path.display());
    if !unit.user && !daemon_unit_installed(&dir) {
        crate::say(&format!(
            "corral: note: no {DAEMON_UNIT} is installed; this unit wants it (see contrib/corral.service)"
        ));
    }
    let systemctl = unit.systemctl();
    let name = &unit.name;
    let by_hand = format!("{systemctl} daemon-reload && {systemctl} enable {name}");
    if unit_dir.is_none() && systemd_runs() && on_path("systemctl") {
        let mut reload = systemctl_command(unit.user);
        run_systemctl(reload.arg("daemon-reload"), &by_hand)?;
        let mut enable = systemctl_command(unit.user);
        run_systemctl(enable.args(["enable", name]), &by_hand)?;
        println!("enabled: {name} starts at boot; start it now with `{systemctl} start {name}`");
    } else {
        println!("to start it at boot: {by_hand}   (--now also starts it)");
    }
    if unit.user {
        println!(
            "a --user unit starts at your login; to start it at boot without one: loginctl enable-linger {}",
            std::env::var("USER").unwrap_or_else(|_| "$USER".into())
        );
    }
    Ok(())
}

/// `~/.config/systemd/user` (or under `$XDG_CONFIG_HOME`).
fn user_unit_dir() -> Result<PathBuf> {
    let from_env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let config = match (from_env("XDG_CONFIG_HOME"), from_env("HOME")) {
        (Some(dir), _) => dir,
        (None, Some(home)) => home.join(".config"),
        (None, None) => bail!("cannot find your systemd user unit dir: set HOME"),
    };
    Ok(config.join("systemd/user"))
}

/// Writes `text` to `path` through a temporary file in the same directory,
/// so that systemd never reads half a unit.
fn write_unit(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".corral-startup-")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Whether `corral.service` is installed where systemd looks for it.
fn daemon_unit_installed(dir: &Path) -> bool {
    [
        dir,
        Path::new(SYSTEM_UNIT_DIR),
        Path::new("/usr/local/lib/systemd/system"),
        Path::new("/usr/lib/systemd/system"),
        Path::new("/lib/systemd/system"),
    ]
    .iter()
    .any(|d| d.join(DAEMON_UNIT).exists())
}

/// Whether systemd is what runs this machine (`sd_booted`'s test).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether a program is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn systemctl_command(user: bool) -> std::process::Command {
    let mut cmd = std::process::Command::new("systemctl");
    if user {
        cmd.arg("--user");
    }
    cmd
}

/// Runs a `systemctl` command; on failure says what to run by hand (the
/// unit is written by then).
fn run_systemctl(cmd: &mut std::process::Command, by_hand: &str) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => {
            bail!("{shown} failed ({status}); the unit is installed: run `{by_hand}` by hand")
        }
        Err(e) => bail!("cannot run {shown}: {e}; the unit is installed: run `{by_hand}` by hand"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn unit_names_keep_what_systemd_and_shells_take() {
        assert_eq!(unit_name("team"), "corral-team.service");
        assert_eq!(unit_name("my team/a b"), "corral-my-team-a-b.service");
        assert_eq!(unit_name("web_2.0-x"), "corral-web_2.0-x.service");
        assert_eq!(unit_name("///"), "corral-project.service");
        assert!(unit_name(&"x".repeat(400)).len() < 255);
    }

    #[test]
    fn exec_words_are_quoted_and_escaped_for_systemd() {
        let w = |s: &str| exec_arg(Path::new(s)).unwrap();
        assert_eq!(w("/usr/local/bin/corral"), "/usr/local/bin/corral");
        assert_eq!(w("/srv/a b/corral.toml"), "\"/srv/a b/corral.toml\"");
        assert_eq!(w("/srv/100%/x"), "/srv/100%%/x");
        assert_eq!(w("/srv/$HOME/x"), "/srv/$$HOME/x");
        assert_eq!(w("/srv/a\"b\\c"), "\"/srv/a\\\"b\\\\c\"");
        assert!(exec_arg(Path::new("/srv/a\nb")).is_err());
    }

    #[test]
    fn the_name_is_the_files_or_its_directorys() {
        let file = Path::new("/srv/team/corral.toml");
        assert_eq!(project_name(file, "name = \"web\"\n").unwrap(), "web");
        assert_eq!(project_name(file, "[agents.a]\n").unwrap(), "team");
        let e = project_name(file, "name = 3\n").unwrap_err();
        assert!(e.to_string().contains("name must be"), "{e}");
        let e = project_name(file, "[agents\n").unwrap_err();
        assert!(e.to_string().starts_with("/srv/team/corral.toml:1:"), "{e}");
    }
}
