//! What `/proc` says about a process: whether it exists, its name and uids.

use std::fs;
use std::io;

/// One process, from `/proc/<pid>/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id asked about.
    pub pid: u32,
    /// The thread-group id: equals `pid` for a process, differs for a thread.
    pub tgid: u32,
    /// The command name (`Name:`).
    pub name: String,
    /// Real, effective, saved and filesystem uids (`Uid:`).
    pub uids: [u32; 4],
}

impl ProcessInfo {
    /// Reads `/proc/<pid>/status`; `Ok(None)` if there is no such process.
    ///
    /// # Errors
    /// `/proc` cannot be read for another reason, or the file is malformed.
    pub fn of(pid: u32) -> io::Result<Option<ProcessInfo>> {
        match fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(text) => parse_status(pid, &text).map(Some),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Whether every uid of the process is `uid`: the rule the kernel applies
    /// before letting one process inspect another (ptrace), without the
    /// root exception.
    pub fn belongs_to(&self, uid: u32) -> bool {
        self.uids.iter().all(|&u| u == uid)
    }
}

/// The effective uid of this process (from `/proc/self/status`).
///
/// # Errors
/// `/proc/self/status` cannot be read or is malformed.
pub fn own_euid() -> io::Result<u32> {
    let text = fs::read_to_string("/proc/self/status")?;
    Ok(parse_status(std::process::id(), &text)?.uids[1])
}

/// Parses the text of `/proc/<pid>/status`.
///
/// # Errors
/// `InvalidData` if the `Name`, `Tgid` or `Uid` line is missing or malformed.
pub fn parse_status(pid: u32, text: &str) -> io::Result<ProcessInfo> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/status: no valid {what} line"));
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim);
    let name = field("Name").ok_or_else(|| bad("Name"))?.to_owned();
    let tgid = field("Tgid").and_then(|t| t.parse().ok()).ok_or_else(|| bad("Tgid"))?;
    let uids: Vec<u32> =
        field("Uid").ok_or_else(|| bad("Uid"))?.split_whitespace().map_while(|u| u.parse().ok()).collect();
    let uids: [u32; 4] = uids.try_into().map_err(|_| bad("Uid"))?;
    Ok(ProcessInfo { pid, tgid, name, uids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text =
            "Name:\twq demo\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t41\nPid:\t42\nUid:\t1000\t1000\t1000\t1001\n";
        let info = parse_status(42, text).unwrap();
        assert_eq!(info, ProcessInfo { pid: 42, tgid: 41, name: "wq demo".into(), uids: [1000, 1000, 1000, 1001] });
        assert!(!info.belongs_to(1000), "one differing uid is enough to refuse");
        assert!(parse_status(1, "Name:\tx\nTgid:\t1\nUid:\t1\t2\n").unwrap_err().to_string().contains("Uid"));
        assert!(parse_status(1, "Tgid:\t1\n").unwrap_err().to_string().contains("Name"));
    }

    #[test]
    fn reads_this_process() {
        let me = ProcessInfo::of(std::process::id()).unwrap().unwrap();
        assert_eq!(me.tgid, std::process::id());
        assert!(me.belongs_to(own_euid().unwrap()));
        let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        assert_eq!(ProcessInfo::of(pid_max + 1).unwrap(), None);
    }
}
