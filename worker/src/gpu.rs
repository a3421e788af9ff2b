//! GPU utilisation and memory from NVML, sampled into the metrics registry. NVML comes with
//! the driver (`libnvidia-ml.so.1`, loaded at run time): without a driver there is nothing
//! to sample and the worker says so once.

use std::time::Duration;

use nvml_wrapper::Nvml;

use crate::metrics::{GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_UTILIZATION};

/// Starts a thread that samples every GPU each `interval`; returns how many GPUs it watches,
/// or `None` when NVML is not available here.
pub fn spawn_sampler(interval: Duration) -> Option<u32> {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            tracing::info!(error = %e, "NVML not available: no GPU utilisation metrics");
            return None;
        }
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NVML cannot count the GPUs: no GPU metrics");
            return None;
        }
    };
    std::thread::Builder::new()
        .name("nvml-sampler".into())
        .spawn(move || {
            loop {
                sample(&nvml, count);
                std::thread::sleep(interval);
            }
        })
        .ok()?;
    tracing::info!(
        gpus = count,
        "sampling GPU utilisation and memory through NVML"
    );
    Some(count)
}

fn sample(nvml: &Nvml, count: u32) {
    for index in 0..count {
        let label = index.to_string();
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(gpu = index, error = %e, "NVML device unavailable");
                continue;
            }
        };
        if let Ok(rates) = device.utilization_rates() {
            GPU_UTILIZATION
                .with_label_values(&[&label])
                .set(f64::from(rates.gpu) / 100.0);
        }
        if let Ok(memory) = device.memory_info() {
            GPU_MEMORY_USED
                .with_label_values(&[&label])
                .set(memory.used as i64);
            GPU_MEMORY_TOTAL
                .with_label_values(&[&label])
                .set(memory.total as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_the_sampler_reports_no_gpus_instead_of_failing() {
        // This machine and CI have no NVIDIA driver; on a GPU host the count is real.
        let watched = spawn_sampler(Duration::from_secs(3600));
        if std::path::Path::new("/proc/driver/nvidia/version").exists() {
            assert!(watched.is_some_and(|n| n > 0));
        } else {
            assert_eq!(watched, None);
        }
    }
}
