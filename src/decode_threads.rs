//! How many decode threads a process runs by default: as many as it has CPUs for, and no
//! more than its memory holds when every one of them decodes the costliest image allowed
//! at once. Decode memory is per thread, so the count is what turns a per-image budget
//! into a bound on the worker.

use crate::cgroup::Allowance;

/// Memory kept for everything but decoding (model sessions, the runtime, fetched bytes in
/// flight): a quarter of the limit, and at least this much.
const MIN_RESERVE: u64 = 1 << 30;

/// The chosen count and what bound it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub threads: usize,
    /// `cores`, `cpu quota`, `cgroup limit` or `machine memory`.
    pub bound: &'static str,
}

/// Threads for `cores` available cores and the `allowance`, each thread holding up to
/// `per_thread` bytes, with `reserved` bytes promised elsewhere (the pixel budget).
pub fn size(cores: usize, allowance: &Allowance, per_thread: u64, reserved: u64) -> Sizing {
    let mut sizing = Sizing {
        threads: cores.max(1),
        bound: "cores",
    };
    if let Some(quota) = allowance.cpu_quota {
        // As std's available_parallelism rounds a quota: down, but at least one.
        let cpus = (quota.floor() as usize).max(1);
        if cpus < sizing.threads {
            sizing = Sizing {
                threads: cpus,
                bound: "cpu quota",
            };
        }
    }
    if let Some((limit, source)) = allowance.memory {
        let reserve = MIN_RESERVE.max(limit / 4).saturating_add(reserved);
        let fits = limit.saturating_sub(reserve) / per_thread.max(1);
        let threads = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
        if threads < sizing.threads {
            sizing = Sizing {
                threads,
                bound: source.name(),
            };
        }
    }
    sizing
}

/// [`size`] for this process, logged once: the count and why.
pub fn choose(per_thread: u64, reserved: u64) -> usize {
    let allowance = crate::cgroup::read();
    let cores = crate::engine::cores();
    let sizing = size(cores, &allowance, per_thread, reserved);
    let cpu_quota = allowance
        .cpu_quota
        .map_or_else(|| "none".to_owned(), |q| q.to_string());
    let memory = allowance.memory.map_or_else(
        || "unknown".to_owned(),
        |(bytes, source)| format!("{} MiB ({})", bytes >> 20, source.name()),
    );
    tracing::info!(
        threads = sizing.threads,
        bound = sizing.bound,
        cores,
        cpu_quota = %cpu_quota,
        memory = %memory,
        per_thread_mib = per_thread >> 20,
        reserved_mib = reserved >> 20,
        "decode threads"
    );
    sizing.threads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::MemorySource;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn allowance(cpu_quota: Option<f64>, memory: Option<u64>) -> Allowance {
        Allowance {
            cpu_quota,
            memory: memory.map(|m| (m, MemorySource::Cgroup)),
        }
    }

    #[test]
    fn the_helm_pod_on_a_big_node_is_bound_by_memory() {
        // 16 GiB, no CPU limit, 64 cores; 512 MiB decode + 50 MiB encoded a thread, the
        // 2 GiB pixel budget reserved: (16 - 4 - 2) GiB / 562 MiB.
        let got = size(64, &allowance(None, Some(16 * GIB)), 562 * MIB, 2 * GIB);
        assert_eq!(got.threads, 18);
        assert_eq!(got.bound, "cgroup limit");
    }

    #[test]
    fn a_cpu_quota_bounds_below_the_cores() {
        let got = size(64, &allowance(Some(3.5), Some(64 * GIB)), 562 * MIB, 0);
        assert_eq!(
            got,
            Sizing {
                threads: 3,
                bound: "cpu quota"
            }
        );
        assert_eq!(size(64, &allowance(Some(0.2), None), MIB, 0).threads, 1);
    }

    #[test]
    fn cores_bound_a_roomy_machine() {
        let got = size(8, &allowance(None, Some(256 * GIB)), 562 * MIB, 2 * GIB);
        assert_eq!(
            got,
            Sizing {
                threads: 8,
                bound: "cores"
            }
        );
        assert_eq!(size(0, &Allowance::default(), MIB, 0).threads, 1);
    }

    #[test]
    fn too_little_memory_still_leaves_one_thread() {
        let got = size(16, &allowance(None, Some(GIB)), 562 * MIB, 2 * GIB);
        assert_eq!(got.threads, 1);
        assert_eq!(got.bound, "cgroup limit");
    }

    #[test]
    fn a_quarter_is_kept_above_the_minimum_reserve() {
        // 8 GiB: 2 GiB kept, 6 GiB / 1 GiB a thread.
        assert_eq!(size(64, &allowance(None, Some(8 * GIB)), GIB, 0).threads, 6);
        // 2 GiB: the 1 GiB minimum is kept.
        assert_eq!(
            size(64, &allowance(None, Some(2 * GIB)), 256 * MIB, 0).threads,
            4
        );
    }
}
