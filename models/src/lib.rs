//! Models for tagfleet: the model repository (`model.toml`), decoding, preprocessing,
//! the [`Backend`] inference boundary with its ONNX Runtime implementation, and
//! postprocessing.

pub mod backend;
pub mod decode;
pub mod devices;
pub mod gpu_preprocess;
pub mod ort_backend;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod spec;

pub use backend::{Backend, BackendError, BatchOutput, Device};
pub use decode::{DecodeLimits, Decoded, decode};
pub use ort_backend::OrtBackend;
pub use preprocess::Preprocessor;
pub use spec::ModelSpec;
