//! What `tagfleet run` works on: a directory of photos or a manifest of paths, expanded
//! into canonical `file://` refs. Canonical refs make pseudonyms stable: the same file
//! named two ways gets one pseudonym.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tagfleet_contracts::manifest::{self, ManifestFormat};
use tagfleet_contracts::{S3Location, refs};

/// One image to analyse: its ref, and the name shown to the user on their terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub reference: String,
    pub display: String,
}

/// The inputs of a run, and what was passed over.
#[derive(Debug, Default)]
pub struct Inputs {
    pub items: Vec<Input>,
    /// Files in the directory whose extension is not an image's.
    pub skipped: usize,
    /// Sub-folders that could not be listed (no permission, gone while walked): what is in
    /// them is not in the run.
    pub unlisted: usize,
    /// Folders the refs may be read from (the worker's allowed roots).
    pub roots: Vec<PathBuf>,
}

/// A directory is walked recursively (hidden entries skipped); a file named like an image
/// is that one image; any other file is a manifest:
/// one path a line, or JSON Lines with a `ref` field; relative paths are relative to
/// the manifest.
pub fn collect(path: &Path) -> anyhow::Result<Inputs> {
    collect_with(path, false)
}

/// As [`collect`], but manifests may also name `s3://` refs (for `submit`).
pub fn collect_refs(path: &Path) -> anyhow::Result<Inputs> {
    collect_with(path, true)
}

fn collect_with(path: &Path, allow_s3: bool) -> anyhow::Result<Inputs> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading input {}", shown(path)))?;
    if meta.is_dir() {
        let root = path
            .canonicalize()
            .with_context(|| format!("resolving {}", shown(path)))?;
        let mut inputs = Inputs {
            roots: vec![root.clone()],
            ..Inputs::default()
        };
        walk(&root, &root, &mut inputs)?;
        inputs.items.sort_by(|a, b| a.display.cmp(&b.display));
        Ok(inputs)
    } else if is_image_name(path) {
        // One photo: its folder bounds what may be read.
        let canonical = path
            .canonicalize()
            .with_context(|| format!("resolving {}", shown(path)))?;
        let reference = format!("file://{}", canonical.display());
        let root = canonical.parent().unwrap_or(Path::new("/")).to_path_buf();
        let display = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Inputs {
            items: vec![Input { reference, display }],
            roots: vec![root],
            ..Inputs::default()
        })
    } else {
        manifest(path, allow_s3)
    }
}

/// Walks `dir`; links are not followed into folders. An image-named entry that cannot be
/// resolved (a dangling link, a loop of links) is still an input: the worker's fetch makes
/// it an error record, as for any file that cannot be read, so the run goes on.
fn walk(dir: &Path, root: &Path, inputs: &mut Inputs) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if dir == root => {
            return Err(e).with_context(|| format!("listing {}", shown(root)));
        }
        Err(_) => {
            inputs.unlisted += 1;
            return Ok(());
        }
    };
    for entry in entries {
        let Ok(entry) = entry else {
            inputs.unlisted += 1;
            break;
        };
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, root, inputs)?;
        } else if is_image_name(&path) {
            let display = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            inputs.items.push(Input {
                reference: file_ref(&path),
                display,
            });
        } else {
            inputs.skipped += 1;
        }
    }
    Ok(())
}

fn is_image_name(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| refs::is_image_name(&n.to_string_lossy()))
}

fn manifest(path: &Path, allow_s3: bool) -> anyhow::Result<Inputs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading manifest {}", shown(path)))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut inputs = Inputs::default();
    let entries = manifest::parse(&text, ManifestFormat::Auto)
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", shown(path)))?;
    for (n, entry) in entries.into_iter().enumerate() {
        if allow_s3 && entry.starts_with("s3://") {
            S3Location::parse_object(&entry)
                .with_context(|| format!("manifest entry {}", n + 1))?;
            inputs.items.push(Input {
                reference: entry.clone(),
                display: entry,
            });
            continue;
        }
        let local = entry.strip_prefix("file://").unwrap_or(&entry);
        if local.contains("://") {
            let allowed = if allow_s3 {
                "local files and s3:// refs"
            } else {
                "local files"
            };
            bail!("manifest entry {}: only {allowed} are accepted here", n + 1);
        }
        let full = base.join(local);
        // A missing file is the user's data, not a reason to refuse the run: it becomes a
        // fetch error record. Its folder still bounds what may be read.
        let reference = match full.canonicalize() {
            Ok(p) => format!("file://{}", p.display()),
            Err(_) => format!("file://{}", absolute(&full).display()),
        };
        let root = absolute(full.parent().unwrap_or(&base));
        let root = root.canonicalize().unwrap_or(root);
        if !inputs.roots.contains(&root) {
            inputs.roots.push(root);
        }
        inputs.items.push(Input {
            reference,
            display: entry,
        });
    }
    if !inputs.roots.is_empty() && inputs.roots.iter().all(|r| !r.exists()) {
        bail!(
            "none of the folders named in manifest {} exists",
            shown(path)
        );
    }
    inputs.roots.retain(|r| r.exists());
    Ok(inputs)
}

/// A path for an error message, safe on a terminal.
fn shown(path: &Path) -> String {
    crate::terminal::escaped(&path.display().to_string()).into_owned()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The canonical ref of a walked file; the path as walked (absolute, under the canonical
/// root) when it cannot be resolved, for the fetch to report.
fn file_ref(path: &Path) -> String {
    let resolved = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", resolved.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_walk_takes_images_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in ["a.JPG", "sub/b.png", "notes.txt", ".hidden.png"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let inputs = collect(dir.path()).unwrap();
        let names: Vec<_> = inputs.items.iter().map(|i| i.display.as_str()).collect();
        assert_eq!(names, ["a.JPG", "sub/b.png"]);
        assert_eq!(inputs.skipped, 1);
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(
            inputs.items[1].reference,
            format!("file://{}/sub/b.png", root.display())
        );
    }

    #[test]
    fn links_that_lead_nowhere_are_inputs_and_folder_links_are_not_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        symlink("loop.jpg", dir.path().join("loop.jpg")).unwrap();
        symlink("nowhere.png", dir.path().join("gone.png")).unwrap();
        symlink(".", dir.path().join("again")).unwrap();
        let inputs = collect(dir.path()).unwrap();
        let names: Vec<_> = inputs.items.iter().map(|i| i.display.as_str()).collect();
        assert_eq!(names, ["a.png", "gone.png", "loop.jpg"]);
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(
            inputs.items[2].reference,
            format!("file://{}/loop.jpg", root.display())
        );
        assert_eq!((inputs.skipped, inputs.unlisted), (1, 0));
    }

    #[test]
    fn manifest_lines_plain_and_json_relative_to_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let manifest = dir.path().join("list.txt");
        std::fs::write(&manifest, "# photos\na.png\n{\"ref\": \"missing.jpg\"}\n\n").unwrap();
        let inputs = collect(&manifest).unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(inputs.items.len(), 2);
        assert_eq!(
            inputs.items[0].reference,
            format!("file://{}/a.png", root.display())
        );
        assert!(inputs.items[1].reference.ends_with("/missing.jpg"));
        assert_eq!(inputs.roots, [root]);
    }

    #[test]
    fn manifest_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("list.jsonl");
        std::fs::write(&manifest, "a.png\n{\"path\": 1}\n").unwrap();
        let err = collect(&manifest).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
