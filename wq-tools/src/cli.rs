//! The `wq` command line: parsing and running the subcommands.

use std::io::{self, Write};
use std::thread;
use std::time::Duration;

use crate::target::{list_all, published_by, ToolError};
use crate::view::{render_dump, render_list, render_monitor, Sample};

/// The help text.
pub const USAGE: &str = "\
usage: wq list                                 processes of yours with published wq runtimes
       wq dump PID                             the wq_dump view of process PID
       wq monitor PID [INTERVAL] [--count N]   the wq_monitor view, refreshed every INTERVAL
                                               seconds (default 1) until Ctrl-C, or N times";

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `wq list`.
    List,
    /// `wq dump PID`.
    Dump {
        /// The process.
        pid: u32,
    },
    /// `wq monitor PID [INTERVAL] [--count N]`.
    Monitor {
        /// The process.
        pid: u32,
        /// Time between refreshes.
        interval: Duration,
        /// Stop after this many refreshes (`None`: until interrupted).
        count: Option<u64>,
    },
    /// `wq help`, `-h`, `--help`.
    Help,
}

fn usage(msg: impl Into<String>) -> ToolError {
    ToolError::Usage(msg.into())
}

fn parse_pid(arg: Option<&String>) -> Result<u32, ToolError> {
    let arg = arg.ok_or_else(|| usage("missing PID"))?;
    match arg.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(usage(format!("PID must be a process id (a positive number), not {arg:?}"))),
    }
}

/// Parses the arguments after the program name.
///
/// # Errors
/// [`ToolError::Usage`] saying what is wrong.
pub fn parse(args: &[String]) -> Result<Command, ToolError> {
    let (sub, rest) = args.split_first().ok_or_else(|| usage("missing command"))?;
    let extra = |rest: &[String]| match rest.first() {
        Some(arg) => Err(usage(format!("unexpected argument {arg:?}"))),
        None => Ok(()),
    };
    match sub.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "list" => extra(rest).map(|()| Command::List),
        "dump" => {
            let pid = parse_pid(rest.first())?;
            extra(&rest[1..]).map(|()| Command::Dump { pid })
        }
        "monitor" => {
            let pid = parse_pid(rest.first())?;
            let (mut interval, mut count) = (None, None);
            let mut args = rest[1..].iter();
            while let Some(arg) = args.next() {
                if let Some(n) = arg.strip_prefix("--count=").or_else(|| (arg == "--count").then_some("")) {
                    let n = if n.is_empty() { args.next().ok_or_else(|| usage("--count needs a number"))? } else { n };
                    count =
                        Some(n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                            usage(format!("--count must be a positive number of refreshes, not {n:?}"))
                        })?);
                } else if interval.is_none() && !arg.starts_with('-') {
                    interval = Some(parse_interval(arg)?);
                } else {
                    return Err(usage(format!("unexpected argument {arg:?}")));
                }
            }
            Ok(Command::Monitor { pid, interval: interval.unwrap_or(Duration::from_secs(1)), count })
        }
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

/// Seconds, at least the publishing period (0.1 s) and at most an hour.
fn parse_interval(arg: &str) -> Result<Duration, ToolError> {
    match arg.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(usage(format!("INTERVAL must be a number of seconds from 0.1 to 3600, not {arg:?}"))),
    }
}

/// Runs `cmd`, printing to `out`; `clear_screen` makes `monitor` redraw in
/// place (for a terminal) instead of printing one table after another.
///
/// # Errors
/// What [`published_by`] reports, or a failure to write to `out` (a closed
/// pipe ends the output quietly instead).
pub fn run(cmd: &Command, out: &mut dyn Write, clear_screen: bool) -> Result<(), ToolError> {
    let result = match cmd {
        Command::Help => writeln!(out, "{USAGE}").map_err(Into::into),
        Command::List => list(out),
        Command::Dump { pid } => {
            let (info, runtimes) = published_by(*pid)?;
            write!(out, "{}", render_dump(*pid, &info.name, &runtimes)).map_err(Into::into)
        }
        Command::Monitor { pid, interval, count } => monitor(out, *pid, *interval, *count, clear_screen),
    };
    match result {
        Err(Failure::Io(err)) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(Failure::Io(err)) => Err(ToolError::Io { what: "standard output".into(), source: err }),
        Err(Failure::Tool(err)) => Err(err),
        Ok(()) => Ok(()),
    }
}

/// A subcommand's failure: a tool error, or writing the output failed.
enum Failure {
    Tool(ToolError),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Failure {
        Failure::Io(err)
    }
}

impl From<ToolError> for Failure {
    fn from(err: ToolError) -> Failure {
        Failure::Tool(err)
    }
}

fn list(out: &mut dyn Write) -> Result<(), Failure> {
    let listing = list_all()?;
    for path in &listing.removed {
        eprintln!("wq: removed {} (its process exited)", path.display());
    }
    for why in &listing.skipped {
        eprintln!("wq: skipped: {why}");
    }
    if listing.runtimes.is_empty() {
        let dirs: Vec<String> = wq_core::PublishedFile::dirs().iter().map(|d| d.display().to_string()).collect();
        writeln!(out, "no published wq runtimes of yours (looked in {})", dirs.join(", "))?;
        return Ok(());
    }
    let rows: Vec<(String, _)> = listing
        .runtimes
        .iter()
        .map(|p| {
            // A runtime of another pid namespace: its pid here, if taken at
            // all, is some other process's, whose name would mislead.
            let here = p.snapshot.is_from_live_process();
            let info = here.then(|| crate::procfs::ProcessInfo::of(p.snapshot.pid).ok().flatten()).flatten();
            (info.map_or("?".into(), |i| i.name), p)
        })
        .collect();
    write!(out, "{}", render_list(&rows))?;
    Ok(())
}

fn monitor(
    out: &mut dyn Write,
    pid: u32,
    interval: Duration,
    count: Option<u64>,
    clear_screen: bool,
) -> Result<(), Failure> {
    let mut prev: Option<Sample> = None;
    let mut frames = 0u64;
    loop {
        let (info, runtimes) = match published_by(pid) {
            Ok(found) => found,
            // Gone after we saw it: the process exited or dropped its runtimes.
            Err(ToolError::NoSuchProcess { .. } | ToolError::NotPublished { .. }) if frames > 0 => {
                writeln!(out, "wq: process {pid} exited or no longer publishes a wq runtime")?;
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        let sample = Sample { runtimes: runtimes.into_iter().map(|p| p.snapshot).collect() };
        if clear_screen {
            // Cursor home, clear screen: redraw in place like top.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if frames > 0 {
            writeln!(out)?;
        }
        write!(out, "{}", render_monitor(pid, &info.name, prev.as_ref(), &sample))?;
        out.flush()?;
        frames += 1;
        if count.is_some_and(|n| frames >= n) {
            return Ok(());
        }
        prev = Some(sample);
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse(&args("list")).unwrap(), Command::List);
        assert_eq!(parse(&args("dump 42")).unwrap(), Command::Dump { pid: 42 });
        assert_eq!(
            parse(&args("monitor 42")).unwrap(),
            Command::Monitor { pid: 42, interval: Duration::from_secs(1), count: None }
        );
        assert_eq!(
            parse(&args("monitor 42 0.5 --count 3")).unwrap(),
            Command::Monitor { pid: 42, interval: Duration::from_millis(500), count: Some(3) }
        );
        assert_eq!(
            parse(&args("monitor 42 --count=1 2")).unwrap(),
            Command::Monitor { pid: 42, interval: Duration::from_secs(2), count: Some(1) }
        );
        assert_eq!(parse(&args("--help")).unwrap(), Command::Help);
    }

    #[test]
    fn rejects_bad_command_lines() {
        for (line, says) in [
            ("", "missing command"),
            ("frobnicate", "unknown command"),
            ("dump", "missing PID"),
            ("dump abc", "not \"abc\""),
            ("dump 0", "positive"),
            ("dump 1 2", "unexpected argument \"2\""),
            ("list x", "unexpected"),
            ("monitor 1 0", "0.1 to 3600"),
            ("monitor 1 nan", "0.1 to 3600"),
            ("monitor 1 1 2", "unexpected argument \"2\""),
            ("monitor 1 --count", "needs a number"),
            ("monitor 1 --count 0", "positive number of refreshes"),
            ("monitor 1 --frob", "unexpected argument"),
        ] {
            match parse(&args(line)) {
                Err(ToolError::Usage(msg)) => assert!(msg.contains(says), "{line:?}: {msg}"),
                other => panic!("{line:?}: expected a usage error, got {other:?}"),
            }
        }
    }
}
