//! Which devices run the model. GPUs are found at run time through the CUDA driver
//! library (cudarc, loaded dynamically), so one binary runs everywhere: with no driver,
//! no GPU, or `--devices cpu`, every executor is a CPU one, and a log line says why.

use std::fmt;
use std::str::FromStr;

use crate::backend::Device;

/// What `--devices` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every GPU found, else the CPU.
    All,
    /// The CPU only.
    Cpu,
    /// These GPU ordinals, each of which must exist.
    Gpus(Vec<u32>),
}

impl FromStr for Selection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(Selection::All),
            "cpu" => Ok(Selection::Cpu),
            list => {
                let ordinals: Result<Vec<u32>, _> =
                    list.split(',').map(|o| o.trim().parse::<u32>()).collect();
                match ordinals {
                    Ok(mut o) if !o.is_empty() => {
                        o.sort_unstable();
                        o.dedup();
                        Ok(Selection::Gpus(o))
                    }
                    _ => Err(format!(
                        "{s:?}: expected all, cpu, or GPU ordinals such as 0,1"
                    )),
                }
            }
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::All => f.write_str("all"),
            Selection::Cpu => f.write_str("cpu"),
            Selection::Gpus(o) => {
                let list: Vec<String> = o.iter().map(u32::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// A GPU the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub ordinal: u32,
    pub name: String,
}

/// What the machine has, and why there are no GPUs when there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub gpus: Vec<Gpu>,
    pub why_none: Option<String>,
}

/// Asks the CUDA driver for its GPUs. Never panics: cudarc panics when the driver
/// library is missing, so its presence is checked first.
pub fn discover() -> Discovery {
    let none = |why: String| Discovery {
        gpus: Vec::new(),
        why_none: Some(why),
    };
    // SAFETY: only tries to dlopen the driver library; nothing else is called yet.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return none("the CUDA driver library (libcuda.so) is not installed".into());
    }
    let count = match cudarc::driver::CudaContext::device_count() {
        Ok(n) => n.max(0) as u32,
        Err(e) => return none(format!("the CUDA driver reports an error: {e:?}")),
    };
    if count == 0 {
        return none("the CUDA driver sees no GPU".into());
    }
    let gpus = (0..count)
        .map(|ordinal| {
            let name = cudarc::driver::CudaContext::new(ordinal as usize)
                .and_then(|ctx| ctx.name())
                .unwrap_or_else(|e| format!("unnamed ({e:?})"));
            Gpu { ordinal, name }
        })
        .collect();
    Discovery {
        gpus,
        why_none: None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--devices {selection}: {reason}")]
pub struct DeviceError {
    pub selection: String,
    pub reason: String,
}

/// One device per executor. Explicitly named GPUs must exist: asking for GPU 0 on a
/// machine without one is a start-up error, not a quiet fall back to the CPU.
pub fn plan(selection: &Selection, found: &Discovery) -> Result<Vec<Device>, DeviceError> {
    match selection {
        Selection::Cpu => Ok(vec![Device::Cpu]),
        Selection::All if found.gpus.is_empty() => Ok(vec![Device::Cpu]),
        Selection::All => Ok(found.gpus.iter().map(|g| Device::Cuda(g.ordinal)).collect()),
        Selection::Gpus(ordinals) => {
            let missing: Vec<u32> = ordinals
                .iter()
                .copied()
                .filter(|o| !found.gpus.iter().any(|g| g.ordinal == *o))
                .collect();
            if missing.is_empty() {
                return Ok(ordinals.iter().map(|o| Device::Cuda(*o)).collect());
            }
            let have = match (&found.why_none, found.gpus.len()) {
                (Some(why), _) => format!("this machine has no GPU: {why}"),
                (None, n) => format!("this machine has {n} GPU(s), ordinals 0..{}", n - 1),
            };
            Err(DeviceError {
                selection: selection.to_string(),
                reason: format!(
                    "GPU {missing:?} was asked for, but {have}; use --devices cpu or all"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(gpus: u32) -> Discovery {
        Discovery {
            gpus: (0..gpus)
                .map(|ordinal| Gpu {
                    ordinal,
                    name: format!("gpu{ordinal}"),
                })
                .collect(),
            why_none: (gpus == 0).then(|| "no driver".to_owned()),
        }
    }

    #[test]
    fn selections_parse() {
        assert_eq!("all".parse(), Ok(Selection::All));
        assert_eq!("cpu".parse(), Ok(Selection::Cpu));
        assert_eq!("1, 0,1".parse(), Ok(Selection::Gpus(vec![0, 1])));
        assert!("gpu".parse::<Selection>().unwrap_err().contains("0,1"));
        assert!("".parse::<Selection>().is_err());
    }

    #[test]
    fn plans_follow_the_selection_and_the_machine() {
        assert_eq!(
            plan(&Selection::All, &machine(2)),
            Ok(vec![Device::Cuda(0), Device::Cuda(1)])
        );
        assert_eq!(plan(&Selection::All, &machine(0)), Ok(vec![Device::Cpu]));
        assert_eq!(plan(&Selection::Cpu, &machine(2)), Ok(vec![Device::Cpu]));
        assert_eq!(
            plan(&Selection::Gpus(vec![1]), &machine(2)),
            Ok(vec![Device::Cuda(1)])
        );
        let err = plan(&Selection::Gpus(vec![0]), &machine(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no GPU") && err.contains("no driver"), "{err}");
        let err = plan(&Selection::Gpus(vec![3]), &machine(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[3]") && err.contains("2 GPU"), "{err}");
    }

    /// On this machine (and in CI) there is no CUDA driver: discovery must say so, not panic.
    #[test]
    fn discovery_without_a_driver_finds_no_gpu_and_says_why() {
        let found = discover();
        if found.gpus.is_empty() {
            assert!(found.why_none.is_some(), "{found:?}");
        } else {
            assert!(found.why_none.is_none());
        }
    }
}
