//! The classifier's tag hierarchy: each class's WordNet 3.0 synset and the synsets above
//! it, read from the file `scripts/build_taxonomy.py` writes next to the model
//! (`taxonomy = "taxonomy.json"` in `model.toml`).
//!
//! What a synset "covers" is the set of classes under it; its confidence for one image is
//! the probability mass of those classes. Parent tags and categories are both that sum.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::Deserialize;

/// Synsets too general to say anything about a photo ("entity", "object", "whole"):
/// every parent chain ends in them, so they are never reported as parent tags.
/// Categorizers may still name them.
const TOO_GENERAL: &[&str] = &[
    "entity.n.01",
    "physical_entity.n.01",
    "abstraction.n.06",
    "object.n.01",
    "whole.n.02",
    "living_thing.n.01",
    "organism.n.01",
    "causal_agent.n.01",
    "matter.n.03",
    "substance.n.07",
    "substance.n.01",
    "solid.n.01",
    "artifact.n.01",
    "instrumentality.n.03",
    "psychological_feature.n.01",
    "attribute.n.02",
    "group.n.01",
    "relation.n.01",
    "measure.n.02",
    "communication.n.02",
    "event.n.01",
    "act.n.02",
    "thing.n.12",
    "part.n.02",
    "unit.n.03",
    "location.n.01",
    "region.n.03",
    "part.n.01",
    "shape.n.02",
    "conveyance.n.03",
    "commodity.n.01",
    "consumer_goods.n.01",
    "covering.n.02",
];

/// A set of class indices: a bitset, as a synset covers up to every class.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassSet(Vec<u64>);

impl ClassSet {
    fn with_capacity(classes: usize) -> Self {
        Self(vec![0; classes.div_ceil(64)])
    }

    fn insert(&mut self, class: usize) {
        self.0[class / 64] |= 1 << (class % 64);
    }

    pub fn contains(&self, class: usize) -> bool {
        self.0
            .get(class / 64)
            .is_some_and(|w| w & (1 << (class % 64)) != 0)
    }

    pub fn union_with(&mut self, other: &ClassSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The probability of the set: the sum of its classes' probabilities, capped at 1
    /// (rounding can take a sum of softmax outputs a little over).
    pub fn mass(&self, probs: &[f32]) -> f32 {
        let mut sum = 0.0;
        for (w, &bits) in self.0.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let class = w * 64 + bits.trailing_zeros() as usize;
                sum += probs.get(class).copied().unwrap_or(0.0);
                bits &= bits - 1;
            }
        }
        sum.min(1.0)
    }
}

/// One synset of the taxonomy.
#[derive(Debug, Clone)]
pub struct Synset {
    /// WordNet 3.0 id: `n` and the noun's offset (`n02123045`), as ImageNet names classes.
    pub id: String,
    /// NLTK-style name (`tabby.n.01`), what results and categorizers say.
    pub name: String,
    /// Its first lemma, readable (`tabby`).
    pub label: String,
    /// The classes under it (itself included, for a class's own synset).
    pub covers: ClassSet,
    too_general: bool,
}

/// The taxonomy of one model's classes.
#[derive(Debug, Clone)]
pub struct Taxonomy {
    synsets: Vec<Synset>,
    /// Both `n02123045` and `tabby.n.01` lead to the same synset.
    by_key: HashMap<String, usize>,
    class_synset: Vec<usize>,
    /// Per class, every synset above it, nearest first.
    ancestors: Vec<Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TaxonomyError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    wordnet: String,
    classes: Vec<String>,
    synsets: HashMap<String, FileSynset>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSynset {
    name: String,
    label: String,
    hypernyms: Vec<String>,
}

impl Taxonomy {
    /// Reads a taxonomy file for a model with `classes` outputs.
    pub fn load(path: &Path, classes: usize) -> Result<Self, TaxonomyError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| TaxonomyError::Read {
            path: shown.clone(),
            message: format!("{e} (build it with `make model`: scripts/build_taxonomy.py)"),
        })?;
        Self::parse(&text, classes).map_err(|message| TaxonomyError::Invalid {
            path: shown,
            message,
        })
    }

    fn parse(text: &[u8], classes: usize) -> Result<Self, String> {
        let file: File = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if file.wordnet != "3.0" {
            return Err(format!("WordNet {} (3.0 expected)", file.wordnet));
        }
        if file.classes.len() != classes {
            return Err(format!(
                "{} classes, the model has {classes}",
                file.classes.len()
            ));
        }
        let mut ids: Vec<&String> = file.synsets.keys().collect();
        ids.sort();
        let index: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let find = |id: &str, whose: &str| {
            index
                .get(id)
                .copied()
                .ok_or_else(|| format!("{whose} names synset {id}, which the file lacks"))
        };
        let parents: Vec<Vec<usize>> = ids
            .iter()
            .map(|id| {
                file.synsets[*id]
                    .hypernyms
                    .iter()
                    .map(|h| find(h, id))
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        let class_synset: Vec<usize> = file
            .classes
            .iter()
            .enumerate()
            .map(|(i, id)| find(id, &format!("class {i}")))
            .collect::<Result<_, _>>()?;
        let ancestors: Vec<Vec<usize>> = class_synset
            .iter()
            .map(|&s| breadth_first_above(s, &parents, ids.len()))
            .collect::<Result<_, _>>()?;
        let mut synsets: Vec<Synset> = ids
            .iter()
            .map(|id| {
                let s = &file.synsets[*id];
                Synset {
                    id: (*id).clone(),
                    name: s.name.clone(),
                    label: s.label.clone(),
                    covers: ClassSet::with_capacity(classes),
                    too_general: TOO_GENERAL.contains(&s.name.as_str()),
                }
            })
            .collect();
        for (class, &own) in class_synset.iter().enumerate() {
            synsets[own].covers.insert(class);
            for &above in &ancestors[class] {
                synsets[above].covers.insert(class);
            }
        }
        let mut by_key = HashMap::new();
        for (i, s) in synsets.iter().enumerate() {
            by_key.insert(s.id.clone(), i);
            if by_key.insert(s.name.clone(), i).is_some() {
                return Err(format!("two synsets are named {}", s.name));
            }
        }
        Ok(Self {
            synsets,
            by_key,
            class_synset,
            ancestors,
        })
    }

    /// The synset `key` names: an id (`n02121808`) or a name (`domestic_cat.n.01`).
    pub fn find(&self, key: &str) -> Option<&Synset> {
        self.by_key.get(key).map(|&i| &self.synsets[i])
    }

    /// The synset of class `class`.
    pub fn class(&self, class: usize) -> &Synset {
        &self.synsets[self.class_synset[class]]
    }

    /// The synsets above class `class` that are worth a tag, nearest first.
    pub fn parents(&self, class: usize) -> impl Iterator<Item = &Synset> {
        self.ancestors[class]
            .iter()
            .map(|&i| &self.synsets[i])
            .filter(|s| !s.too_general)
    }
}

/// Every synset above `start`, nearest first; refuses a cycle (a broken file).
fn breadth_first_above(
    start: usize,
    parents: &[Vec<usize>],
    total: usize,
) -> Result<Vec<usize>, String> {
    let mut seen = vec![false; total];
    let mut order = Vec::new();
    let mut queue = VecDeque::from([start]);
    seen[start] = true;
    while let Some(s) = queue.pop_front() {
        for &p in &parents[s] {
            if p == start {
                return Err("the hypernyms form a cycle".into());
            }
            if !std::mem::replace(&mut seen[p], true) {
                order.push(p);
                queue.push_back(p);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes: tabby and tiger cat (cats), and espresso.
    const SMALL: &str = r#"{"wordnet":"3.0","classes":["n3","n4","n6"],"synsets":{
        "n1":{"name":"entity.n.01","label":"entity","hypernyms":[]},
        "n2":{"name":"cat.n.01","label":"cat","hypernyms":["n5"]},
        "n5":{"name":"animal.n.01","label":"animal","hypernyms":["n1"]},
        "n3":{"name":"tabby.n.01","label":"tabby","hypernyms":["n2"]},
        "n4":{"name":"tiger_cat.n.01","label":"tiger cat","hypernyms":["n2"]},
        "n6":{"name":"espresso.n.01","label":"espresso","hypernyms":["n1"]}}}"#;

    #[test]
    fn parents_are_nearest_first_and_skip_the_too_general() {
        let t = Taxonomy::parse(SMALL.as_bytes(), 3).unwrap();
        let names: Vec<&str> = t.parents(0).map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cat.n.01", "animal.n.01"]);
        assert_eq!(t.class(2).label, "espresso");
        assert_eq!(t.find("n2").unwrap().name, "cat.n.01");
        let cat = &t.find("cat.n.01").unwrap().covers;
        assert!(cat.contains(0) && cat.contains(1) && !cat.contains(2));
        assert!((cat.mass(&[0.5, 0.25, 0.25]) - 0.75).abs() < 1e-6);
        assert_eq!(t.find("entity.n.01").unwrap().covers.len(), 3);
    }

    #[test]
    fn broken_files_say_what_is_wrong() {
        for (text, says) in [
            (
                SMALL.replace("\"n6\"]", "\"n9\"]"),
                "class 2 names synset n9",
            ),
            (
                SMALL.replace("\"hypernyms\":[\"n2\"]}", "\"hypernyms\":[\"n7\"]}"),
                "n3 names synset n7",
            ),
            (
                SMALL.replace("\"hypernyms\":[\"n1\"]}", "\"hypernyms\":[\"n3\"]}"),
                "cycle",
            ),
            (SMALL.replace("3.0", "2.1"), "WordNet 2.1"),
        ] {
            let err = Taxonomy::parse(text.as_bytes(), 3).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let err = Taxonomy::parse(SMALL.as_bytes(), 1000).unwrap_err();
        assert!(err.contains("3 classes, the model has 1000"), "{err}");
    }

    #[test]
    fn the_model_taxonomy_maps_imagenet_classes_to_wordnet() {
        let spec = crate::test_support::model();
        let labels = spec.load_labels().unwrap();
        let t = spec
            .load_taxonomy(labels.len())
            .unwrap()
            .expect("the model has a taxonomy");
        let tabby = labels.iter().position(|l| l == "tabby").unwrap();
        assert_eq!(t.class(tabby).name, "tabby.n.01");
        assert_eq!(t.class(tabby).id, "n02123045");
        let parents: Vec<&str> = t.parents(tabby).map(|s| s.label.as_str()).collect();
        for wanted in ["domestic cat", "cat", "feline", "mammal", "animal"] {
            assert!(parents.contains(&wanted), "{wanted} in {parents:?}");
        }
        assert!(!parents.contains(&"entity"), "{parents:?}");
        // Every class sits under entity, and animals make up about 40% of ImageNet-1k.
        assert_eq!(t.find("entity.n.01").unwrap().covers.len(), labels.len());
        let animals = t.find("animal.n.01").unwrap().covers.len();
        assert!((350..450).contains(&animals), "{animals}");
    }
}
