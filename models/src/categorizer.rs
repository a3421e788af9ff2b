//! Categorizers: data files (TOML) that sort a photo into categories by the WordNet
//! synsets each category covers. Two ship inside the binary (`general`, `retail`, from
//! `models/categorizers/`); an operator adds more, or replaces one, by dropping
//! `<name>.toml` into the folder `--categorizers-dir` names.
//!
//! ```toml
//! description = "What it sorts by"
//! [categories]
//! "animals" = ["animal.n.01"]
//! "food and drink" = ["food.n.01", "n07555863"]
//! ```
//!
//! A category's confidence is the probability mass of the classes under any of its
//! synsets. A file naming a synset the model's taxonomy does not have stops start-up,
//! naming the file, the category and the synset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tagfleet_contracts::analyses::Category;
use tagfleet_contracts::schema::is_categorizer_name;

use crate::taxonomy::{ClassSet, Taxonomy};

/// The categorizers that ship with tagfleet: name and file text.
const BUILT_IN: [(&str, &str); 2] = [
    ("general", include_str!("../categorizers/general.toml")),
    ("retail", include_str!("../categorizers/retail.toml")),
];

/// Most categories one file may define: each costs a pass over the classes per image.
const MAX_CATEGORIES: usize = 256;
/// Largest categorizer file read: a few hundred categories fit in a tenth of it.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CategorizerError {
    #[error("reading categorizers from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("categorizer {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A categorizer file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    description: String,
    categories: BTreeMap<String, Vec<String>>,
}

/// Categorizer files by name, read and checked for form but not yet tied to a model:
/// enough for the scheduler to refuse a job naming one that does not exist.
#[derive(Debug)]
pub struct CategorizerFiles {
    files: BTreeMap<String, (String, File)>,
}

impl CategorizerFiles {
    /// The built-in categorizers, and those in `dir` (`<name>.toml`), which replace a
    /// built-in of the same name.
    pub fn load(dir: Option<&Path>) -> Result<Self, CategorizerError> {
        let mut files = BTreeMap::new();
        for (name, text) in BUILT_IN {
            let origin = format!("{name} (built in)");
            files.insert(name.to_owned(), (origin.clone(), parse(&origin, text)?));
        }
        let Some(dir) = dir else {
            return Ok(Self { files });
        };
        let read_error = |source| CategorizerError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read_error)?;
        paths.sort();
        // Hidden files are an editor's or Kubernetes' (a ConfigMap's `..data`), not ours.
        let hidden = |p: &Path| {
            p.file_name()
                .is_some_and(|n| n.as_encoded_bytes()[0] == b'.')
        };
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && !hidden(p))
        {
            let origin = path.display().to_string();
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if !is_categorizer_name(name) {
                return Err(invalid(
                    &origin,
                    "a categorizer's file name is its name: 1 to 64 of a-z, 0-9, - and _",
                ));
            }
            let text = read_file(path)?;
            if BUILT_IN.iter().any(|(n, _)| *n == name) {
                tracing::info!(categorizer = name, file = %origin, "a categorizer file replaces the built-in one");
            }
            files.insert(name.to_owned(), (origin.clone(), parse(&origin, &text)?));
        }
        Ok(Self { files })
    }

    /// The names jobs may choose from, sorted.
    pub fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// Ties every category to the classes of `taxonomy`; refuses an unknown synset.
    pub fn resolve(&self, taxonomy: &Taxonomy) -> Result<Categorizers, CategorizerError> {
        let mut by_name = BTreeMap::new();
        for (name, (origin, file)) in &self.files {
            let mut categories = Vec::new();
            for (category, synsets) in &file.categories {
                let mut covers = ClassSet::default();
                for key in synsets {
                    let synset = taxonomy.find(key).ok_or_else(|| {
                        invalid(
                            origin,
                            format!(
                                "category {category:?} names synset {key:?}, which is not a \
                                 WordNet noun synset above any class of the model"
                            ),
                        )
                    })?;
                    covers.union_with(&synset.covers);
                }
                categories.push((category.clone(), covers));
            }
            let categorizer = Categorizer {
                description: file.description.clone(),
                categories,
            };
            by_name.insert(name.clone(), categorizer);
        }
        Ok(Categorizers { by_name })
    }
}

/// A categorizer file's text: a regular file (a link to one is fine), at most
/// [`MAX_FILE_BYTES`]. Anything else, such as a FIFO that would block start-up or a link
/// to a device that never ends, is refused before it is opened for reading.
fn read_file(path: &Path) -> Result<String, CategorizerError> {
    use std::io::Read;
    let origin = path.display().to_string();
    let io_error = |source| CategorizerError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_file() {
        return Err(invalid(&origin, "not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(invalid(
            &origin,
            format!(
                "{} bytes, more than the {MAX_FILE_BYTES} a categorizer may have",
                meta.len()
            ),
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io_error)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(invalid(
            &origin,
            "it grew past the size a categorizer may have",
        ));
    }
    Ok(text)
}

fn invalid(origin: &str, message: impl Into<String>) -> CategorizerError {
    CategorizerError::Invalid {
        origin: origin.to_owned(),
        message: message.into(),
    }
}

fn parse(origin: &str, text: &str) -> Result<File, CategorizerError> {
    let file: File = toml::from_str(text).map_err(|e| invalid(origin, e.to_string()))?;
    if file.categories.is_empty() || file.categories.len() > MAX_CATEGORIES {
        return Err(invalid(
            origin,
            format!(
                "{} categories; 1 to {MAX_CATEGORIES} are allowed",
                file.categories.len()
            ),
        ));
    }
    if let Some((category, _)) = file.categories.iter().find(|(_, s)| s.is_empty()) {
        return Err(invalid(
            origin,
            format!("category {category:?} names no synset"),
        ));
    }
    Ok(file)
}

/// Every categorizer, tied to the model's classes.
#[derive(Debug, Default)]
pub struct Categorizers {
    by_name: BTreeMap<String, Categorizer>,
}

impl Categorizers {
    pub fn get(&self, name: &str) -> Option<&Categorizer> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

/// One categorizer: its categories and the classes under each.
#[derive(Debug)]
pub struct Categorizer {
    pub description: String,
    categories: Vec<(String, ClassSet)>,
}

impl Categorizer {
    /// The categories whose confidence reaches `threshold`, most confident first (ties by
    /// name, so the order is stable). `probs` are the classifier's softmax outputs.
    pub fn categorize(&self, probs: &[f32], threshold: f32) -> Vec<Category> {
        let mut found: Vec<Category> = self
            .categories
            .iter()
            .map(|(name, covers)| Category {
                name: name.clone(),
                confidence: covers.mass(probs),
            })
            .filter(|c| c.confidence >= threshold && c.confidence > 0.0)
            .collect();
        found.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then(a.name.cmp(&b.name))
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taxonomy() -> Taxonomy {
        let spec = crate::test_support::model();
        spec.load_taxonomy(spec.load_labels().unwrap().len())
            .unwrap()
            .expect("the model has a taxonomy")
    }

    #[test]
    fn the_built_in_categorizers_resolve_against_the_model() {
        let files = CategorizerFiles::load(None).unwrap();
        assert_eq!(files.names(), ["general", "retail"]);
        let all = files.resolve(&taxonomy()).unwrap();
        let general = all.get("general").unwrap();
        assert!((12..=20).contains(&general.categories.len()));
        for (name, covers) in &general.categories {
            assert!(!covers.is_empty(), "{name} covers no class");
        }
    }

    #[test]
    fn an_unknown_synset_stops_start_up_naming_file_category_and_synset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pets.toml"),
            "[categories]\n\"dogs\" = [\"dog.n.01\"]\n\"unicorns\" = [\"unicorn.n.01\"]\n",
        )
        .unwrap();
        let files = CategorizerFiles::load(Some(dir.path())).unwrap();
        assert_eq!(files.names(), ["general", "pets", "retail"]);
        let err = files.resolve(&taxonomy()).unwrap_err().to_string();
        assert!(
            err.contains("pets.toml")
                && err.contains("\"unicorns\"")
                && err.contains("unicorn.n.01"),
            "{err}"
        );
    }

    #[test]
    fn a_dropped_in_file_adds_or_replaces_a_categorizer() {
        let dir = tempfile::tempdir().unwrap();
        let cats = "description = \"cats only\"\n[categories]\n\"cats\" = [\"n02121620\"]\n";
        std::fs::write(dir.path().join("general.toml"), cats).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a categorizer").unwrap();
        let all = CategorizerFiles::load(Some(dir.path()))
            .unwrap()
            .resolve(&taxonomy())
            .unwrap();
        assert_eq!(all.names(), ["general", "retail"]);
        assert_eq!(all.get("general").unwrap().description, "cats only");
    }

    #[test]
    fn malformed_files_are_refused_with_their_reason() {
        for (name, text, says) in [
            ("a.toml", "[categories]\n", "0 categories"),
            ("b.toml", "[categories]\nx = []\n", "\"x\" names no synset"),
            (
                "c.toml",
                "colour = 1\n[categories]\nx = [\"cat.n.01\"]\n",
                "colour",
            ),
            (
                "Bad Name.toml",
                "[categories]\nx = [\"cat.n.01\"]\n",
                "file name",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(name), text).unwrap();
            let err = CategorizerFiles::load(Some(dir.path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{name}: {err}");
        }
        let missing = CategorizerFiles::load(Some(Path::new("/no/such/folder")));
        assert!(missing.unwrap_err().to_string().contains("/no/such/folder"));
    }

    #[test]
    fn only_regular_files_of_a_sane_size_are_read() {
        let good = "[categories]\n\"cats\" = [\"cat.n.01\"]\n";
        // A FIFO would block start-up; /dev/zero would fill memory.
        let fifo = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(fifo.path().join("x.toml"))
            .status()
            .unwrap();
        assert!(status.success());
        let zero = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", zero.path().join("x.toml")).unwrap();
        let big = tempfile::tempdir().unwrap();
        let padding = format!("# {}\n", "x".repeat(1 << 20));
        std::fs::write(big.path().join("x.toml"), padding + good).unwrap();
        for (dir, says) in [
            (&fifo, "not a regular file"),
            (&zero, "not a regular file"),
            (&big, "more than the 1048576"),
        ] {
            let err = CategorizerFiles::load(Some(dir.path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says) && err.contains("x.toml"), "{err}");
        }

        // Kubernetes mounts a ConfigMap as links into a hidden `..data` folder; editors
        // leave hidden lock files. Both are passed over, the links followed.
        let mounted = tempfile::tempdir().unwrap();
        let data = mounted.path().join("..2026_11_29");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("pets.toml"), good).unwrap();
        std::os::unix::fs::symlink(&data, mounted.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pets.toml", mounted.path().join("pets.toml")).unwrap();
        std::fs::write(mounted.path().join(".#pets.toml"), "not toml").unwrap();
        let names = CategorizerFiles::load(Some(mounted.path()))
            .unwrap()
            .names();
        assert_eq!(names, ["general", "pets", "retail"]);
    }

    #[test]
    fn confidence_is_the_mass_under_the_category() {
        let t = taxonomy();
        let labels = crate::test_support::model().load_labels().unwrap();
        let all = CategorizerFiles::load(None).unwrap().resolve(&t).unwrap();
        let mut probs = vec![0.0; labels.len()];
        let at = |l: &str| labels.iter().position(|x| x == l).unwrap();
        probs[at("tabby")] = 0.5;
        probs[at("Egyptian cat")] = 0.2;
        probs[at("espresso")] = 0.3;
        let found = all.get("general").unwrap().categorize(&probs, 0.05);
        let names: Vec<_> = found
            .iter()
            .map(|c| (c.name.as_str(), c.confidence))
            .collect();
        assert_eq!(names[0].0, "animals");
        assert!((names[0].1 - 0.7).abs() < 1e-6, "{names:?}");
        assert_eq!(names[1].0, "food and drink");
        assert!((names[1].1 - 0.3).abs() < 1e-6, "{names:?}");
        assert_eq!(found.len(), 2, "{names:?}");
    }
}
