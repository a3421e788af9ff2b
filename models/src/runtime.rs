//! Loading ONNX Runtime. The shared library is loaded at run time (ort's `load-dynamic`),
//! found from an explicit path, else the project's virtualenv, which `make venv` fills
//! with the PyPI `onnxruntime` wheel. Nothing is downloaded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// Environment variable the ONNX Runtime library path is read from by the CLI.
pub const DYLIB_ENV: &str = "TAGFLEET_ORT_DYLIB";

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in: {searched}); run `make venv` to install the \
         onnxruntime wheel into .venv, or pass --ort-dylib / set {DYLIB_ENV} to the path of \
         libonnxruntime.so.1.x"
    )]
    NotFound { searched: String },
    #[error("loading ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
/// `explicit` wins over the search; later calls return the first result.
pub fn environment(explicit: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = find_library(explicit)?;
            // ort's Display hides the cause; its Debug carries it.
            let load_error = |message: String| RuntimeError::Load {
                path: path.clone(),
                message,
            };
            let builder = ort::init_from(&path).map_err(|e| load_error(format!("{e:?}")))?;
            // Telemetry off: Microsoft's builds otherwise send usage events and keep a device
            // id and an event database under ~/.cache. Nothing of ours leaves the process.
            let env = builder
                .with_name("tagfleet")
                .with_telemetry(false)
                .build()
                .map_err(|e| load_error(format!("{e:?}")))?;
            tracing::info!(library = %path.display(), "ONNX Runtime loaded");
            Ok(env)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Finds `libonnxruntime`: the explicit path, then `$VIRTUAL_ENV`, `./.venv`, and a
/// `.venv` beside any folder above the running binary (`target/release/tagfleet`).
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(RuntimeError::NotFound {
                searched: format!("{} (given explicitly)", path.display()),
            })
        };
    }
    let venvs = candidate_venvs();
    for venv in &venvs {
        if let Some(lib) = library_in_venv(venv) {
            return Ok(lib);
        }
    }
    let searched: Vec<String> = venvs.iter().map(|v| v.display().to_string()).collect();
    Err(RuntimeError::NotFound {
        searched: searched.join(", "),
    })
}

pub(crate) fn candidate_venvs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        out.push(PathBuf::from(venv));
    }
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(".venv"));
    }
    if let Ok(exe) = std::env::current_exe() {
        out.extend(exe.ancestors().skip(1).map(|dir| dir.join(".venv")));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// `<venv>/lib/python3.*/site-packages` folders.
pub(crate) fn site_packages(venv: &Path) -> Vec<PathBuf> {
    let Ok(lib) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    lib.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect()
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>`.
fn library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()))
        .filter(|p| is_runtime_library(p))
        .collect();
    found.sort();
    found.pop()
}

fn is_runtime_library(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("libonnxruntime.so")
        || name.starts_with("libonnxruntime.") && name.ends_with(".dylib")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_library_in_a_venv_layout() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir
            .path()
            .join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(
            library_in_venv(dir.path()),
            None,
            "the providers library is not the runtime"
        );
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(
            library_in_venv(dir.path()),
            Some(capi.join("libonnxruntime.so.1.31.1"))
        );
    }

    #[test]
    fn a_missing_explicit_path_says_how_to_get_the_library() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
        assert!(
            err.contains("make venv") && err.contains(DYLIB_ENV),
            "{err}"
        );
    }
}
