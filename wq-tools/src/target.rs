//! Finding the runtimes a process published, with the access rules: only
//! processes and files of our own uid are read, and files left behind by
//! processes that exited are skipped and deleted (a file is left behind
//! when its pid is not a live process here and no publisher holds its lock).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wq_core::{PublishedFile, Snapshot};

use crate::procfs::{own_euid, ProcessInfo};

/// Why `wq` cannot show what was asked.
#[derive(Debug)]
pub enum ToolError {
    /// The command line is wrong; the message says how.
    Usage(String),
    /// No process has this pid.
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The pid names a thread, not a process.
    NotAProcess {
        /// The pid asked for.
        pid: u32,
        /// The process the thread belongs to.
        tgid: u32,
    },
    /// The process belongs to another user.
    NotYours {
        /// The process.
        pid: u32,
        /// Its name.
        name: String,
        /// Its uids (real, effective, saved, filesystem).
        uids: [u32; 4],
        /// Our effective uid.
        you: u32,
    },
    /// A snapshot file belongs to another user.
    FileNotYours {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Our effective uid.
        you: u32,
    },
    /// The process runs but published no wq runtime.
    NotPublished {
        /// The process.
        pid: u32,
        /// Its name.
        name: String,
        /// Where we looked.
        dirs: Vec<PathBuf>,
    },
    /// A file, or `/proc`, could not be read.
    Io {
        /// What was being read.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl ToolError {
    /// The exit status for this error: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if matches!(self, ToolError::Usage(_)) {
            2
        } else {
            1
        }
    }

    fn io(what: impl Into<String>, source: io::Error) -> ToolError {
        ToolError::Io { what: what.into(), source }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Usage(msg) => f.write_str(msg),
            ToolError::NoSuchProcess { pid } => write!(f, "no process with pid {pid}"),
            ToolError::NotAProcess { pid, tgid } => {
                write!(f, "{pid} is a thread of process {tgid}; give the process id ({tgid})")
            }
            ToolError::NotYours { pid, name, uids, you } => write!(
                f,
                "process {pid} ({name}) belongs to uid {} (uids {uids:?}) and you are uid {you}: \
                 wq only reads your own processes",
                if uids[0] == *you { uids[1] } else { uids[0] }
            ),
            ToolError::FileNotYours { path, uid, you } => write!(
                f,
                "{} is owned by uid {uid} and you are uid {you}: wq only reads your own snapshot files",
                path.display()
            ),
            ToolError::NotPublished { pid, name, dirs } => {
                let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                write!(
                    f,
                    "process {pid} ({name}) has no published wq runtime (looked in {}); \
                     it must use wq-core with publishing on, and have the same XDG_RUNTIME_DIR as you",
                    dirs.join(", ")
                )
            }
            ToolError::Io { what, source } => write!(f, "cannot read {what}: {source}"),
        }
    }
}

impl std::error::Error for ToolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ToolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A runtime that a live process published, read and checked.
#[derive(Clone, Debug)]
pub struct Published {
    /// Where it was read from.
    pub file: PublishedFile,
    /// What it said.
    pub snapshot: Snapshot,
}

/// The runtimes process `pid` published, by runtime id.
///
/// # Errors
/// The process does not exist, is a thread, belongs to another user, or
/// has published nothing; a snapshot file belongs to another user or
/// cannot be read.
pub fn published_by(pid: u32) -> Result<(ProcessInfo, Vec<Published>), ToolError> {
    let you = own_euid().map_err(|e| ToolError::io("/proc/self/status", e))?;
    let info = ProcessInfo::of(pid)
        .map_err(|e| ToolError::io(format!("/proc/{pid}/status"), e))?
        .ok_or(ToolError::NoSuchProcess { pid })?;
    if info.tgid != pid {
        return Err(ToolError::NotAProcess { pid, tgid: info.tgid });
    }
    if !info.belongs_to(you) {
        return Err(ToolError::NotYours { pid, name: info.name, uids: info.uids, you });
    }
    let mut found = Vec::new();
    for file in PublishedFile::list().into_iter().filter(|f| f.pid == pid) {
        if let Some(published) = read_checked(file, you)? {
            found.push(published);
        }
    }
    if found.is_empty() {
        return Err(ToolError::NotPublished { pid, name: info.name, dirs: PublishedFile::dirs() });
    }
    Ok((info, found))
}

/// What [`list_all`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Runtimes of live processes of ours.
    pub runtimes: Vec<Published>,
    /// Stale files (their process exited and nothing holds them) that were
    /// deleted, or that another reader deleted first.
    pub removed: Vec<PathBuf>,
    /// Files that were skipped, and why (another user's, unreadable).
    pub skipped: Vec<String>,
}

/// Every runtime published by a live process of ours (in this pid
/// namespace or another sharing the directory); deletes the files of
/// processes that exited.
///
/// # Errors
/// Only if our own uid cannot be read; per-file problems land in
/// [`Listing::skipped`].
pub fn list_all() -> Result<Listing, ToolError> {
    let you = own_euid().map_err(|e| ToolError::io("/proc/self/status", e))?;
    let mut listing = Listing::default();
    for file in PublishedFile::list() {
        let path = file.path.clone();
        match read_checked(file, you) {
            Ok(Some(published)) => listing.runtimes.push(published),
            Ok(None) => listing.removed.push(path),
            Err(err) => listing.skipped.push(err.to_string()),
        }
    }
    Ok(listing)
}

/// Reads `file` if it is ours; `Ok(None)` (and the file deleted) if it was
/// abandoned: its pid is not a live process here and no publisher holds
/// it. A held file whose pid means nothing here is a live process's in
/// another pid namespace (a container sharing the directory).
fn read_checked(file: PublishedFile, you: u32) -> Result<Option<Published>, ToolError> {
    check_file_owner(&file.path, you)?;
    let read = |file: PublishedFile| match Snapshot::read(&file.path) {
        Ok(snapshot) => Ok(Some(Published { file, snapshot })),
        // The runtime was dropped between listing and reading.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ToolError::io(file.path.display().to_string(), err)),
    };
    let read_here = if Path::new(&format!("/proc/{}", file.pid)).exists() {
        match read(file.clone())? {
            Some(published) if published.snapshot.is_from_live_process() => return Ok(Some(published)),
            None => return Ok(None),
            Some(published) => Some(published),
        }
    } else {
        None
    };
    match file.remove_if_abandoned() {
        // Another reader may have removed it first; either way it is gone.
        Ok(true) => Ok(None),
        Ok(false) => match read_here {
            Some(published) => Ok(Some(published)),
            None => read(file),
        },
        Err(err) => Err(ToolError::io(file.path.display().to_string(), err)),
    }
}

/// Refuses a snapshot file that is not a regular file owned by `you`.
fn check_file_owner(path: &Path, you: u32) -> Result<(), ToolError> {
    let meta = fs::symlink_metadata(path).map_err(|e| ToolError::io(path.display().to_string(), e))?;
    if meta.uid() != you {
        return Err(ToolError::FileNotYours { path: path.to_owned(), uid: meta.uid(), you });
    }
    if !meta.is_file() {
        let err = io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
        return Err(ToolError::io(path.display().to_string(), err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let not_yours = ToolError::NotYours { pid: 1, name: "init".into(), uids: [0; 4], you: 1000 };
        assert_eq!(not_yours.exit_code(), 1);
        assert!(not_yours.to_string().contains("belongs to uid 0"), "{not_yours}");
        let thread = ToolError::NotAProcess { pid: 12, tgid: 10 };
        assert!(thread.to_string().contains("give the process id (10)"));
        assert_eq!(ToolError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn a_process_without_a_runtime_is_not_published() {
        let me = std::process::id();
        match published_by(me) {
            Err(ToolError::NotPublished { pid, .. }) => assert_eq!(pid, me),
            other => panic!("expected NotPublished, got {other:?}"),
        }
    }
}
