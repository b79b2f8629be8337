//! `corral ui`: a one-time login to the web dashboard, printed and opened.
//!
//! The daemon mints the login (`POST /v1/ui/login`) and, when it serves no
//! TCP, starts a loopback listener for the page. Through `--url` the login is
//! minted on that daemon and the URL is written with the address given there,
//! so it works from the machine that ran the command. A browser is opened
//! only where one can show (`$BROWSER`, else `xdg-open` with a display) and
//! not with `--no-open`; the URL is printed either way. The browser is given
//! a private file (0600, created anew) that redirects to the URL, never the
//! URL itself: a command line is readable by every local user, and the login
//! code must not be.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Ctx;

pub async fn run(ctx: &Ctx, no_open: bool) -> Result<ExitCode> {
    let client = ctx.client().await?;
    let login = client
        .ui_login()
        .await
        .context("cannot get a dashboard login from the daemon")?;
    let url = match &ctx.remote {
        Some((addr, _)) => format!("http://{addr}{}", login.path),
        None => login.url,
    };
    println!("{url}");
    eprintln!(
        "(a one-time login: open it within {} s; it becomes a cookie of that browser)",
        login.expires_s
    );
    if !no_open {
        let url2 = url.clone();
        tokio::task::spawn_blocking(move || open_browser(&url2))
            .await
            .context("opening a browser")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `$BROWSER URL`, else `xdg-open URL` where a display exists; says on stderr
/// when none could be opened (the URL is printed already).
fn open_browser(url: &str) {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let program = match var("BROWSER") {
        Some(b) => b,
        None if var("DISPLAY").is_some() || var("WAYLAND_DISPLAY").is_some() => "xdg-open".into(),
        None => {
            eprintln!("(no display here: open the URL in a browser)");
            return;
        }
    };
    let page = match redirect_file(url) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "(cannot write the page that opens the login: {e}; open the URL in a browser)"
            );
            return;
        }
    };
    let spawned = Command::new(&program)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "(cannot start {}: {e}; open the URL in a browser)",
                program.to_string_lossy()
            );
            return;
        }
    };
    // Openers hand the URL to a browser and exit; one that stays (a browser
    // itself as $BROWSER) is left running on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A new file, readable by this user alone, whose page sends the browser to
/// `url` (in `$XDG_RUNTIME_DIR`, else the temp dir).
fn redirect_file(url: &str) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("corral-ui-{}-{stamp}.html", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        // Exclusive creation never follows a planted symlink.
        .mode(0o600)
        .open(&path)?;
    // The URL is the daemon's: an address and a hex code, nothing to escape.
    writeln!(
        f,
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={url}\">\
         <title>corral</title><p><a href=\"{url}\">Open the corral dashboard</a></p>"
    )?;
    Ok(path)
}
