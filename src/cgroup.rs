//! The CPU and memory the kernel lets this process use: its cgroup's CPU quota and memory
//! limit (v2 `cpu.max` / `memory.max`, v1 `cpu.cfs_quota_us` / `memory.limit_in_bytes`),
//! else the machine's memory. A pod's limits are invisible to a count of the host's cores,
//! and sizing to the host is how a 16 GiB pod on a 64-core node runs out of memory.
//!
//! The parsing takes file contents and a reader, so the tests need no cgroup of their own.

use std::path::{Path, PathBuf};

/// What the cgroup (or, for memory, the machine) allows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allowance {
    /// CPUs the quota allows (2.5 for `250000 100000`); `None` without a quota.
    pub cpu_quota: Option<f64>,
    /// Bytes of memory the process may use, and where that figure comes from.
    pub memory: Option<(u64, MemorySource)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    Cgroup,
    /// No cgroup limit: the machine's physical memory (`MemTotal`).
    Machine,
}

impl MemorySource {
    pub fn name(self) -> &'static str {
        match self {
            MemorySource::Cgroup => "cgroup limit",
            MemorySource::Machine => "machine memory",
        }
    }
}

/// Reads this process's allowance from /proc and /sys/fs/cgroup. Anything unreadable
/// counts as no limit: a missing figure must not stop a worker from starting.
pub fn read() -> Allowance {
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let text = |path: &str| read(Path::new(path)).unwrap_or_default();
    allowance(
        &text("/proc/self/mountinfo"),
        &text("/proc/self/cgroup"),
        &text("/proc/meminfo"),
        read,
    )
}

/// The allowance from the contents of `/proc/self/mountinfo`, `/proc/self/cgroup` and
/// `/proc/meminfo`, reading cgroup files through `read`.
pub fn allowance(
    mountinfo: &str,
    proc_cgroup: &str,
    meminfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Allowance {
    let v2 = cgroup_dirs(mountinfo, proc_cgroup, None);
    let cpu_dirs = [v2.clone(), cgroup_dirs(mountinfo, proc_cgroup, Some("cpu"))].concat();
    let memory_dirs = [v2, cgroup_dirs(mountinfo, proc_cgroup, Some("memory"))].concat();

    // A parent's limit binds its children too: the tightest on the way up counts.
    let cpu_quota = cpu_dirs
        .iter()
        .filter_map(|dir| {
            read(&dir.join("cpu.max"))
                .and_then(|t| parse_cpu_max(&t))
                .or_else(|| {
                    let quota = read(&dir.join("cpu.cfs_quota_us"))?;
                    let period = read(&dir.join("cpu.cfs_period_us"))?;
                    parse_cfs(&quota, &period)
                })
        })
        .reduce(f64::min);
    let cgroup_memory = memory_dirs
        .iter()
        .filter_map(|dir| {
            read(&dir.join("memory.max"))
                .and_then(|t| parse_memory_max(&t))
                .or_else(|| {
                    read(&dir.join("memory.limit_in_bytes")).and_then(|t| parse_memory_max(&t))
                })
        })
        .min();
    let memory = cgroup_memory
        .map(|bytes| (bytes, MemorySource::Cgroup))
        .or_else(|| parse_mem_total(meminfo).map(|bytes| (bytes, MemorySource::Machine)));
    Allowance { cpu_quota, memory }
}

/// The directories of this process's cgroup, innermost first, up to the hierarchy's mount:
/// for cgroup v2 when `controller` is `None`, else for the v1 hierarchy holding it.
fn cgroup_dirs(mountinfo: &str, proc_cgroup: &str, controller: Option<&str>) -> Vec<PathBuf> {
    // mountinfo: id parent dev root mountpoint options... - fstype source superoptions
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (root, point) = (*left.get(3)?, *left.get(4)?);
        let matches = match controller {
            None => right.first() == Some(&"cgroup2"),
            Some(c) => {
                right.first() == Some(&"cgroup")
                    && right
                        .get(2)
                        .is_some_and(|opts| opts.split(',').any(|o| o == c))
            }
        };
        matches.then(|| (root.to_owned(), PathBuf::from(point)))
    });
    // /proc/self/cgroup: hierarchy-id:controllers:path; v2's line is 0::path.
    let path = proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_owned())
    });
    let (Some((root, point)), Some(path)) = (mount, path) else {
        return Vec::new();
    };
    // Inside a container the mount's root is the container's own cgroup.
    let relative = path.strip_prefix(root.as_str()).unwrap_or(&path);
    let mut dir = point.clone();
    dir.extend(relative.split('/').filter(|p| !p.is_empty() && *p != ".."));
    let mut dirs = vec![dir.clone()];
    while dir != point && dir.pop() {
        dirs.push(dir.clone());
    }
    dirs
}

/// `cpu.max`: `QUOTA PERIOD`, or `max PERIOD` for none.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let (quota, period) = (parts.next()?, parts.next()?);
    cpus(quota.parse().ok()?, period.parse().ok()?)
}

/// v1: `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    cpus(quota.trim().parse().ok()?, period.trim().parse().ok()?)
}

fn cpus(quota: i64, period: i64) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// `memory.max` (`max` for none) or v1's `memory.limit_in_bytes`, where no limit reads
/// as a number near 2^63.
fn parse_memory_max(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes > 0 && bytes < 1 << 60).then_some(bytes)
}

/// `/proc/meminfo`'s `MemTotal:  16316412 kB`.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MEMINFO: &str = "MemTotal:       24683876 kB\nMemFree:         2924448 kB\n";

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |path| map.get(path).cloned()
    }

    #[test]
    fn v2_pod_with_quota_and_memory_limit() {
        // A pod with its own cgroup namespace: its cgroup is the mount's root.
        let mountinfo = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let got = allowance(
            mountinfo,
            "0::/\n",
            MEMINFO,
            files(&[
                ("/sys/fs/cgroup/cpu.max", "250000 100000\n"),
                ("/sys/fs/cgroup/memory.max", "17179869184\n"),
            ]),
        );
        assert_eq!(got.cpu_quota, Some(2.5));
        assert_eq!(got.memory, Some((16 << 30, MemorySource::Cgroup)));
    }

    #[test]
    fn v2_without_limits_falls_back_to_machine_memory() {
        let mountinfo = "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let got = allowance(
            mountinfo,
            "0::/user.slice/session-3.scope\n",
            MEMINFO,
            files(&[
                (
                    "/sys/fs/cgroup/user.slice/session-3.scope/cpu.max",
                    "max 100000\n",
                ),
                (
                    "/sys/fs/cgroup/user.slice/session-3.scope/memory.max",
                    "max\n",
                ),
                ("/sys/fs/cgroup/user.slice/memory.max", "max\n"),
            ]),
        );
        assert_eq!(got.cpu_quota, None);
        assert_eq!(got.memory, Some((24683876 * 1024, MemorySource::Machine)));
    }

    #[test]
    fn the_tightest_limit_on_the_way_up_counts() {
        let mountinfo = "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let got = allowance(
            mountinfo,
            "0::/kubepods/pod1/ctr\n",
            "",
            files(&[
                ("/sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "max\n"),
                ("/sys/fs/cgroup/kubepods/pod1/memory.max", "8589934592\n"),
                ("/sys/fs/cgroup/kubepods/memory.max", "68719476736\n"),
                ("/sys/fs/cgroup/kubepods/pod1/cpu.max", "400000 100000\n"),
                ("/sys/fs/cgroup/kubepods/cpu.max", "3200000 100000\n"),
            ]),
        );
        assert_eq!(got.memory, Some((8 << 30, MemorySource::Cgroup)));
        assert_eq!(got.cpu_quota, Some(4.0));
    }

    #[test]
    fn v1_hierarchies_with_a_container_root() {
        // Docker on cgroup v1 without a cgroup namespace: the mount root is the container's
        // cgroup, which /proc/self/cgroup names in full.
        let mountinfo = "\
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
        let proc_cgroup = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n";
        let got = allowance(
            mountinfo,
            proc_cgroup,
            MEMINFO,
            files(&[
                ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n"),
                ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
                (
                    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                    "2147483648\n",
                ),
            ]),
        );
        assert_eq!(got.cpu_quota, Some(1.5));
        assert_eq!(got.memory, Some((2 << 30, MemorySource::Cgroup)));
    }

    #[test]
    fn v1_unlimited_reads_as_no_limit() {
        let mountinfo = "\
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        let proc_cgroup = "4:memory:/process_api/x\n1:cpu:/\n0::/\n";
        let got = allowance(
            mountinfo,
            proc_cgroup,
            MEMINFO,
            files(&[
                (
                    "/sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes",
                    "9223372036854771712\n",
                ),
                (
                    "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                    "9223372036854771712\n",
                ),
                ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n"),
                ("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
            ]),
        );
        assert_eq!(got.cpu_quota, None);
        assert_eq!(got.memory, Some((24683876 * 1024, MemorySource::Machine)));
    }

    #[test]
    fn nothing_readable_is_no_limit() {
        let got = allowance("", "", "", |_: &Path| None);
        assert_eq!(got, Allowance::default());
    }

    #[test]
    fn parsers_refuse_what_is_not_a_limit() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("-1", "100000"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("0"), None);
        assert_eq!(parse_memory_max("1073741824"), Some(1 << 30));
        assert_eq!(parse_mem_total("MemFree: 1 kB"), None);
    }
}
