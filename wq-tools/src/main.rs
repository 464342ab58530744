//! `wq`: the wq_dump and wq_monitor views of a running cmwq process.

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use wq_tools::cli::{parse, run, USAGE};
use wq_tools::ToolError;

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let result = args
        .map_err(|bad| ToolError::Usage(format!("arguments must be UTF-8, not {bad:?}")))
        .and_then(|args| parse(&args))
        .and_then(|cmd| run(&cmd, &mut io::stdout().lock(), io::stdout().is_terminal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wq: {err}");
            if matches!(err, ToolError::Usage(_)) {
                eprintln!("{USAGE}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}
