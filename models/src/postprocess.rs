//! Model outputs to results: top-k tags over a threshold (with their synsets and, on
//! request, their parents), categories, normalised embeddings.

use std::collections::HashSet;
use std::path::Path;

use tagfleet_contracts::analyses::Category;
use tagfleet_contracts::schema::{Analysis, DEFAULT_CATEGORIZER, Tag, TaskMessage, TaskOptions};

use crate::categorizer::{CategorizerError, CategorizerFiles, Categorizers};
use crate::spec::{ModelSpec, SpecError};
use crate::taxonomy::{Taxonomy, TaxonomyError};

/// What a classifier's outputs mean: its labels, their place in WordNet (where the model
/// has a taxonomy) and the categorizers built on it.
#[derive(Debug)]
pub struct Classes {
    labels: Vec<String>,
    taxonomy: Option<Taxonomy>,
    categorizers: Categorizers,
}

#[derive(Debug, thiserror::Error)]
pub enum ClassesError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("model {0}: labels file is empty")]
    NoLabels(String),
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
    #[error(transparent)]
    Categorizer(#[from] CategorizerError),
}

impl Classes {
    pub fn new(
        labels: Vec<String>,
        taxonomy: Option<Taxonomy>,
        categorizers: Categorizers,
    ) -> Self {
        Self {
            labels,
            taxonomy,
            categorizers,
        }
    }

    /// Reads a model's labels and taxonomy, and ties the categorizers (the built-in ones
    /// and those in `categorizers_dir`) to it. A model without a taxonomy gets none.
    pub fn load(spec: &ModelSpec, categorizers_dir: Option<&Path>) -> Result<Self, ClassesError> {
        let labels = spec.load_labels()?;
        if labels.is_empty() {
            return Err(ClassesError::NoLabels(spec.id()));
        }
        let taxonomy = spec.load_taxonomy(labels.len())?;
        let files = CategorizerFiles::load(categorizers_dir)?;
        let categorizers = match &taxonomy {
            Some(taxonomy) => files.resolve(taxonomy)?,
            None => Categorizers::default(),
        };
        Ok(Self::new(labels, taxonomy, categorizers))
    }

    /// Labels only: no synsets, parents or categories.
    pub fn plain(labels: Vec<String>) -> Self {
        Self::new(labels, None, Categorizers::default())
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The categorizers jobs may choose from.
    pub fn categorizers(&self) -> Vec<String> {
        self.categorizers.names()
    }

    /// Why this model cannot run `msg` as asked, if it cannot: a categorizer it does not
    /// have, or parent tags or categories without a taxonomy.
    pub fn refuses(&self, msg: &TaskMessage) -> Option<String> {
        let wants_taxonomy = msg.options.parents || msg.analyses.contains(&Analysis::Categories);
        if wants_taxonomy && self.taxonomy.is_none() {
            return Some("the model has no taxonomy: no parent tags or categories".into());
        }
        // A categorizer asked for by name must exist even where categories are not asked
        // for (as the scheduler holds it): a typo is found before a run, not after.
        let categorizer = &msg.options.categorizer;
        let named = categorizer != DEFAULT_CATEGORIZER;
        ((named || msg.analyses.contains(&Analysis::Categories))
            && self.categorizers.get(categorizer).is_none())
        .then(|| format!("no categorizer {categorizer:?} on this worker"))
    }

    /// The categories of `options.categorizer` for one image's class probabilities
    /// ([`softmax`]); none for a categorizer this model lacks ([`Classes::refuses`]).
    pub fn categories(&self, probs: &[f32], options: &TaskOptions) -> Vec<Category> {
        self.categorizers
            .get(&options.categorizer)
            .map(|c| c.categorize(&evidence(probs), options.threshold))
            .unwrap_or_default()
    }

    /// The top tags of one image's class probabilities ([`softmax`]), with their synsets,
    /// and their parents when `options.parents` asks.
    pub fn tags(&self, probs: &[f32], options: &TaskOptions) -> Vec<Tag> {
        let top = top_k(probs, options.top_k, options.threshold);
        let mut tags: Vec<Tag> = top
            .iter()
            .map(|&(class, confidence)| {
                class_tag(&self.labels, self.taxonomy.as_ref(), class, confidence)
            })
            .collect();
        if let (true, Some(taxonomy)) = (options.parents, &self.taxonomy) {
            tags.extend(parent_tags(
                taxonomy,
                &evidence(probs),
                &top,
                options.threshold,
            ));
        }
        tags
    }
}

/// The tag of one of the model's classes: its label and, with a taxonomy, its synset.
fn class_tag(labels: &[String], taxonomy: Option<&Taxonomy>, class: usize, confidence: f32) -> Tag {
    Tag {
        label: labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class_{class}")),
        confidence,
        synset: taxonomy.map(|t| t.class(class).name.clone()),
        parent: false,
    }
}

/// The hypernyms of the reported classes, each once, with the mass of every class under
/// it; most confident first, and the more specific first where the mass is the same
/// ("cat" before "feline" when only cats are likely).
fn parent_tags(
    taxonomy: &Taxonomy,
    probs: &[f32],
    top: &[(usize, f32)],
    threshold: f32,
) -> Vec<Tag> {
    let own: HashSet<&str> = top
        .iter()
        .map(|&(c, _)| taxonomy.class(c).id.as_str())
        .collect();
    let mut seen = HashSet::new();
    let mut parents: Vec<(Tag, usize)> = top
        .iter()
        .flat_map(|&(class, _)| taxonomy.parents(class))
        .filter(|s| !own.contains(s.id.as_str()) && seen.insert(s.id.as_str()))
        .map(|s| {
            let tag = Tag {
                label: s.label.clone(),
                confidence: s.covers.mass(probs),
                synset: Some(s.name.clone()),
                parent: true,
            };
            (tag, s.covers.len())
        })
        .filter(|(t, _)| t.confidence > 0.0 && t.confidence >= threshold)
        .collect();
    parents.sort_by(|(a, a_len), (b, b_len)| {
        b.confidence.total_cmp(&a.confidence).then(a_len.cmp(b_len))
    });
    parents.into_iter().map(|(t, _)| t).collect()
}

/// A class counts towards a synset's mass only with this many times the probability every
/// class would have if the model knew nothing (1% for 1,000 classes).
const EVIDENCE_FACTOR: f32 = 10.0;

/// `probs` without the spread a classifier puts on every class: below
/// [`EVIDENCE_FACTOR`] times the uniform probability a class is taken as noise. Without
/// this, a blank frame is 40% "animal" (398 of ImageNet's 1,000 classes are animals,
/// each with its 0.1%), and a category's confidence would say more about how many
/// classes it covers than about the photo.
fn evidence(probs: &[f32]) -> Vec<f32> {
    let floor = EVIDENCE_FACTOR / probs.len().max(1) as f32;
    probs
        .iter()
        .map(|&p| if p >= floor { p } else { 0.0 })
        .collect()
}

/// Softmax probabilities of `logits`.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes whose probability is at least `threshold`, most
/// probable first (ties by class index).
pub fn top_k(probs: &[f32], k: usize, threshold: f32) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    // Partial selection, then sort only the k winners.
    order.select_nth_unstable_by(k - 1, |a, b| probs[*b].total_cmp(&probs[*a]));
    order.truncate(k);
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
    order
        .into_iter()
        .map(|i| (i, probs[i]))
        .filter(|(_, p)| *p >= threshold)
        .collect()
}

/// Softmax over `logits`, then the `top_k` labels whose probability is at least
/// `threshold`, most confident first.
pub fn top_k_tags(logits: &[f32], labels: &[String], k: usize, threshold: f32) -> Vec<Tag> {
    top_k(&softmax(logits), k, threshold)
        .into_iter()
        .map(|(class, confidence)| class_tag(labels, None, class, confidence))
        .collect()
}

/// `v / |v|`; a zero vector stays zero.
pub fn l2_normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        v.to_vec()
    } else {
        v.iter().map(|x| x / norm).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn top_k_orders_by_confidence_and_sums_to_softmax() {
        let logits = [1.0, 3.0, 2.0, 0.0];
        let tags = top_k_tags(&logits, &labels(4), 2, 0.0);
        let names: Vec<_> = tags.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(names, ["l1", "l2"]);
        let z: f32 = logits.iter().map(|l: &f32| l.exp()).sum();
        assert!((tags[0].confidence - 3f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn threshold_drops_unlikely_tags() {
        let tags = top_k_tags(&[10.0, 0.0, 0.0], &labels(3), 3, 0.5);
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].label, "l0");
        assert!(
            top_k_tags(&[0.0; 4], &labels(4), 4, 0.3).is_empty(),
            "uniform 0.25 < 0.3"
        );
    }

    fn model_classes() -> Classes {
        Classes::load(&crate::test_support::model(), None).unwrap()
    }

    /// Logits that give `tabby` 0.6, `tiger cat` 0.3 and spread the rest.
    fn cat_logits(classes: &Classes) -> Vec<f32> {
        let at = |l: &str| classes.labels().iter().position(|x| x == l).unwrap();
        let mut logits = vec![0.0f32; classes.labels().len()];
        let rest = 0.1 / (logits.len() - 2) as f32;
        logits[at("tabby")] = (0.6 / rest).ln();
        logits[at("tiger cat")] = (0.3 / rest).ln();
        logits
    }

    #[test]
    fn tags_carry_their_synset_and_parents_sum_their_classes() {
        let classes = model_classes();
        let options = TaskOptions {
            top_k: 2,
            parents: true,
            ..TaskOptions::default()
        };
        let tags = classes.tags(&softmax(&cat_logits(&classes)), &options);
        assert_eq!(tags[0].label, "tabby");
        assert_eq!(tags[0].synset.as_deref(), Some("tabby.n.01"));
        assert!(!tags[0].parent);
        let parent = |name: &str| tags.iter().find(|t| t.label == name && t.parent);
        // Both classes are cats: "cat" holds their mass (0.9); the rest is spread too thin
        // over the other classes to count.
        let cat = parent("cat").expect("cat is a parent of tabby");
        assert!((cat.confidence - 0.9).abs() < 1e-4, "{cat:?}");
        assert_eq!(cat.synset.as_deref(), Some("cat.n.01"));
        let animal = parent("animal").expect("animal too");
        assert_eq!(animal.confidence, cat.confidence);
        // Same mass: the more specific first.
        let order: Vec<&str> = tags
            .iter()
            .filter(|t| t.parent)
            .map(|t| t.label.as_str())
            .collect();
        let at = |l: &str| order.iter().position(|x| *x == l).unwrap();
        assert!(
            at("cat") < at("feline") && at("feline") < at("animal"),
            "{order:?}"
        );
        assert!(
            parent("entity").is_none() && parent("whole").is_none(),
            "{tags:?}"
        );
        let confidences: Vec<f32> = tags
            .iter()
            .filter(|t| t.parent)
            .map(|t| t.confidence)
            .collect();
        assert!(
            confidences.windows(2).all(|w| w[0] >= w[1]),
            "{confidences:?}"
        );
        let without = classes.tags(&softmax(&cat_logits(&classes)), &TaskOptions::default());
        assert!(without.iter().all(|t| !t.parent));
    }

    #[test]
    fn categories_follow_the_chosen_categorizer() {
        let classes = model_classes();
        let mut options = TaskOptions::default();
        let probs = softmax(&cat_logits(&classes));
        let general = classes.categories(&probs, &options);
        assert_eq!(general[0].name, "animals");
        assert!((general[0].confidence - 0.9).abs() < 1e-4, "{general:?}");
        options.categorizer = "retail".into();
        let retail = classes.categories(&probs, &options);
        assert!(retail.iter().all(|c| c.name != "animals"), "{retail:?}");
    }

    #[test]
    fn a_model_that_sees_nothing_it_knows_gives_no_category_or_parent() {
        let classes = model_classes();
        let options = TaskOptions {
            parents: true,
            threshold: 0.0,
            ..TaskOptions::default()
        };
        // Every class equally likely: 398 animal classes hold 40% of the mass.
        let uniform = softmax(&vec![0.0; classes.labels().len()]);
        assert_eq!(classes.categories(&uniform, &options), []);
        let tags = classes.tags(&uniform, &options);
        assert!(tags.iter().all(|t| !t.parent), "{tags:?}");
        // A real belief counts whole, however many classes its category covers.
        let mut mostly_cat = uniform.clone();
        let at = |l: &str| classes.labels().iter().position(|x| x == l).unwrap();
        mostly_cat[at("tabby")] += 0.5;
        let sum: f32 = mostly_cat.iter().sum();
        let mostly_cat: Vec<f32> = mostly_cat.iter().map(|p| p / sum).collect();
        let found = classes.categories(&mostly_cat, &options);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "animals");
        assert!((found[0].confidence - mostly_cat[at("tabby")]).abs() < 1e-6);
    }

    #[test]
    fn a_task_the_model_cannot_run_is_refused_with_the_reason() {
        let classes = model_classes();
        let mut msg = TaskMessage::from_json(
            br#"{"v":1,"job_id":"j","task_id":"t","tenant":"t","analyses":["categories"],
                "model":"m@1","options":{"categorizer":"pets"},"items":[{"ref":"file:///a"}]}"#,
        )
        .unwrap();
        assert!(classes.refuses(&msg).unwrap().contains("\"pets\""));
        msg.options.categorizer = "retail".into();
        assert_eq!(classes.refuses(&msg), None);
        let plain = Classes::plain(classes.labels().to_vec());
        assert!(plain.refuses(&msg).unwrap().contains("no taxonomy"));
        msg.analyses = vec![Analysis::Tags];
        msg.options.categorizer = DEFAULT_CATEGORIZER.into();
        assert_eq!(plain.refuses(&msg), None);
        msg.options.categorizer = "pets".into();
        assert!(
            classes.refuses(&msg).unwrap().contains("\"pets\""),
            "a typo without categories"
        );
    }

    #[test]
    fn l2_normalised_has_unit_length() {
        let v = l2_normalised(&[3.0, 4.0]);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(l2_normalised(&[0.0, 0.0]), [0.0, 0.0]);
    }
}
