//! Models for tagfleet: the model repository (`model.toml`), decoding, preprocessing,
//! the [`Backend`] inference boundary with its ONNX Runtime implementation, and
//! postprocessing.

pub mod analysis;
pub mod backend;
pub mod categorizer;
pub mod decode;
pub mod devices;
pub mod gpu_preprocess;
#[cfg(any(test, feature = "hostile-images"))]
pub mod hostile;
pub mod ort_backend;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod spec;
pub mod taxonomy;

pub use backend::{Backend, BackendError, BatchOutput, Device};
pub use decode::{DecodeLimits, Decoded, decode, decode_cost, decode_to_fit};
pub use ort_backend::OrtBackend;
pub use postprocess::Classes;
pub use preprocess::Preprocessor;
pub use spec::ModelSpec;

/// The model and photos the unit tests run on: the checkout's, or where
/// `$TAGFLEET_MODELS_DIR` and `$TAGFLEET_TEST_PHOTOS` say (the GPU check runs the test
/// binary away from the checkout).
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    use crate::{Decoded, ModelSpec};

    fn folder(var: &str, default: &str) -> PathBuf {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default))
    }

    pub fn model() -> ModelSpec {
        ModelSpec::load(&folder("TAGFLEET_MODELS_DIR", ".").join("efficientnet-lite0"))
            .expect("the model spec is committed")
    }

    /// One sample photo, decoded as the worker decodes it (orientation applied).
    pub fn photo(name: &str) -> image::RgbImage {
        let path = folder("TAGFLEET_TEST_PHOTOS", "../samples/photos").join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (make photos extracts them)", path.display()));
        crate::decode(&bytes, Default::default()).unwrap().pixels
    }

    /// The sample photos, decoded, in name order.
    pub fn photos() -> Vec<Decoded> {
        let dir = folder("TAGFLEET_TEST_PHOTOS", "../samples/photos");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (make photos extracts them)", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
            .collect();
        files.sort();
        let photos: Vec<Decoded> = files
            .iter()
            .filter_map(|p| crate::decode(&std::fs::read(p).unwrap(), Default::default()).ok())
            .collect();
        assert!(photos.len() >= 5, "real photos to compare on");
        photos
    }
}
