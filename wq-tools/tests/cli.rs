//! End to end: `wq` reads a live `wq-demo` child process.
//!
//! Each test gives its processes a private `XDG_RUNTIME_DIR`, so the files
//! they publish and read are isolated from each other and from the machine.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wq-tools-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `wq-demo`; closing its stdin (on drop) makes it exit.
struct Demo {
    child: Child,
    pid: u32,
}

impl Demo {
    fn spawn(xdg: &Path, args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wq-demo"))
            .args(args)
            .env("XDG_RUNTIME_DIR", xdg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn wq-demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("wq-demo did not get ready");
        let pid: u32 = line.strip_prefix("ready ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("wq-demo said {line:?}, not \"ready <pid>\"")
        });
        assert_eq!(pid, child.id());
        Demo { child, pid }
    }

    /// Closes stdin and waits for a clean exit.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "wq-demo exited with {status}");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Runs the tool with both of its directories private to the test
/// (`XDG_RUNTIME_DIR`, and `TMPDIR` for the fallback): wq processes
/// running meanwhile on the machine stay out of its listing.
fn wq(xdg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wq"))
        .args(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .env("TMPDIR", xdg)
        .output()
        .expect("run wq")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "wq failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The whitespace-separated cells of the table row of `queue`.
fn rows<'a>(table: &'a str, queue: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&queue))
        .collect()
}

#[test]
fn dump_and_monitor_read_a_live_process() {
    let xdg = TestDir::new("live");
    let demo = Demo::spawn(&xdg.0, &["--items", "7", "alpha-q", "beta-q"]);
    let pid = demo.pid.to_string();

    let dump = stdout(&wq(&xdg.0, &["dump", &pid]));
    assert!(dump.starts_with(&format!("== pid {pid} (wq-demo), runtime 1,")), "{dump}");
    assert!(dump.contains("Worker Pools") && dump.contains("Workqueue CPU -> pool"), "{dump}");
    assert!(
        dump.lines().any(|l| l.starts_with("alpha-q ")) && dump.lines().any(|l| l.starts_with("beta-q ")),
        "{dump}"
    );

    let table = stdout(&wq(&xdg.0, &["monitor", &pid, "--count", "1"]));
    assert!(table.contains("total") && table.contains("CPUhog") && table.contains("rescued"), "{table}");
    for queue in ["alpha-q", "beta-q"] {
        let row = rows(&table, queue);
        assert_eq!(row.len(), 1, "{table}");
        assert_eq!((row[0][1], row[0][2], row[0][3]), ("7", "-", "0"), "total, +total, infl of {queue}:\n{table}");
    }

    let list = stdout(&wq(&xdg.0, &["list"]));
    assert!(list.lines().any(|l| l.split_whitespace().take(3).eq([pid.as_str(), "1", "wq-demo"])), "{list}");

    // Exiting drops the runtime, which removes the file.
    demo.stop();
    let cmwq = xdg.0.join("cmwq");
    assert_eq!(fs::read_dir(&cmwq).unwrap().count(), 0, "files left in {}", cmwq.display());
    let err = failure(&wq(&xdg.0, &["dump", &pid]), 1);
    assert!(err.contains(&format!("no process with pid {pid}")) || err.contains("no published wq runtime"), "{err}");
}

#[test]
fn monitor_shows_rates_between_refreshes() {
    let xdg = TestDir::new("rates");
    let demo = Demo::spawn(&xdg.0, &["--items", "1", "--trickle", "20", "busy"]);
    let out = stdout(&wq(&xdg.0, &["monitor", &demo.pid.to_string(), "0.3", "--count", "2"]));
    let busy = rows(&out, "busy");
    assert_eq!(busy.len(), 2, "two refreshes:\n{out}");
    assert_eq!(busy[0][2], "-", "no rate on the first refresh:\n{out}");
    let done: u64 = busy[1][2].parse().unwrap();
    let (first, second): (u64, u64) = (busy[0][1].parse().unwrap(), busy[1][1].parse().unwrap());
    assert!(done > 0 && done == second - first, "an item every 20 ms, refreshed every 300 ms:\n{out}");
    demo.stop();
}

#[test]
fn unknown_and_unpublished_processes_are_clear_errors() {
    let xdg = TestDir::new("errors");
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let gone = (pid_max + 1).to_string();
    let err = failure(&wq(&xdg.0, &["dump", &gone]), 1);
    assert!(err.contains(&format!("no process with pid {gone}")), "{err}");
    let err = failure(&wq(&xdg.0, &["monitor", &gone, "--count", "1"]), 1);
    assert!(err.contains("no process with pid"), "{err}");

    // This test process runs no wq runtime.
    let me = std::process::id().to_string();
    let err = failure(&wq(&xdg.0, &["dump", &me]), 1);
    assert!(err.contains(&format!("process {me} (")) && err.contains("has no published wq runtime"), "{err}");

    let out = stdout(&wq(&xdg.0, &["list"]));
    assert!(out.starts_with("no published wq runtimes of yours"), "{out}");

    for bad in [&["dump", "abc"][..], &["monitor", "1", "0"], &["frob"], &[]] {
        let err = failure(&wq(&xdg.0, bad), 2);
        assert!(err.contains("usage: wq list"), "{bad:?}: {err}");
    }
}

fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    uids.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn other_users_processes_are_refused() {
    let xdg = TestDir::new("others");
    // Root can start a process as another user; anyone else already has one: init.
    let mut theirs = None;
    let pid = if euid() == 0 {
        let child = Command::new("sleep").arg("30").uid(65534).gid(65534).spawn().expect("spawn sleep as 65534");
        let pid = child.id();
        theirs = Some(child);
        pid
    } else {
        1
    };
    let err = failure(&wq(&xdg.0, &["dump", &pid.to_string()]), 1);
    assert!(err.contains("wq only reads your own processes"), "{err}");
    if let Some(mut child) = theirs {
        assert!(err.contains("belongs to uid 65534"), "{err}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A snapshot file of another uid is refused even for our own pid (only
/// root can make one, so this runs as root, as the project's CI does).
#[test]
fn other_users_files_are_refused() {
    if euid() != 0 {
        eprintln!("not root: cannot create a file owned by another uid; covered by the process refusal test");
        return;
    }
    let xdg = TestDir::new("files");
    let dir = xdg.0.join("cmwq");
    fs::create_dir(&dir).unwrap();
    let me = std::process::id();
    let fake = dir.join(format!("{me}.1"));
    fs::write(&fake, b"not even a snapshot").unwrap();
    std::os::unix::fs::chown(&fake, Some(65534), Some(65534)).unwrap();
    let err = failure(&wq(&xdg.0, &["dump", &me.to_string()]), 1);
    assert!(err.contains("is owned by uid 65534") && err.contains("only reads your own snapshot files"), "{err}");
    // `wq list` skips it with a note instead of failing.
    let out = wq(&xdg.0, &["list"]);
    assert!(stdout(&out).starts_with("no published wq runtimes"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"));
    assert!(fake.exists(), "another user's file is never deleted");
}

#[test]
fn stale_files_of_exited_processes_are_cleaned() {
    let xdg = TestDir::new("stale");
    let demo = Demo::spawn(&xdg.0, &["--items", "1", "q"]);
    let file = xdg.0.join("cmwq").join(format!("{}.1", demo.pid));
    let saved = fs::read(&file).unwrap();
    demo.stop();
    // As if the process had crashed: its file stays behind.
    fs::write(&file, saved).unwrap();
    let out = wq(&xdg.0, &["list"]);
    assert!(stdout(&out).starts_with("no published wq runtimes"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its process exited"));
    assert!(!file.exists(), "the stale file was removed");
}

/// A process in another pid namespace (a container sharing the directory)
/// publishes under a pid that means nothing here: the lock its writer
/// holds, not the pid, says it is alive. A hard link stands in for such a
/// file: the same inode, so the same lock, under a pid absent here.
#[test]
fn a_held_file_named_after_an_absent_pid_is_live() {
    let xdg = TestDir::new("pidns");
    let demo = Demo::spawn(&xdg.0, &["--items", "1", "q"]);
    let cmwq = xdg.0.join("cmwq");
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let foreign = cmwq.join(format!("{}.1", pid_max + 1));
    fs::hard_link(cmwq.join(format!("{}.1", demo.pid)), &foreign).unwrap();

    let out = wq(&xdg.0, &["list"]);
    assert!(foreign.exists(), "a live publisher's file was removed: {}", String::from_utf8_lossy(&out.stderr));
    let list = stdout(&out);
    let pid = demo.pid.to_string();
    assert_eq!(list.lines().filter(|l| l.split_whitespace().next() == Some(pid.as_str())).count(), 2, "{list}");

    // Its writer is gone and its pid absent: now it is stale.
    demo.stop();
    let out = wq(&xdg.0, &["list"]);
    assert!(stdout(&out).starts_with("no published wq runtimes"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its process exited"));
    assert!(!foreign.exists(), "the abandoned file was left");
}
