//! ONNX Runtime as a [`Backend`]: one session, owned by one executor thread.

use std::path::Path;

use ort::ep;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{Shape, TensorRef, TensorRefMut};

use crate::backend::{Backend, BackendError, BatchOutput, Device};
use crate::decode::Decoded;
use crate::gpu_preprocess::GpuPreprocessor;
use crate::preprocess::Crop;
use crate::runtime;
use crate::spec::ModelSpec;

pub struct OrtBackend {
    session: Session,
    /// The device this executor was created for.
    requested: Device,
    /// The device it really runs on (the CPU after a failed CUDA registration).
    device: Device,
    names: Names,
    shape: [usize; 3],
    /// Preprocessing on the session's GPU, when it runs on one and the kernel loaded.
    on_device: Option<GpuPreprocessor>,
}

/// ort errors print their cause only in Debug.
fn backend_error(
    what: &str,
) -> impl Fn(ort::Error<ort::session::builder::SessionBuilder>) -> BackendError + '_ {
    move |e| BackendError::new(format!("{what}: {e:?}"))
}

/// Session options shared by every device: every graph optimisation (ONNX Runtime's own
/// default), `threads` intra-op threads that do not spin (spinning would burn the cores
/// the decoders need).
fn builder(threads: usize, dylib: Option<&Path>) -> Result<SessionBuilder, BackendError> {
    let env = runtime::environment(dylib).map_err(|e| BackendError::new(e.to_string()))?;
    Session::builder(env)
        .map_err(|e| BackendError::new(format!("creating session options: {e:?}")))?
        .with_optimization_level(GraphOptimizationLevel::All)
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
    ///
    /// With `preprocess`, images are cropped, resized and normalised on the same GPU by the
    /// NVRTC kernel ([`Backend::run_pixels`]), into device memory the session reads in
    /// place. Where the kernel cannot be loaded, the reason is logged and preprocessing
    /// stays on the CPU.
    pub fn cuda(
        spec: &ModelSpec,
        ordinal: u32,
        memory_limit: Option<usize>,
        preprocess: bool,
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
        let mut backend = Self::from_session(session, Device::Cuda(ordinal), device, spec)?;
        if preprocess && device != Device::Cpu {
            match GpuPreprocessor::new(ordinal as usize, &spec.input) {
                Ok(gpu) => {
                    tracing::info!(
                        gpu = ordinal,
                        "preprocessing on the GPU: uint8 pixels in, the model's tensor stays in device memory"
                    );
                    backend.on_device = Some(gpu);
                }
                Err(e) => {
                    tracing::warn!(gpu = ordinal, error = %e, "GPU preprocessing unavailable: this executor's images are preprocessed on the CPU");
                }
            }
        }
        Ok(backend)
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
            names: Names {
                input: spec.input.name.clone(),
                logits: spec.outputs.logits.clone(),
                embedding: spec.outputs.embedding.clone(),
            },
            shape: [3, spec.input.height as usize, spec.input.width as usize],
            on_device: None,
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
        self.names
            .infer(&mut self.session, tensor.into(), n, want_embedding)
    }

    fn preprocesses(&self) -> bool {
        self.on_device.is_some()
    }

    fn run_pixels(
        &mut self,
        images: &[(&Decoded, Crop)],
        want_embedding: bool,
    ) -> Result<BatchOutput, BackendError> {
        let Device::Cuda(ordinal) = self.device else {
            return Err(BackendError::new("pixels given to a CPU session"));
        };
        let gpu = self
            .on_device
            .as_mut()
            .ok_or_else(|| BackendError::new("no GPU preprocessing on this executor"))?;
        let [c, h, w] = self.shape;
        let n = images.len();
        let stream = gpu.stream().clone();
        let batch = gpu
            .run(images)
            .map_err(|e| BackendError::new(format!("preprocessing on cuda:{ordinal}: {e}")))?;
        let (pointer, _recorded) = cudarc::driver::DevicePtr::device_ptr(&batch, &stream);
        let location = MemoryInfo::new(
            AllocationDevice::CUDA,
            ordinal as i32,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| BackendError::new(format!("describing device memory: {e:?}")))?;
        let shape = Shape::new([n, c, h, w].map(|d| d as i64));
        // SAFETY: `pointer` is `batch`'s device memory on GPU `ordinal`, n*c*h*w floats,
        // written and synchronised by `run`; `batch` borrows the preprocessor, so the
        // memory outlives the session run below, the tensor's only use.
        let tensor = unsafe { TensorRefMut::<f32>::from_raw(location, pointer as *mut _, shape) }
            .map_err(|e| BackendError::new(format!("wrapping device memory: {e:?}")))?;
        self.names
            .infer(&mut self.session, tensor.into(), n, want_embedding)
    }
}

/// The model's tensor names.
struct Names {
    input: String,
    logits: String,
    embedding: Option<String>,
}

impl Names {
    /// Runs `session` on one input; copies out the logits, and the embedding when asked
    /// for (ONNX Runtime hands outputs over in host memory).
    fn infer(
        &self,
        session: &mut Session,
        input: SessionInputValue<'_>,
        n: usize,
        want_embedding: bool,
    ) -> Result<BatchOutput, BackendError> {
        let outputs = session
            .run(ort::inputs![self.input.as_str() => input])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Preprocessor;
    use crate::gpu_preprocess::reference;
    use crate::test_support::{model, photos};

    /// The session reads the kernel's output in device memory and gives the logits and
    /// embeddings of the same session run on the reference tensors from the host (the
    /// kernel equals the reference to 1e-5; a wrong pointer, shape or layout would be off
    /// by whole units). Needs a GPU and a CUDA-enabled ONNX Runtime (`$TAGFLEET_ORT_DYLIB`,
    /// else the virtualenv's); without them it fails, never passes unrun.
    #[test]
    #[ignore = "needs a CUDA GPU and a CUDA-enabled ONNX Runtime: make test-gpu"]
    fn the_session_reads_gpu_preprocessed_pixels_in_place() {
        let spec = model();
        let dylib = std::env::var_os(runtime::DYLIB_ENV).map(std::path::PathBuf::from);
        let mut gpu = OrtBackend::cuda(&spec, 0, None, true, dylib.as_deref()).unwrap();
        assert!(
            gpu.preprocesses(),
            "this GPU test needs a GPU and a CUDA-enabled ONNX Runtime \
             ({} names it): the session runs on {} without GPU preprocessing",
            runtime::DYLIB_ENV,
            gpu.device()
        );
        let pre = Preprocessor::new(&spec.input);
        let photos = photos();
        let images: Vec<(&Decoded, Crop)> = photos
            .iter()
            .map(|p| (p, pre.crop_box(p.width(), p.height())))
            .collect();
        let in_place = gpu.run_pixels(&images, true).unwrap();
        let per_image = pre.tensor_len();
        let mut tensors = vec![0.0; images.len() * per_image];
        for ((image, crop), slot) in images.iter().zip(tensors.chunks_exact_mut(per_image)) {
            reference(image, *crop, &spec.input, slot);
        }
        let from_host = gpu.run(&tensors, images.len(), true).unwrap();
        let worst = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let logits = worst(&in_place.logits, &from_host.logits);
        let embeddings = worst(
            in_place.embeddings.as_deref().unwrap(),
            from_host.embeddings.as_deref().unwrap(),
        );
        eprintln!(
            "{} photos in place vs from the host: max logit difference {logits:e}, max embedding difference {embeddings:e}",
            images.len()
        );
        assert!(logits < 1e-2 && embeddings < 1e-2, "{logits} {embeddings}");
    }
}
