//! `model.toml`: what a model needs and gives. A user drops another ONNX classifier into
//! its own folder with such a file and runs it by name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::taxonomy::{Taxonomy, TaxonomyError};

/// A model folder, parsed and checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub kind: ModelKind,
    /// ONNX file, relative to the model folder.
    pub onnx: PathBuf,
    /// One label per line, in output order.
    pub labels: PathBuf,
    /// Each label's WordNet synset and hypernyms (`scripts/build_taxonomy.py`): what tag
    /// synsets, parent tags and categories come from. A model without one offers none.
    #[serde(default)]
    pub taxonomy: Option<PathBuf>,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    #[serde(default)]
    pub batch: BatchSpec,
    /// The folder this spec was read from; relative paths resolve against it.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logits over labels, optionally a pooled embedding.
    Classifier,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Fraction of the shorter side kept by the centre crop (1.0 keeps the whole side).
    #[serde(default = "one")]
    pub crop_fraction: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub logits: String,
    /// Output holding the pooled features, when the model exposes one.
    pub embedding: Option<String>,
}

/// Dynamic batching defaults for this model; flags override them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Largest batch on CPU executors.
    pub max_batch: usize,
    /// Largest batch when the executors run on GPUs (which want far bigger batches);
    /// default: `max_batch`.
    #[serde(default)]
    pub max_batch_gpu: Option<usize>,
    pub max_delay_ms: u64,
}

impl BatchSpec {
    /// The model's largest batch on executors of this kind of device.
    pub fn max_batch_on(&self, gpu: bool) -> usize {
        match (gpu, self.max_batch_gpu) {
            (true, Some(n)) => n,
            _ => self.max_batch,
        }
    }
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_batch_gpu: None,
            max_delay_ms: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("model file {path} is missing; build it with `make model` (scripts/build_model.py)")]
    MissingOnnx { path: PathBuf },
}

impl ModelSpec {
    /// Reads `<dir>/model.toml` and the labels, and checks that the ONNX file exists.
    pub fn load(dir: &Path) -> Result<Self, SpecError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let mut spec: ModelSpec = toml::from_str(&text).map_err(|e| SpecError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        spec.dir = dir.to_path_buf();
        spec.validate()
            .map_err(|message| SpecError::Invalid { path, message })?;
        if !spec.onnx_path().is_file() {
            return Err(SpecError::MissingOnnx {
                path: spec.onnx_path(),
            });
        }
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        let input = &self.input;
        if input.width == 0 || input.height == 0 || input.width > 4096 || input.height > 4096 {
            return Err(format!(
                "input size {}x{} is outside 1..=4096",
                input.width, input.height
            ));
        }
        if !(input.crop_fraction > 0.0 && input.crop_fraction <= 1.0) {
            return Err(format!(
                "input.crop_fraction {} is outside (0, 1]",
                input.crop_fraction
            ));
        }
        if input.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err("input.std must be finite and non-zero".into());
        }
        if self.batch.max_batch == 0 {
            return Err("batch.max_batch must be at least 1".into());
        }
        Ok(())
    }

    /// `name@version`, as written in task messages and results.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.onnx)
    }

    /// Reads the labels file: one label per line.
    pub fn load_labels(&self) -> Result<Vec<String>, SpecError> {
        let path = self.dir.join(&self.labels);
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(text
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Reads the taxonomy file, where the spec names one, for the model's `classes`
    /// labels.
    pub fn load_taxonomy(&self, classes: usize) -> Result<Option<Taxonomy>, TaxonomyError> {
        let Some(file) = &self.taxonomy else {
            return Ok(None);
        };
        Taxonomy::load(&self.dir.join(file), classes).map(Some)
    }

    /// Floats in one input tensor of batch size 1.
    pub fn input_len(&self) -> usize {
        3 * self.input.width as usize * self.input.height as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path, toml: &str) {
        std::fs::write(dir.join("model.toml"), toml).unwrap();
        std::fs::write(dir.join("m.onnx"), b"onnx").unwrap();
        std::fs::write(dir.join("labels.txt"), "cat\ndog\n").unwrap();
    }

    const GOOD: &str = r#"
        name = "m"
        version = "2"
        kind = "classifier"
        onnx = "m.onnx"
        labels = "labels.txt"
        [input]
        name = "input"
        width = 224
        height = 224
        mean = [127.0, 127.0, 127.0]
        std = [128.0, 128.0, 128.0]
        [outputs]
        logits = "logits"
    "#;

    #[test]
    fn loads_a_spec_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), GOOD);
        let spec = ModelSpec::load(dir.path()).unwrap();
        assert_eq!(spec.id(), "m@2");
        assert_eq!(spec.input.crop_fraction, 1.0);
        assert_eq!(spec.batch, BatchSpec::default());
        assert_eq!(spec.load_labels().unwrap(), ["cat", "dog"]);
        assert_eq!(spec.input_len(), 3 * 224 * 224);
    }

    #[test]
    fn unknown_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_model(
            dir.path(),
            &GOOD.replace("kind =", "colour = \"red\"\nkind ="),
        );
        let err = ModelSpec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_model(
            dir.path(),
            &GOOD.replace("std = [128.0, 128.0, 128.0]", "std = [0.0, 1.0, 1.0]"),
        );
        let err = ModelSpec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("input.std"), "{err}");
    }

    #[test]
    fn missing_onnx_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), GOOD);
        std::fs::remove_file(dir.path().join("m.onnx")).unwrap();
        let err = ModelSpec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("make model"), "{err}");
    }

    #[test]
    fn gpus_get_their_own_batch_size() {
        let spec =
            ModelSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("efficientnet-lite0"))
                .unwrap();
        assert_eq!(spec.batch.max_batch_on(false), 16);
        assert_eq!(spec.batch.max_batch_on(true), 128);
        let cpu_only = BatchSpec::default();
        assert_eq!(cpu_only.max_batch_on(true), cpu_only.max_batch);
    }
}
