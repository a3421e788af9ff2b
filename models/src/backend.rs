//! The inference boundary. The pipeline talks to a [`Backend`]; ONNX Runtime on a CPU or
//! a GPU is one implementation, and tests can bring their own.

use std::fmt;
use std::sync::Arc;

use crate::decode::Decoded;
use crate::preprocess::Crop;

/// Where a backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    /// `cpu` or `cuda`: what kind of device, whichever one.
    pub fn kind(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What a model gave for a batch: row-major, one row per image.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput {
    pub logits: Vec<f32>,
    pub classes: usize,
    /// Pooled features, when asked for and the model has them.
    pub embeddings: Option<Vec<f32>>,
    pub embedding_dim: usize,
}

impl BatchOutput {
    pub fn logits_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.classes..(i + 1) * self.classes]
    }

    pub fn embedding_row(&self, i: usize) -> Option<&[f32]> {
        let dim = self.embedding_dim;
        self.embeddings.as_ref().map(|e| &e[i * dim..(i + 1) * dim])
    }
}

/// A failed batch. Cheap to clone: one failure is handed to every image of the batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(Arc<str>);

impl BackendError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(Arc::from(message.into()))
    }
}

/// Runs a model on batches. One backend is owned by one executor thread.
pub trait Backend: Send {
    /// The device the backend really runs on.
    fn device(&self) -> Device;

    /// The device it was created for; differs from [`Backend::device`] after a fallback.
    fn requested_device(&self) -> Device {
        self.device()
    }

    /// Runs `n` images laid out contiguously in `input` (NCHW floats).
    fn run(
        &mut self,
        input: &[f32],
        n: usize,
        want_embedding: bool,
    ) -> Result<BatchOutput, BackendError>;

    /// Whether this backend crops, resizes and normalises decoded images on its own
    /// device ([`Backend::run_pixels`]). When one executor's backend does, the decode
    /// threads hand over uint8 pixels instead of float tensors.
    fn preprocesses(&self) -> bool {
        false
    }

    /// Preprocesses decoded images on the device, each with its crop, and runs them.
    /// Called only when [`Backend::preprocesses`] says so.
    fn run_pixels(
        &mut self,
        images: &[(&Decoded, Crop)],
        want_embedding: bool,
    ) -> Result<BatchOutput, BackendError> {
        let _ = (images, want_embedding);
        Err(BackendError::new(
            "this backend takes preprocessed tensors, not pixels",
        ))
    }
}
