//! Model outputs to results: top-k tags over a threshold, normalised embeddings.

use tagfleet_contracts::schema::Tag;

/// Softmax over `logits`, then the `top_k` labels whose probability is at least
/// `threshold`, most confident first.
pub fn top_k_tags(logits: &[f32], labels: &[String], top_k: usize, threshold: f32) -> Vec<Tag> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = top_k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    // Partial selection, then sort only the k winners.
    order.select_nth_unstable_by(k - 1, |a, b| exps[*b].total_cmp(&exps[*a]));
    order.truncate(k);
    order.sort_by(|a, b| exps[*b].total_cmp(&exps[*a]).then(a.cmp(b)));
    order
        .into_iter()
        .map(|i| (i, exps[i] / sum))
        .filter(|(_, p)| *p >= threshold)
        .map(|(i, p)| Tag {
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}")),
            confidence: p,
        })
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

    #[test]
    fn l2_normalised_has_unit_length() {
        let v = l2_normalised(&[3.0, 4.0]);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(l2_normalised(&[0.0, 0.0]), [0.0, 0.0]);
    }
}
