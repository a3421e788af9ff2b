//! Choosing and loading a model and its backends: shared by `run` and `bench`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_models::devices::{self, Selection};
use tagfleet_models::{Backend, Classes, Device, ModelSpec, OrtBackend};

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Model to run: a folder name in the models directory.
    #[arg(long, env = "TAGFLEET_MODEL", default_value = "efficientnet-lite0")]
    pub model: String,

    /// Folder holding one sub-folder per model (model.toml, model.onnx, labels). Default:
    /// ./models, else the models folder of the checkout the binary was built in.
    #[arg(long, env = "TAGFLEET_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,

    /// Folder of extra categorizers (`<name>.toml`: categories and the WordNet synsets
    /// under each) that jobs may choose with `options.categorizer`, besides the built-in
    /// `general` and `retail` (a file of the same name replaces one). A file naming a
    /// synset the model does not know stops start-up.
    #[arg(long, env = "TAGFLEET_CATEGORIZERS_DIR")]
    pub categorizers_dir: Option<PathBuf>,

    /// Path of the ONNX Runtime shared library (libonnxruntime.so.1.x). Default: the
    /// onnxruntime wheel in $VIRTUAL_ENV or ./.venv (`make venv` creates it).
    #[arg(long, env = "TAGFLEET_ORT_DYLIB")]
    pub ort_dylib: Option<PathBuf>,

    /// Devices that run the model: all (every GPU, else the CPU), cpu, or GPU ordinals
    /// such as 0,1 (each must exist).
    #[arg(long, env = "TAGFLEET_DEVICES", default_value = "all")]
    pub devices: Selection,

    /// GPU memory one session may use, in MiB. Default: ONNX Runtime's (no limit).
    #[arg(long, env = "TAGFLEET_GPU_MEM_LIMIT_MIB")]
    pub gpu_mem_limit_mib: Option<usize>,

    /// CPU executors: ONNX Runtime sessions, each running its own batches. Default: one
    /// per core. A batch split over several threads costs more CPU per image (the threads
    /// hand over at every layer) than one thread running it whole, so by default every
    /// core runs whole batches of its own.
    #[arg(long, env = "TAGFLEET_CPU_EXECUTORS")]
    pub cpu_executors: Option<usize>,

    /// Threads each CPU executor uses inside one batch. Default: the cores shared out
    /// among the CPU executors (1 with the default executors).
    #[arg(long, env = "TAGFLEET_INTRA_THREADS")]
    pub intra_threads: Option<usize>,

    /// Where images are cropped, resized and normalised. gpu: on each GPU executor's
    /// device by a CUDA kernel (uint8 pixels cross PCIe, the float tensor stays on the
    /// GPU), and on the CPU wherever that is unavailable; cpu: always in the decode threads.
    #[arg(long, env = "TAGFLEET_PREPROCESS", value_enum, default_value_t = PreprocessOn::Gpu)]
    pub preprocess: PreprocessOn,
}

/// `--preprocess`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreprocessOn {
    Gpu,
    Cpu,
}

/// A loaded model: its spec and what its outputs mean.
pub struct Model {
    pub spec: ModelSpec,
    pub classes: Arc<Classes>,
}

impl EngineArgs {
    pub fn load_model(&self) -> anyhow::Result<Model> {
        let dir = self.models_dir()?.join(&self.model);
        if !dir.join("model.toml").is_file() {
            bail!(
                "model {:?} not found: no {}",
                self.model,
                dir.join("model.toml").display()
            );
        }
        let spec = ModelSpec::load(&dir)?;
        let classes = Classes::load(&spec, self.categorizers_dir.as_deref())?;
        Ok(Model {
            spec,
            classes: Arc::new(classes),
        })
    }

    fn models_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.models_dir {
            return Ok(dir.clone());
        }
        let mut candidates = vec![PathBuf::from("models")];
        if let Ok(exe) = std::env::current_exe() {
            candidates.extend(exe.ancestors().skip(1).map(|d| d.join("models")));
        }
        candidates
            .into_iter()
            .find(|d| d.is_dir())
            .context("no models folder found: pass --models-dir or run from the project folder")
    }

    /// CPU executors to start when the model runs on the CPU.
    pub fn cpu_executors(&self) -> usize {
        self.cpu_executors.unwrap_or_else(cores).max(1)
    }

    /// Intra-op threads of each CPU executor.
    pub fn threads(&self) -> usize {
        self.intra_threads
            .unwrap_or_else(|| cores() / self.cpu_executors())
            .max(1)
    }

    /// One backend per device of `--devices`: one executor thread each.
    pub fn backends(&self, model: &Model) -> anyhow::Result<Vec<Box<dyn Backend>>> {
        let found = devices::discover();
        let plan = devices::plan(&self.devices, &found)?;
        let id = model.spec.id();
        let mut backends: Vec<Box<dyn Backend>> = Vec::new();
        for device in &plan {
            let sessions = match device {
                Device::Cpu => self.cpu_executors(),
                Device::Cuda(_) => 1,
            };
            for _ in 0..sessions {
                let backend = match device {
                    Device::Cpu => {
                        OrtBackend::cpu(&model.spec, self.threads(), self.ort_dylib.as_deref())
                    }
                    Device::Cuda(n) => {
                        let limit = self.gpu_mem_limit_mib.map(|mib| mib * 1024 * 1024);
                        let on_gpu = self.preprocess == PreprocessOn::Gpu;
                        OrtBackend::cuda(&model.spec, *n, limit, on_gpu, self.ort_dylib.as_deref())
                    }
                };
                backends.push(Box::new(backend.with_context(|| {
                    format!("starting ONNX Runtime for {id} on {device}")
                })?));
            }
        }
        match (&self.devices, &found.why_none) {
            (Selection::Cpu, _) => tracing::info!(
                executors = self.cpu_executors(),
                intra_threads = self.threads(),
                "executing on the CPU, as --devices cpu asks"
            ),
            (_, Some(why)) => {
                tracing::info!(executors = self.cpu_executors(), intra_threads = self.threads(), reason = %why, "no GPU: executing on the CPU")
            }
            (_, None) => {
                let gpus: Vec<String> = found
                    .gpus
                    .iter()
                    .filter(|g| plan.contains(&Device::Cuda(g.ordinal)))
                    .map(|g| format!("cuda:{} ({})", g.ordinal, g.name))
                    .collect();
                tracing::info!(executors = gpus.len(), gpus = %gpus.join(", "), "executing on GPUs, one executor each");
            }
        }
        Ok(backends)
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default tenant key of the embedded mode, kept apart from the results folder.
pub fn default_key_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tagfleet").join("local.key")
}
