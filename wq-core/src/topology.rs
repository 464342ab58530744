//! The CPUs this process may use and how they group: SMT siblings, last-level
//! caches (LLC) and NUMA nodes, read from sysfs like the kernel's workqueue
//! reads its `wq_pod_types`.
//!
//! Every grouping is a partition of [`Topology::cpus`]: a CPU belongs to
//! exactly one SMT group, one LLC group and one NUMA node, even when sysfs is
//! missing, partial or inconsistent (a CPU the files do not place stands
//! alone, on node 0). Unbound pools use [`Topology::pods`] to split the CPUs
//! by an affinity [`Scope`].

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The kernel's default `workqueue.cache_shard_size`: cores per shard.
pub const DEFAULT_CACHE_SHARD_SIZE: usize = 8;

/// CPU numbers at or above this are rejected by the CPU list parser, so a
/// typo such as `0-4000000000` fails instead of allocating gigabytes.
pub(crate) const MAX_CPU: usize = 1 << 16;

/// Why a CPU list or a CPU selection was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyError {
    /// An empty CPU set was given where at least one CPU is needed.
    EmptyCpuSet,
    /// Some requested CPUs are not in the topology (not allowed to the process).
    CpusNotAllowed {
        /// The requested CPUs that are missing.
        missing: Vec<usize>,
        /// The CPUs that may be used.
        allowed: Vec<usize>,
    },
    /// A CPU list such as `"0-3,8"` could not be parsed.
    BadCpuList {
        /// The text that was parsed.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::EmptyCpuSet => write!(f, "the CPU set is empty"),
            TopologyError::CpusNotAllowed { missing, allowed } => write!(
                f,
                "CPUs {} are not allowed to this process (allowed: {})",
                format_cpu_list(missing),
                format_cpu_list(allowed)
            ),
            TopologyError::BadCpuList { input, reason } => write!(f, "bad CPU list {input:?}: {reason}"),
        }
    }
}

impl std::error::Error for TopologyError {}

/// How unbound workers are grouped, as in the kernel's `workqueue.rst`
/// "Affinity Scopes": a work item runs on a CPU of the pod of the CPU that
/// queued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One pod per CPU.
    Cpu,
    /// One pod per core (SMT siblings together).
    Smt,
    /// One pod per last-level cache.
    Cache,
    /// Each last-level cache split into shards of at most this many cores,
    /// always on core boundaries (0 is taken as 1, as the kernel does).
    CacheShard(usize),
    /// One pod per NUMA node.
    Numa,
    /// All CPUs in one pod.
    System,
}

impl Default for Scope {
    /// The kernel's default scope: `cache_shard` with 8 cores per shard.
    fn default() -> Self {
        Scope::CacheShard(DEFAULT_CACHE_SHARD_SIZE)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cpu => write!(f, "cpu"),
            Scope::Smt => write!(f, "smt"),
            Scope::Cache => write!(f, "cache"),
            Scope::CacheShard(n) => write!(f, "cache_shard({n})"),
            Scope::Numa => write!(f, "numa"),
            Scope::System => write!(f, "system"),
        }
    }
}

/// The CPUs the process may use and their SMT / LLC / NUMA grouping.
///
/// ```
/// use wq_core::Topology;
///
/// let topo = Topology::detect();
/// let cpu = topo.cpus()[0];
/// assert!(topo.smt_group(cpu).unwrap().contains(&cpu));
/// let one = topo.restrict(&[cpu]).unwrap();
/// assert_eq!(one.cpus(), &[cpu]);
/// assert_eq!(Topology::parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Sorted, without duplicates.
    cpus: Vec<usize>,
    /// Partition of `cpus`, each group sorted, groups ordered by first CPU.
    smt: Vec<Vec<usize>>,
    /// Partition of `cpus`, like `smt`.
    llc: Vec<Vec<usize>>,
    /// For each entry of `cpus`: index into `smt`, index into `llc`, NUMA node.
    smt_of: Vec<usize>,
    llc_of: Vec<usize>,
    node_of: Vec<usize>,
}

impl Topology {
    /// Reads the topology of the CPUs this process may run on.
    ///
    /// Never fails: without an affinity mask it assumes CPUs
    /// `0..available_parallelism`, and any sysfs file it cannot read or parse
    /// leaves the CPUs concerned ungrouped (each alone, node 0).
    pub fn detect() -> Topology {
        let allowed = match crate::sys::allowed_cpus() {
            Ok(cpus) if !cpus.is_empty() => cpus,
            _ => {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (0..n).collect()
            }
        };
        Topology::from_sysfs(Path::new("/sys"), &allowed)
            .or_else(|_| Topology::ungrouped(&allowed))
            .unwrap_or_else(|_| Topology::ungrouped(&[0]).expect("one CPU is a valid topology"))
    }

    /// Reads the topology of `allowed` from a sysfs tree mounted at `root`
    /// (normally `/sys`; tests pass a fake tree).
    ///
    /// Reads `devices/system/cpu/cpuN/topology/thread_siblings_list` (or
    /// `core_cpus_list`), the `shared_cpu_list` of the highest-level data or
    /// unified cache in `cpuN/cache/indexK`, and `devices/system/node/nodeM/cpulist`
    /// (or `cpuN/nodeM` links). Missing files leave CPUs ungrouped; a file that
    /// exists but holds garbage is an `InvalidData` error naming it. An empty
    /// `allowed` is an `InvalidInput` error.
    pub fn from_sysfs(root: &Path, allowed: &[usize]) -> io::Result<Topology> {
        let cpus = normalize(allowed).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let cpu_dir = root.join("devices/system/cpu");
        let mut smt_lists = Vec::with_capacity(cpus.len());
        let mut llc_lists = Vec::with_capacity(cpus.len());
        for &cpu in &cpus {
            let dir = cpu_dir.join(format!("cpu{cpu}"));
            let topo = dir.join("topology");
            let smt = match read_cpu_list(&topo.join("thread_siblings_list"))? {
                Some(list) => Some(list),
                None => read_cpu_list(&topo.join("core_cpus_list"))?,
            };
            smt_lists.push(smt);
            llc_lists.push(read_llc(&dir.join("cache"))?);
        }
        let nodes = read_nodes(root, &cpus)?;
        let smt = partition(&cpus, &smt_lists);
        let llc = partition(&cpus, &llc_lists);
        Ok(Topology::assemble(cpus, smt, llc, nodes))
    }

    /// A topology of `cpus` with no grouping: each CPU is its own core and
    /// cache, all on NUMA node 0 (for platforms without sysfs, and tests).
    pub fn ungrouped(cpus: &[usize]) -> Result<Topology, TopologyError> {
        let cpus = normalize(cpus)?;
        let singles: Vec<Vec<usize>> = cpus.iter().map(|&c| vec![c]).collect();
        let nodes = vec![0; cpus.len()];
        Ok(Topology::assemble(cpus, singles.clone(), singles, nodes))
    }

    /// The usable CPUs, sorted.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The same machine limited to `cpus`; groups keep only those CPUs.
    ///
    /// Fails if `cpus` is empty or names CPUs outside [`Topology::cpus`].
    pub fn restrict(&self, cpus: &[usize]) -> Result<Topology, TopologyError> {
        let wanted = normalize(cpus)?;
        let missing: Vec<usize> = wanted.iter().copied().filter(|c| self.index(*c).is_none()).collect();
        if !missing.is_empty() {
            return Err(TopologyError::CpusNotAllowed { missing, allowed: self.cpus.clone() });
        }
        let keep = |group: &Vec<usize>| -> Vec<usize> {
            group.iter().copied().filter(|c| wanted.binary_search(c).is_ok()).collect()
        };
        let smt = self.smt.iter().map(keep).filter(|g| !g.is_empty()).collect();
        let llc = self.llc.iter().map(keep).filter(|g| !g.is_empty()).collect();
        let nodes = wanted.iter().map(|&c| self.node_of[self.index(c).expect("checked above")]).collect();
        Ok(Topology::assemble(wanted, smt, llc, nodes))
    }

    /// The SMT siblings of `cpu` (itself included), or `None` if `cpu` is not usable.
    pub fn smt_group(&self, cpu: usize) -> Option<&[usize]> {
        self.index(cpu).map(|i| self.smt[self.smt_of[i]].as_slice())
    }

    /// The usable CPUs sharing `cpu`'s last-level cache, or `None` if `cpu` is not usable.
    pub fn llc_group(&self, cpu: usize) -> Option<&[usize]> {
        self.index(cpu).map(|i| self.llc[self.llc_of[i]].as_slice())
    }

    /// The NUMA node of `cpu`, or `None` if `cpu` is not usable.
    pub fn numa_node(&self, cpu: usize) -> Option<usize> {
        self.index(cpu).map(|i| self.node_of[i])
    }

    /// Splits [`Topology::cpus`] into the pods of `scope`: every CPU is in
    /// exactly one pod, pods are sorted and ordered by their first CPU.
    pub fn pods(&self, scope: Scope) -> Vec<Vec<usize>> {
        match scope {
            Scope::Cpu => self.cpus.iter().map(|&c| vec![c]).collect(),
            Scope::Smt => self.smt.clone(),
            Scope::Cache => self.llc.clone(),
            Scope::CacheShard(size) => self.cache_shards(size.max(1)),
            Scope::Numa => {
                let mut nodes: Vec<usize> = self.node_of.clone();
                nodes.sort_unstable();
                nodes.dedup();
                let mut pods: Vec<Vec<usize>> = nodes
                    .iter()
                    .map(|&n| self.cpus.iter().zip(&self.node_of).filter(|(_, &m)| m == n).map(|(&c, _)| c).collect())
                    .collect();
                pods.sort();
                pods
            }
            Scope::System => vec![self.cpus.clone()],
        }
    }

    /// Parses a kernel CPU list such as `"0-3,8,10-11"` (sysfs `cpulist`
    /// format) into sorted, distinct CPU numbers. Blank input is the empty
    /// list; anything else that is not a list of numbers and ascending
    /// ranges is an error.
    pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, TopologyError> {
        let bad = |reason: String| TopologyError::BadCpuList { input: text.to_owned(), reason };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(Vec::new());
        }
        let mut cpus = Vec::new();
        for item in trimmed.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(bad("empty item between commas".into()));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (parse_cpu(lo, &bad)?, parse_cpu(hi, &bad)?),
                None => {
                    let c = parse_cpu(item, &bad)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(bad(format!("range {item:?} runs backwards")));
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(cpus)
    }

    fn index(&self, cpu: usize) -> Option<usize> {
        self.cpus.binary_search(&cpu).ok()
    }

    /// Builds the lookup tables from partitions of `cpus` (sorted, distinct).
    fn assemble(cpus: Vec<usize>, mut smt: Vec<Vec<usize>>, mut llc: Vec<Vec<usize>>, node_of: Vec<usize>) -> Topology {
        let index_of = |groups: &mut Vec<Vec<usize>>| -> Vec<usize> {
            for g in groups.iter_mut() {
                g.sort_unstable();
            }
            groups.sort();
            let mut of = vec![0; cpus.len()];
            for (gi, g) in groups.iter().enumerate() {
                for c in g {
                    if let Ok(i) = cpus.binary_search(c) {
                        of[i] = gi;
                    }
                }
            }
            of
        };
        let smt_of = index_of(&mut smt);
        let llc_of = index_of(&mut llc);
        Topology { cpus, smt, llc, smt_of, llc_of, node_of }
    }

    /// Splits each LLC into shards of at most `size` cores, never splitting a
    /// core, spreading cores as evenly as possible (the first shards take one
    /// extra core), like the kernel's `cache_shard` scope.
    fn cache_shards(&self, size: usize) -> Vec<Vec<usize>> {
        let mut pods = Vec::new();
        for llc in &self.llc {
            // Cores of this LLC in order of their first CPU; an SMT group that
            // straddles caches (inconsistent sysfs) contributes only the CPUs
            // inside this LLC, so the result stays a partition.
            let mut cores: Vec<(usize, Vec<usize>)> = Vec::new();
            for &cpu in llc {
                let smt = self.smt_of[self.index(cpu).expect("LLC groups hold topology CPUs")];
                match cores.iter_mut().find(|(s, _)| *s == smt) {
                    Some((_, members)) => members.push(cpu),
                    None => cores.push((smt, vec![cpu])),
                }
            }
            let nr_shards = cores.len().div_ceil(size);
            let per_shard = cores.len() / nr_shards;
            let large = cores.len() % nr_shards;
            let mut cores = cores.into_iter().map(|(_, members)| members);
            for shard in 0..nr_shards {
                let take = per_shard + usize::from(shard < large);
                let mut pod: Vec<usize> = cores.by_ref().take(take).flatten().collect();
                pod.sort_unstable();
                pods.push(pod);
            }
        }
        pods.sort();
        pods
    }
}

/// Sorts and dedups `cpus`, refusing an empty set or absurd CPU numbers.
fn normalize(cpus: &[usize]) -> Result<Vec<usize>, TopologyError> {
    if cpus.is_empty() {
        return Err(TopologyError::EmptyCpuSet);
    }
    if let Some(&big) = cpus.iter().find(|&&c| c >= MAX_CPU) {
        return Err(TopologyError::BadCpuList {
            input: format_cpu_list(cpus),
            reason: format!("CPU {big} is beyond the supported maximum {}", MAX_CPU - 1),
        });
    }
    let mut cpus = cpus.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_cpu(text: &str, bad: &impl Fn(String) -> TopologyError) -> Result<usize, TopologyError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{text:?} is not a CPU number")));
    }
    match text.parse::<usize>() {
        Ok(cpu) if cpu < MAX_CPU => Ok(cpu),
        _ => Err(bad(format!("CPU {text} is beyond the supported maximum {}", MAX_CPU - 1))),
    }
}

/// Formats sorted CPUs the way sysfs does: `0-3,8`.
pub(crate) fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(lo) = iter.next() {
        let mut hi = lo;
        while hi.checked_add(1).is_some_and(|next| iter.peek() == Some(&next)) {
            hi = iter.next().unwrap_or(hi);
        }
        out.push(if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") });
    }
    out.join(",")
}

/// Reads a sysfs file; a missing or unreadable file is `None` (the caller
/// falls back), garbage is an error naming the file.
fn read_cpu_list(path: &Path) -> io::Result<Option<Vec<usize>>> {
    match read_trimmed(path) {
        Some(text) => Topology::parse_cpu_list(&text)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        None => Ok(None),
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The CPUs sharing the highest-level data or unified cache under `cache_dir`.
fn read_llc(cache_dir: &Path) -> io::Result<Option<Vec<usize>>> {
    let Ok(entries) = fs::read_dir(cache_dir) else { return Ok(None) };
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("index") {
            continue;
        }
        let dir = entry.path();
        if read_trimmed(&dir.join("type")).as_deref() == Some("Instruction") {
            continue;
        }
        let Some(level) = read_trimmed(&dir.join("level")).and_then(|l| l.parse::<u32>().ok()) else { continue };
        if best.as_ref().is_none_or(|(l, _)| level > *l) {
            best = Some((level, dir));
        }
    }
    match best {
        Some((_, dir)) => read_cpu_list(&dir.join("shared_cpu_list")),
        None => Ok(None),
    }
}

/// The NUMA node of each of `cpus` (0 where sysfs does not say).
fn read_nodes(root: &Path, cpus: &[usize]) -> io::Result<Vec<usize>> {
    let mut node_of: Vec<Option<usize>> = vec![None; cpus.len()];
    if let Ok(entries) = fs::read_dir(root.join("devices/system/node")) {
        for entry in entries.flatten() {
            let Some(node) = node_number(&entry.file_name().to_string_lossy()) else { continue };
            for cpu in read_cpu_list(&entry.path().join("cpulist"))?.unwrap_or_default() {
                if let Ok(i) = cpus.binary_search(&cpu) {
                    node_of[i].get_or_insert(node);
                }
            }
        }
    }
    // Older or trimmed sysfs trees only have the `cpuN/nodeM` links.
    for (i, &cpu) in cpus.iter().enumerate() {
        if node_of[i].is_some() {
            continue;
        }
        let Ok(entries) = fs::read_dir(root.join(format!("devices/system/cpu/cpu{cpu}"))) else { continue };
        node_of[i] = entries.flatten().find_map(|e| node_number(&e.file_name().to_string_lossy()));
    }
    Ok(node_of.into_iter().map(|n| n.unwrap_or(0)).collect())
}

fn node_number(name: &str) -> Option<usize> {
    name.strip_prefix("node").filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

/// Turns per-CPU sibling lists (which may be missing or disagree) into a
/// partition of `cpus`: a CPU joins the group of the first CPU whose list
/// names it, and lists only count CPUs in `cpus`.
fn partition(cpus: &[usize], lists: &[Option<Vec<usize>>]) -> Vec<Vec<usize>> {
    let mut assigned = vec![false; cpus.len()];
    let mut groups = Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        if assigned[i] {
            continue;
        }
        assigned[i] = true;
        let mut group = vec![cpu];
        for other in lists[i].iter().flatten() {
            if let Ok(j) = cpus.binary_search(other) {
                if !assigned[j] {
                    assigned[j] = true;
                    group.push(*other);
                }
            }
        }
        group.sort_unstable();
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs tree in a fresh temp dir, removed on drop.
    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(name: &str) -> FakeSys {
            let dir = std::env::temp_dir().join(format!("wq-topo-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeSys(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("{text}\n")).unwrap();
        }

        /// 2 sockets x 2 LLCs x 2 cores x SMT2 = 16 CPUs, numbered like x86
        /// (siblings are `c` and `c + 8`). Socket s holds cores 4s..4s+3;
        /// LLC l holds cores 2l, 2l+1.
        fn two_sockets(name: &str) -> FakeSys {
            let sys = FakeSys::new(name);
            for cpu in 0..16 {
                let core = cpu % 8;
                let llc = core / 2;
                let base = format!("devices/system/cpu/cpu{cpu}");
                sys.write(&format!("{base}/topology/thread_siblings_list"), &format!("{core},{}", core + 8));
                let llc_cpus = format!("{}-{},{}-{}", 2 * llc, 2 * llc + 1, 2 * llc + 8, 2 * llc + 9);
                for (k, level, kind, shared) in [
                    (0, 1, "Data", format!("{core},{}", core + 8)),
                    (1, 1, "Instruction", format!("{core},{}", core + 8)),
                    (2, 3, "Unified", llc_cpus),
                    (3, 2, "Unified", format!("{core},{}", core + 8)),
                ] {
                    sys.write(&format!("{base}/cache/index{k}/level"), &level.to_string());
                    sys.write(&format!("{base}/cache/index{k}/type"), kind);
                    sys.write(&format!("{base}/cache/index{k}/shared_cpu_list"), &shared);
                }
            }
            sys.write("devices/system/node/node0/cpulist", "0-3,8-11");
            sys.write("devices/system/node/node1/cpulist", "4-7,12-15");
            sys
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parser_accepts_sysfs_lists() {
        assert_eq!(Topology::parse_cpu_list("0-3,8,10-11\n").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(Topology::parse_cpu_list("5").unwrap(), vec![5]);
        assert_eq!(Topology::parse_cpu_list("3,1,1-2").unwrap(), vec![1, 2, 3]);
        assert_eq!(Topology::parse_cpu_list(" \n").unwrap(), Vec::<usize>::new());
        assert_eq!(Topology::parse_cpu_list(" 1 - 2 , 4 ").unwrap(), vec![1, 2, 4]);
    }

    #[test]
    fn parser_rejects_garbage() {
        for bad in ["x", "1,,2", "3-1", "1-", "-1", "0-3:2/4", "1 2", "+1", "99999999999999999999", "70000"] {
            let err = Topology::parse_cpu_list(bad).unwrap_err();
            assert!(matches!(err, TopologyError::BadCpuList { .. }), "{bad:?} gave {err:?}");
            assert!(err.to_string().contains(bad), "error {err} should quote the input");
        }
    }

    #[test]
    fn fake_tree_groups() {
        let sys = FakeSys::two_sockets("groups");
        let topo = Topology::from_sysfs(&sys.0, &(0..16).collect::<Vec<_>>()).unwrap();
        assert_eq!(topo.cpus(), (0..16).collect::<Vec<_>>().as_slice());
        assert_eq!(topo.smt_group(3), Some(&[3, 11][..]));
        assert_eq!(topo.smt_group(11), Some(&[3, 11][..]));
        assert_eq!(topo.llc_group(5), Some(&[4, 5, 12, 13][..]), "L3 wins over L2 and L1");
        assert_eq!(topo.numa_node(2), Some(0));
        assert_eq!(topo.numa_node(13), Some(1));
        assert_eq!(topo.smt_group(16), None);
        assert_eq!(topo.numa_node(99), None);
    }

    #[test]
    fn fake_tree_respects_allowed_cpus() {
        let sys = FakeSys::two_sockets("allowed");
        let topo = Topology::from_sysfs(&sys.0, &[0, 8, 1, 4]).unwrap();
        assert_eq!(topo.cpus(), &[0, 1, 4, 8]);
        assert_eq!(topo.smt_group(0), Some(&[0, 8][..]));
        assert_eq!(topo.smt_group(1), Some(&[1][..]));
        assert_eq!(topo.llc_group(1), Some(&[0, 1, 8][..]));
        assert_eq!(topo.numa_node(4), Some(1));
        assert_eq!(topo.pods(Scope::Numa), vec![vec![0, 1, 8], vec![4]]);
    }

    #[test]
    fn missing_files_fall_back_and_garbage_fails() {
        let sys = FakeSys::new("sparse");
        sys.write("devices/system/cpu/cpu0/topology/core_cpus_list", "0-1");
        sys.write("devices/system/cpu/cpu2/node1/present", "");
        let topo = Topology::from_sysfs(&sys.0, &[0, 1, 2]).unwrap();
        assert_eq!(topo.pods(Scope::Smt), vec![vec![0, 1], vec![2]]);
        assert_eq!(topo.pods(Scope::Cache), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(topo.numa_node(0), Some(0));
        assert_eq!(topo.numa_node(2), Some(1), "cpuN/nodeM link is used when node dirs are absent");

        sys.write("devices/system/cpu/cpu1/topology/thread_siblings_list", "zero");
        let err = Topology::from_sysfs(&sys.0, &[0, 1, 2]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("cpu1/topology/thread_siblings_list"), "{err}");
        assert_eq!(Topology::from_sysfs(&sys.0, &[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn inconsistent_lists_still_partition() {
        let sys = FakeSys::new("inconsistent");
        sys.write("devices/system/cpu/cpu0/topology/thread_siblings_list", "0-1");
        sys.write("devices/system/cpu/cpu1/topology/thread_siblings_list", "1-2");
        sys.write("devices/system/cpu/cpu2/topology/thread_siblings_list", "2");
        let topo = Topology::from_sysfs(&sys.0, &[0, 1, 2]).unwrap();
        assert_eq!(topo.pods(Scope::Smt), vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn pods_for_each_scope() {
        let sys = FakeSys::two_sockets("pods");
        let topo = Topology::from_sysfs(&sys.0, &(0..16).collect::<Vec<_>>()).unwrap();
        assert_eq!(topo.pods(Scope::Cpu).len(), 16);
        assert_eq!(topo.pods(Scope::Smt)[0], vec![0, 8]);
        assert_eq!(topo.pods(Scope::Smt).len(), 8);
        assert_eq!(
            topo.pods(Scope::Cache),
            vec![vec![0, 1, 8, 9], vec![2, 3, 10, 11], vec![4, 5, 12, 13], vec![6, 7, 14, 15]]
        );
        assert_eq!(topo.pods(Scope::Numa), vec![vec![0, 1, 2, 3, 8, 9, 10, 11], vec![4, 5, 6, 7, 12, 13, 14, 15]]);
        assert_eq!(topo.pods(Scope::System), vec![(0..16).collect::<Vec<_>>()]);
        // Two cores per LLC: a shard of 1 core splits each LLC on core boundaries.
        assert_eq!(topo.pods(Scope::CacheShard(1)), topo.pods(Scope::Smt));
        assert_eq!(topo.pods(Scope::CacheShard(0)), topo.pods(Scope::Smt), "0 is taken as 1");
        assert_eq!(topo.pods(Scope::CacheShard(8)), topo.pods(Scope::Cache));
        assert_eq!(Scope::default(), Scope::CacheShard(8));
        for scope in [Scope::Cpu, Scope::Smt, Scope::Cache, Scope::CacheShard(1), Scope::Numa, Scope::System] {
            let mut all: Vec<usize> = topo.pods(scope).concat();
            all.sort_unstable();
            assert_eq!(all, topo.cpus(), "{scope} pods must partition the CPUs");
        }
    }

    #[test]
    fn cache_shards_spread_cores_evenly() {
        // One LLC with 10 cores (no SMT): shards of at most 4 cores => 4+3+3.
        let sys = FakeSys::new("shards");
        for cpu in 0..10 {
            let base = format!("devices/system/cpu/cpu{cpu}/cache/index3");
            sys.write(&format!("{base}/level"), "3");
            sys.write(&format!("{base}/type"), "Unified");
            sys.write(&format!("{base}/shared_cpu_list"), "0-9");
        }
        let topo = Topology::from_sysfs(&sys.0, &(0..10).collect::<Vec<_>>()).unwrap();
        assert_eq!(topo.pods(Scope::CacheShard(4)), vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]);
        assert_eq!(topo.pods(Scope::CacheShard(5)), vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]);
        assert_eq!(topo.pods(Scope::CacheShard(10)), vec![(0..10).collect::<Vec<_>>()]);
    }

    #[test]
    fn restrict_checks_and_trims_groups() {
        let sys = FakeSys::two_sockets("restrict");
        let topo = Topology::from_sysfs(&sys.0, &(0..16).collect::<Vec<_>>()).unwrap();
        assert_eq!(topo.restrict(&[]).unwrap_err(), TopologyError::EmptyCpuSet);
        let err = topo.restrict(&[1, 20, 21, 23]).unwrap_err();
        assert!(matches!(&err, TopologyError::CpusNotAllowed { missing, .. } if missing == &[20, 21, 23]));
        assert_eq!(err.to_string(), "CPUs 20-21,23 are not allowed to this process (allowed: 0-15)");
        let small = topo.restrict(&[12, 4, 5]).unwrap();
        assert_eq!(small.cpus(), &[4, 5, 12]);
        assert_eq!(small.smt_group(4), Some(&[4, 12][..]));
        assert_eq!(small.smt_group(5), Some(&[5][..]));
        assert_eq!(small.llc_group(12), Some(&[4, 5, 12][..]));
        assert_eq!(small.numa_node(5), Some(1));
        assert!(small.restrict(&[0]).is_err(), "restricting twice only narrows");
    }

    #[test]
    fn ungrouped_topology() {
        let topo = Topology::ungrouped(&[3, 1]).unwrap();
        assert_eq!(topo.pods(Scope::Cache), vec![vec![1], vec![3]]);
        assert_eq!(Topology::ungrouped(&[]).unwrap_err(), TopologyError::EmptyCpuSet);
    }

    #[test]
    fn detect_on_this_machine() {
        let topo = Topology::detect();
        assert!(!topo.cpus().is_empty());
        let allowed = crate::sys::allowed_cpus().unwrap();
        assert_eq!(topo.cpus(), allowed.as_slice());
        for &cpu in topo.cpus() {
            assert!(topo.smt_group(cpu).unwrap().contains(&cpu));
            assert!(topo.llc_group(cpu).unwrap().contains(&cpu));
            assert!(topo.numa_node(cpu).is_some());
        }
    }
}
