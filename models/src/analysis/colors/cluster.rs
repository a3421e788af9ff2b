//! Deterministic weighted k-means in Lab: the clustering behind every colour list.
//!
//! Pixels first fall into small Lab cells ([`Cells`]), so k-means runs over a few hundred
//! distinct colours rather than every pixel; a cell keeps the exact sum of its pixels, so
//! only which cluster a pixel joins is rounded, never the colours reported.

use crate::analysis::lab::{self, Lab};

/// Centres closer than this (ΔE) are one colour: about the difference between two
/// samples of one painted surface under the same light. Much below it a flat colour
/// splits into shading bands; much above it neighbouring palette colours start to fuse.
pub(super) const MERGE_DELTA_E: f32 = 10.0;

/// Most centres [`kmeans`] starts with.
pub(super) const MAX_CENTRES: usize = 16;

/// Lloyd iterations at most. The farthest-point start is already near a solution; the
/// assignments of real photos settle within a handful of rounds.
const MAX_ITERATIONS: usize = 10;

/// Side of a binning cell in Lab units. A cell's diagonal (~7 ΔE) stays under
/// [`MERGE_DELTA_E`], so a cell never straddles two colours that would be reported apart.
const CELL: f32 = 4.0;
/// Cells along L (0..=100) and along a and b (-112..112, which holds the sRGB gamut;
/// colours beyond fall into the edge cells).
const L_CELLS: usize = 26;
const AB_CELLS: usize = 56;
const AB_OFFSET: f32 = 112.0;

/// A weighted colour: the mean Lab of the pixels it stands for, and their weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Weighted {
    pub lab: Lab,
    pub weight: f64,
}

/// The Lab cell of each of a set of colours, cells numbered in order of first appearance.
/// Computed once per image; each list then sums its pixels per cell in a small table.
pub(super) struct Cells {
    of: Vec<u32>,
    count: usize,
}

impl Cells {
    pub fn new(colours: &[Lab]) -> Self {
        const EMPTY: u32 = u32::MAX;
        let mut number = vec![EMPTY; L_CELLS * AB_CELLS * AB_CELLS];
        let mut count = 0;
        let of = colours
            .iter()
            .map(|&lab| {
                let n = &mut number[cell_key(lab)];
                if *n == EMPTY {
                    // At most one cell per colour, and a working copy has a few thousand.
                    *n = count as u32;
                    count += 1;
                }
                *n
            })
            .collect();
        Self { of, count }
    }

    /// The colours (those [`Cells::new`] saw, with their weights) that `include`
    /// selects, merged per cell: each cell's weighted mean and total weight, in cell
    /// order. Cells without selected weight are left out.
    pub fn gather(
        &self,
        colours: &[Lab],
        weights: &[f64],
        include: impl Fn(usize) -> bool,
    ) -> Vec<Weighted> {
        let mut sums = vec![([0.0f64; 3], 0.0f64); self.count];
        for (i, ((&cell, lab), &weight)) in self.of.iter().zip(colours).zip(weights).enumerate() {
            if weight > 0.0 && include(i) {
                let (sum, total) = &mut sums[cell as usize];
                sum[0] += f64::from(lab.l) * weight;
                sum[1] += f64::from(lab.a) * weight;
                sum[2] += f64::from(lab.b) * weight;
                *total += weight;
            }
        }
        sums.into_iter()
            .filter(|&(_, weight)| weight > 0.0)
            .map(|(sum, weight)| Weighted {
                lab: mean(sum, weight),
                weight,
            })
            .collect()
    }
}

fn cell_key(lab: Lab) -> usize {
    // Float to usize casts saturate, so NaN and out-of-range values land in edge cells.
    let index = |v: f32, cells: usize| ((v / CELL) as usize).min(cells - 1);
    let l = index(lab.l, L_CELLS);
    let a = index(lab.a + AB_OFFSET, AB_CELLS);
    let b = index(lab.b + AB_OFFSET, AB_CELLS);
    (l * AB_CELLS + a) * AB_CELLS + b
}

fn mean(sum: [f64; 3], weight: f64) -> Lab {
    Lab {
        l: (sum[0] / weight) as f32,
        a: (sum[1] / weight) as f32,
        b: (sum[2] / weight) as f32,
    }
}

/// Clusters `points` into at most `k` colours (and at most [`MAX_CENTRES`]), at least
/// [`MERGE_DELTA_E`] apart, each the weighted mean of its members with their total
/// weight, heaviest first.
///
/// Deterministic: the same points in the same order give the same clusters. The start is
/// a greedy, weighted farthest-point choice (k-means++ with the random draw replaced by
/// its most likely outcome): the heaviest colour, then repeatedly the colour with the
/// largest weight x squared distance to the centres so far, among those at least
/// [`MERGE_DELTA_E`] from all of them. When no colour is that far, fewer centres start:
/// a two-colour image gets two.
pub(super) fn kmeans(points: &[Weighted], k: usize) -> Vec<Weighted> {
    if points.is_empty() || k == 0 {
        return Vec::new();
    }
    let start = initial_centres(points, k.min(MAX_CENTRES));
    let mut centres = Centres::new(&start);
    let mut members = vec![usize::MAX; points.len()];
    let mut clusters = Vec::new();
    for _ in 0..MAX_ITERATIONS {
        let mut changed = false;
        for (point, member) in points.iter().zip(&mut members) {
            let nearest = centres.nearest(point.lab);
            changed |= *member != nearest;
            *member = nearest;
        }
        clusters = means(points, &members, start.len());
        for (i, cluster) in clusters.iter().enumerate() {
            // An emptied centre stays where it was; it is dropped below.
            if cluster.weight > 0.0 {
                centres.set(i, cluster.lab);
            }
        }
        if !changed {
            break;
        }
    }
    clusters.retain(|c| c.weight > 0.0);
    merge_close(&mut clusters);
    // Stable, so equal weights keep the order the start chose.
    clusters.sort_by(|p, q| q.weight.total_cmp(&p.weight));
    clusters
}

fn initial_centres(points: &[Weighted], k: usize) -> Vec<Lab> {
    let mut heaviest = 0;
    for (i, p) in points.iter().enumerate() {
        if p.weight > points[heaviest].weight {
            heaviest = i;
        }
    }
    let mut centres = vec![points[heaviest].lab];
    let mut nearest_sq: Vec<f32> = points
        .iter()
        .map(|p| lab::delta_e_squared(p.lab, centres[0]))
        .collect();
    let far_sq = MERGE_DELTA_E * MERGE_DELTA_E;
    while centres.len() < k {
        let mut best: Option<(usize, f64)> = None;
        for (i, (p, &d_sq)) in points.iter().zip(&nearest_sq).enumerate() {
            let score = p.weight * f64::from(d_sq);
            if d_sq >= far_sq && best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        let Some((chosen, _)) = best else { break };
        let centre = points[chosen].lab;
        centres.push(centre);
        for (p, d_sq) in points.iter().zip(&mut nearest_sq) {
            *d_sq = d_sq.min(lab::delta_e_squared(p.lab, centre));
        }
    }
    centres
}

/// Centres as three coordinate arrays padded with unreachable ones, so the distances to
/// all of them are a few vector operations rather than a loop with a branch per centre.
struct Centres {
    l: [f32; MAX_CENTRES],
    a: [f32; MAX_CENTRES],
    b: [f32; MAX_CENTRES],
}

impl Centres {
    /// Far enough that no Lab colour is nearer to a padding centre than to a real one.
    const UNREACHABLE: f32 = 1.0e6;

    fn new(labs: &[Lab]) -> Self {
        let mut centres = Self {
            l: [Self::UNREACHABLE; MAX_CENTRES],
            a: [Self::UNREACHABLE; MAX_CENTRES],
            b: [Self::UNREACHABLE; MAX_CENTRES],
        };
        for (i, &lab) in labs.iter().enumerate().take(MAX_CENTRES) {
            centres.set(i, lab);
        }
        centres
    }

    fn set(&mut self, i: usize, lab: Lab) {
        self.l[i] = lab.l;
        self.a[i] = lab.a;
        self.b[i] = lab.b;
    }

    /// Index of the centre nearest to `lab`; ties go to the lower index.
    fn nearest(&self, lab: Lab) -> usize {
        let mut d_sq = [0.0f32; MAX_CENTRES];
        for (i, d) in d_sq.iter_mut().enumerate() {
            let dl = self.l[i] - lab.l;
            let da = self.a[i] - lab.a;
            let db = self.b[i] - lab.b;
            *d = dl * dl + da * da + db * db;
        }
        let mut best = 0;
        for (i, &d) in d_sq.iter().enumerate().skip(1) {
            if d < d_sq[best] {
                best = i;
            }
        }
        best
    }
}

fn means(points: &[Weighted], members: &[usize], k: usize) -> Vec<Weighted> {
    let mut sums = vec![([0.0f64; 3], 0.0f64); k];
    for (p, &m) in points.iter().zip(members) {
        let (sum, weight) = &mut sums[m];
        sum[0] += f64::from(p.lab.l) * p.weight;
        sum[1] += f64::from(p.lab.a) * p.weight;
        sum[2] += f64::from(p.lab.b) * p.weight;
        *weight += p.weight;
    }
    sums.into_iter()
        .map(|(sum, weight)| Weighted {
            lab: if weight > 0.0 {
                mean(sum, weight)
            } else {
                Lab::default()
            },
            weight,
        })
        .collect()
}

/// Merges the closest pair of clusters while it is nearer than [`MERGE_DELTA_E`]. The
/// weighted mean of two clusters' means is the mean of their union, so merged colours
/// and weights stay exact.
fn merge_close(clusters: &mut Vec<Weighted>) {
    let limit_sq = MERGE_DELTA_E * MERGE_DELTA_E;
    loop {
        let mut closest: Option<(usize, usize, f32)> = None;
        for i in 0..clusters.len() {
            for j in i + 1..clusters.len() {
                let d_sq = lab::delta_e_squared(clusters[i].lab, clusters[j].lab);
                if d_sq < limit_sq && closest.is_none_or(|(_, _, best)| d_sq < best) {
                    closest = Some((i, j, d_sq));
                }
            }
        }
        let Some((i, j, _)) = closest else { return };
        let (p, q) = (clusters[i], clusters.remove(j));
        let weight = p.weight + q.weight;
        let blend =
            |x: f32, y: f32| ((f64::from(x) * p.weight + f64::from(y) * q.weight) / weight) as f32;
        clusters[i] = Weighted {
            lab: Lab {
                l: blend(p.lab.l, q.lab.l),
                a: blend(p.lab.a, q.lab.a),
                b: blend(p.lab.b, q.lab.b),
            },
            weight,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rgb: [u8; 3], weight: f64) -> Weighted {
        Weighted {
            lab: Lab::from_rgb(rgb),
            weight,
        }
    }

    #[test]
    fn cells_keep_exact_means_and_weights() {
        let a = Lab::from_rgb([200, 10, 10]);
        let b = Lab::from_rgb([201, 10, 10]);
        let far = Lab::from_rgb([0, 0, 255]);
        let colours = [a, far, b, a];
        let weights = [1.0, 2.0, 3.0, 0.0];
        let cells = Cells::new(&colours);
        assert_eq!(cells.count, 2);
        let all = cells.gather(&colours, &weights, |_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].weight, 4.0);
        let expected_l = (a.l * 1.0 + b.l * 3.0) / 4.0;
        assert!((all[0].lab.l - expected_l).abs() < 1e-4);
        assert_eq!(
            all[1],
            Weighted {
                lab: far,
                weight: 2.0
            }
        );
        let blue_only = cells.gather(&colours, &weights, |i| i == 1);
        assert_eq!(
            blue_only,
            [Weighted {
                lab: far,
                weight: 2.0
            }]
        );
        assert!(cells.gather(&colours, &weights, |i| i == 3).is_empty());
    }

    #[test]
    fn separates_distinct_colours_and_merges_near_ones() {
        let points = [
            point([250, 0, 0], 5.0),
            point([0, 0, 250], 2.0),
            point([245, 5, 5], 1.0), // within a few ΔE of the first
            point([0, 250, 0], 0.5),
        ];
        let clusters = kmeans(&points, 8);
        assert_eq!(clusters.len(), 3);
        assert_eq!(
            clusters.iter().map(|c| c.weight).collect::<Vec<_>>(),
            [6.0, 2.0, 0.5]
        );
        assert_eq!(kmeans(&points, 1).len(), 1);
        assert_eq!(kmeans(&points, 1)[0].weight, 8.5);
    }

    #[test]
    fn merging_keeps_the_mean_of_the_union() {
        let mut clusters = vec![point([100, 100, 100], 3.0), point([104, 104, 104], 1.0)];
        let expected = Lab {
            l: (clusters[0].lab.l * 3.0 + clusters[1].lab.l) / 4.0,
            a: 0.0,
            b: 0.0,
        };
        merge_close(&mut clusters);
        assert_eq!(clusters.len(), 1);
        assert_eq!(clusters[0].weight, 4.0);
        assert!(lab::delta_e(clusters[0].lab, expected) < 1e-3);
    }

    #[test]
    fn empty_input_gives_no_clusters() {
        assert!(kmeans(&[], 4).is_empty());
        assert!(kmeans(&[point([1, 2, 3], 1.0)], 0).is_empty());
    }
}
