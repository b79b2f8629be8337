//! The `corral` binary: daemon, CLI and demo. Parses arguments and hands off;
//! errors are printed as one `error: …` line with a non-zero exit.

mod cli;
mod commands;
mod complete;
mod connect;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `CORRAL_COMPLETE=bash corral …` is the shell asking for completions.
    complete::answer_if_asked();
    // A client command whose reader goes away (`corral ps | head -1`,
    // `corral completions bash | head`) ends by SIGPIPE, quietly, like any
    // Unix tool. What serves others — the daemon, the demo and bench with
    // their in-process daemons, the dashboard, the MCP server — keeps it
    // ignored and handles a closed peer as an error of that one connection.
    let serves = std::env::args_os().nth(1).is_some_and(|a| {
        matches!(
            a.to_str(),
            Some("daemon" | "demo" | "bench" | "top" | "mcp")
        )
    });
    if !serves {
        corral_core::process::default_sigpipe();
    }
    let cli = cli::Cli::parse();
    let runtime = if cli.command.needs_threads() {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            say_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            say_error(&one_line(&e));
            ExitCode::from(commands::exit_code(&e))
        }
    }
}

/// One line on stderr; a stderr that cannot be written (closed, a full disk)
/// is not a reason to panic.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `error: …` on stderr.
pub fn say_error(message: &str) {
    say(&format!("error: {message}"));
}

/// The error and its causes on one line (causes already quoted are not repeated).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " | ")
}
