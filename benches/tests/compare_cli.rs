//! The `compare` program end to end: arguments, table output and exit status.

use std::process::Command;

fn compare(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_compare")).args(args).output().expect("running compare")
}

#[test]
fn unknown_scenario_is_rejected_with_status_2() {
    let out = compare(&["nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario `nope`"));
}

#[test]
fn bad_rounds_are_rejected() {
    assert_eq!(compare(&["--rounds", "0"]).status.code(), Some(2));
    assert_eq!(compare(&["--rounds", "x"]).status.code(), Some(2));
    assert_eq!(compare(&["--rounds"]).status.code(), Some(2));
}

#[test]
fn help_prints_usage() {
    let out = compare(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: compare"));
}

#[test]
fn timeline_prints_a_table_row_per_peer_and_succeeds() {
    let out = compare(&["--rounds", "1", "timeline"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("### Seed timeline on one CPU"));
    assert!(stdout.contains("| wq-core submit (bound), cpus([0])"));
    assert!(stdout.contains("| 1-thread pool on CPU 0"));
    assert_eq!(stdout.matches("3/3").count(), 2, "{stdout}");
}
