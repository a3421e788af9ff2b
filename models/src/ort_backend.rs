//! ONNX Runtime as a [`Backend`]: one session, owned by one executor thread.

use std::path::Path;

use ort::ep;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::TensorRef;

use crate::backend::{Backend, BackendError, BatchOutput, Device};
use crate::runtime;
use crate::spec::ModelSpec;

pub struct OrtBackend {
    session: Session,
    /// The device this executor was created for.
    requested: Device,
    /// The device it really runs on (the CPU after a failed CUDA registration).
    device: Device,
    input: String,
    logits: String,
    embedding: Option<String>,
    shape: [usize; 3],
}

/// ort errors print their cause only in Debug.
fn backend_error(
    what: &str,
) -> impl Fn(ort::Error<ort::session::builder::SessionBuilder>) -> BackendError + '_ {
    move |e| BackendError::new(format!("{what}: {e:?}"))
}

/// Session options shared by every device: full graph optimisation, `threads` intra-op
/// threads that do not spin (spinning would burn the cores the decoders need).
fn builder(threads: usize, dylib: Option<&Path>) -> Result<SessionBuilder, BackendError> {
    let env = runtime::environment(dylib).map_err(|e| BackendError::new(e.to_string()))?;
    Session::builder(env)
        .map_err(|e| BackendError::new(format!("creating session options: {e:?}")))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(backend_error("setting the optimisation level"))?
        .with_intra_threads(threads.max(1))
        .map_err(backend_error("setting intra-op threads"))?
        .with_config_entry("session.intra_op.allow_spinning", "0")
        .map_err(backend_error("disabling intra-op spinning"))
}

fn load_error(spec: &ModelSpec) -> impl Fn(ort::Error) -> BackendError + '_ {
    move |e| BackendError::new(format!("loading {}: {e:?}", spec.onnx_path().display()))
}

impl OrtBackend {
    /// A CPU session of `spec`'s model using `threads` intra-op threads.
    pub fn cpu(
        spec: &ModelSpec,
        threads: usize,
        dylib: Option<&Path>,
    ) -> Result<Self, BackendError> {
        let session = builder(threads, dylib)?
            .commit_from_file(spec.onnx_path())
            .map_err(load_error(spec))?;
        Self::from_session(session, Device::Cpu, Device::Cpu, spec)
    }

    /// A session on GPU `ordinal` through ONNX Runtime's CUDA execution provider, using at
    /// most `memory_limit` bytes of its memory. When the provider cannot be registered (a
    /// CPU-only ONNX Runtime, a missing CUDA library) the session runs on the CPU instead:
    /// the full error is logged and [`Backend::device`] reports the CPU.
    pub fn cuda(
        spec: &ModelSpec,
        ordinal: u32,
        memory_limit: Option<usize>,
        dylib: Option<&Path>,
    ) -> Result<Self, BackendError> {
        let mut cuda = ep::CUDA::default().with_device_id(ordinal as i32);
        if let Some(limit) = memory_limit {
            cuda = cuda.with_memory_limit(limit);
        }
        // One intra-op thread: the GPU does the work, the cores are the decoders'.
        let (mut builder, device) = match builder(1, dylib)?
            .with_execution_providers([cuda.build().error_on_failure()])
        {
            Ok(builder) => (builder, Device::Cuda(ordinal)),
            Err(e) => {
                tracing::error!(gpu = ordinal, error = ?e, "CUDA execution provider unavailable: this executor runs on the CPU");
                (e.recover(), Device::Cpu)
            }
        };
        let session = builder
            .commit_from_file(spec.onnx_path())
            .map_err(load_error(spec))?;
        Self::from_session(session, Device::Cuda(ordinal), device, spec)
    }

    fn from_session(
        session: Session,
        requested: Device,
        device: Device,
        spec: &ModelSpec,
    ) -> Result<Self, BackendError> {
        let has_input = session.inputs().iter().any(|i| i.name() == spec.input.name);
        let has_output = |name: &str| session.outputs().iter().any(|o| o.name() == name);
        if !has_input {
            return Err(BackendError::new(format!(
                "model has no input named {:?}",
                spec.input.name
            )));
        }
        if !has_output(&spec.outputs.logits) {
            return Err(BackendError::new(format!(
                "model has no output named {:?}",
                spec.outputs.logits
            )));
        }
        if let Some(name) = spec.outputs.embedding.as_deref().filter(|n| !has_output(n)) {
            return Err(BackendError::new(format!(
                "model has no output named {name:?}"
            )));
        }
        Ok(Self {
            session,
            requested,
            device,
            input: spec.input.name.clone(),
            logits: spec.outputs.logits.clone(),
            embedding: spec.outputs.embedding.clone(),
            shape: [3, spec.input.height as usize, spec.input.width as usize],
        })
    }
}

impl Backend for OrtBackend {
    fn device(&self) -> Device {
        self.device
    }

    fn requested_device(&self) -> Device {
        self.requested
    }

    fn run(
        &mut self,
        input: &[f32],
        n: usize,
        want_embedding: bool,
    ) -> Result<BatchOutput, BackendError> {
        let [c, h, w] = self.shape;
        if input.len() != n * c * h * w {
            return Err(BackendError::new(format!(
                "batch holds {} floats, expected {n}x{c}x{h}x{w}",
                input.len()
            )));
        }
        let tensor = TensorRef::from_array_view(([n, c, h, w], input))
            .map_err(|e| BackendError::new(format!("wrapping the input tensor: {e:?}")))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| BackendError::new(format!("running the model: {e:?}")))?;
        let extract = |name: &str| -> Result<(usize, Vec<f32>), BackendError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| BackendError::new(format!("no output {name:?}")))?;
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| BackendError::new(format!("reading output {name:?}: {e:?}")))?;
            if n == 0 || data.len() % n != 0 {
                return Err(BackendError::new(format!(
                    "output {name:?} has {} values for {n} images",
                    data.len()
                )));
            }
            Ok((data.len() / n, data.to_vec()))
        };
        let (classes, logits) = extract(&self.logits)?;
        let (embedding_dim, embeddings) = match self.embedding.as_deref().filter(|_| want_embedding)
        {
            Some(name) => {
                let (dim, data) = extract(name)?;
                (dim, Some(data))
            }
            None => (0, None),
        };
        Ok(BatchOutput {
            logits,
            classes,
            embeddings,
            embedding_dim,
        })
    }
}
