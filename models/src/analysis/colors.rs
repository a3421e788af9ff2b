//! Dominant colours of an image, of its background and of its foreground, each colour
//! with its share of the pixels and a palette name.
//!
//! The image is first reduced to a small working copy (longest side 64 px) by a box
//! filter in linear light, one pass over the input; everything after runs on the working
//! copy, so the cost past that pass does not depend on the input's size. Colours are
//! clustered in CIE Lab with a deterministic k-means: the same image always gives the
//! same answer.

mod cluster;

use image::RgbImage;

use crate::analysis::lab::{self, Lab};
use crate::analysis::palette;
use cluster::Cells;

pub use tagfleet_contracts::analyses::MAX_COLORS;

const _: () = assert!(MAX_COLORS <= cluster::MAX_CENTRES);

/// Longest side of the working copy. 64 px still give a colour that covers 0.5% of a 4:3
/// frame some 15 working pixels, and keep the analysis of a 600x450 input near 1 ms.
const WORK_SIDE: usize = 64;

/// Width of the border band, as a fraction of each side, whose colours model the
/// background.
const BORDER_FRACTION: f32 = 0.08;
/// Colours the border band is clustered into.
const BORDER_CLUSTERS: usize = 8;
/// A border colour must cover this fraction of the band to count as background: an
/// object that merely touches the edge stays foreground.
const MIN_BORDER_SHARE: f64 = 0.1;
/// How much the saliency falls from the centre of the frame to its corners.
const CENTRE_PRIOR: f32 = 0.25;
/// Least saliency (ΔE from the background colours) a foreground pixel has: twice the
/// distance at which clusters merge, so a foreground colour is one the palette would
/// name differently, not the background in shadow or under noise.
const MIN_FOREGROUND_DELTA_E: f32 = 2.0 * cluster::MERGE_DELTA_E;
/// Histogram bins for Otsu's threshold.
const OTSU_BINS: usize = 64;

/// One dominant colour of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct DominantColor {
    /// The mean colour (in Lab) of the pixels the colour stands for, as 8-bit sRGB.
    pub rgb: [u8; 3],
    /// Percent of the list's pixels (the image's, the background's or the foreground's)
    /// that have this colour.
    pub share_percent: f32,
    /// Name of the nearest palette colour ([`palette::closest`]).
    pub name: &'static str,
    /// That palette colour's basic colour name, one of [`palette::BASIC_COLORS`].
    pub parent: &'static str,
}

impl DominantColor {
    /// The colour as lowercase `#rrggbb`.
    pub fn hex(&self) -> String {
        let [r, g, b] = self.rgb;
        format!("#{r:02x}{g:02x}{b:02x}")
    }
}

/// The dominant colours of an image, its background and its foreground. Each list is
/// sorted by share, largest first, holds colours at least ~10 ΔE apart, and is cut to
/// the requested count. Shares are of all the pixels of that list, cut or not: a full
/// list sums to 100, a cut one to less.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColorAnalysis {
    pub image: Vec<DominantColor>,
    /// Empty only when every pixel looks like the foreground.
    pub background: Vec<DominantColor>,
    /// Empty when nothing stands out from the border's colours: a uniform image, or a
    /// texture that fills the frame.
    pub foreground: Vec<DominantColor>,
}

/// The dominant colours of `img`, of its background and of its foreground.
///
/// `img` is the whole decoded frame, upright (orientation applied), possibly already
/// reduced in size. `count` (1..=[`MAX_COLORS`]) is how many colors to report at most per
/// list; larger counts report [`MAX_COLORS`], 0 reports nothing. An empty image gives
/// empty lists.
///
/// Background and foreground come from a border model. The outer 8% of each side is
/// taken to show background; its colours are clustered, and those covering at least 10%
/// of that band are the background colours. A pixel's saliency is its ΔE to the nearest
/// background colour, lowered by up to a quarter towards the corners (subjects tend to
/// be central). Pixels more salient than a threshold are foreground. The threshold is
/// Otsu's on the saliency histogram, which adapts to how widely the background's own
/// pixels spread around its colours (little on a studio backdrop, much on foliage), but
/// never below 20 ΔE: Otsu always splits, and on a uniform or noisy-uniform image it
/// would cut the noise in two.
///
/// So the foreground is what differs from the frame's edges: a subject that fills the
/// frame and runs off every edge (a close-up of fur) counts as background, and only
/// what differs from it (eyes, nose) as foreground.
pub fn dominant_colors(img: &RgbImage, count: usize) -> ColorAnalysis {
    let count = count.min(MAX_COLORS);
    let work = Working::downscale(img);
    if work.lab.is_empty() || count == 0 {
        return ColorAnalysis::default();
    }
    let cells = Cells::new(&work.lab);
    let is_foreground = foreground(&cells, &work);
    ColorAnalysis {
        image: describe(&cells, &work, |_| true, count),
        background: describe(&cells, &work, |i| !is_foreground[i], count),
        foreground: describe(&cells, &work, |i| is_foreground[i], count),
    }
}

/// The working copy: Lab colour of each pixel in row order, and how many input pixels
/// each stands for (block sizes differ by a row or column where sizes do not divide).
struct Working {
    width: usize,
    height: usize,
    lab: Vec<Lab>,
    weight: Vec<f64>,
}

impl Working {
    /// Box-filters `img` down to [`WORK_SIDE`] on its longest side (never up). Blocks
    /// are averaged in linear light, as light mixes: averaging sRGB values darkens the
    /// blend of two contrasting colours.
    fn downscale(img: &RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Self {
                width: 0,
                height: 0,
                lab: Vec::new(),
                weight: Vec::new(),
            };
        }
        let longest = w.max(h);
        let scaled = |side: usize| {
            if longest <= WORK_SIDE {
                side
            } else {
                ((side * WORK_SIDE + longest / 2) / longest).max(1)
            }
        };
        let (ow, oh) = (scaled(w), scaled(h));
        // Block i covers input columns (rows) bounds[i]..bounds[i + 1]; none is empty as
        // the copy is never larger than the input.
        let bounds =
            |n: usize, out: usize| -> Vec<usize> { (0..=out).map(|i| i * n / out).collect() };
        let (xs, ys) = (bounds(w, ow), bounds(h, oh));
        let lut = lab::linear_table();
        let mut sums = vec![[0.0f64; 3]; ow * oh];
        let rows = img.as_raw().chunks_exact(3 * w).take(h);
        for (y, row) in rows.enumerate() {
            let oy = ys.partition_point(|&start| start <= y) - 1;
            let out = &mut sums[oy * ow..(oy + 1) * ow];
            for (sum, x) in out.iter_mut().zip(xs.windows(2)) {
                let mut acc = [0.0f32; 3];
                for p in row[3 * x[0]..3 * x[1]].chunks_exact(3) {
                    acc[0] += lut[usize::from(p[0])];
                    acc[1] += lut[usize::from(p[1])];
                    acc[2] += lut[usize::from(p[2])];
                }
                for (s, a) in sum.iter_mut().zip(acc) {
                    *s += f64::from(a);
                }
            }
        }
        let mut lab = Vec::with_capacity(ow * oh);
        let mut weight = Vec::with_capacity(ow * oh);
        for (i, sum) in sums.iter().enumerate() {
            let (ox, oy) = (i % ow, i / ow);
            let n = ((xs[ox + 1] - xs[ox]) * (ys[oy + 1] - ys[oy])) as f64;
            let mean = sum.map(|s| (s / n) as f32);
            lab.push(Lab::from_linear(mean));
            weight.push(n);
        }
        Self {
            width: ow,
            height: oh,
            lab,
            weight,
        }
    }
}

/// Clusters the working pixels `include` selects into the list the caller gets.
fn describe(
    cells: &Cells,
    work: &Working,
    include: impl Fn(usize) -> bool,
    count: usize,
) -> Vec<DominantColor> {
    let points = cells.gather(&work.lab, &work.weight, include);
    let clusters = cluster::kmeans(&points, MAX_COLORS);
    let total: f64 = clusters.iter().map(|c| c.weight).sum();
    clusters
        .iter()
        .take(count)
        .map(|c| {
            let rgb = c.lab.to_rgb();
            let named = palette::closest(rgb);
            DominantColor {
                rgb,
                share_percent: (100.0 * c.weight / total) as f32,
                name: named.name,
                parent: named.parent,
            }
        })
        .collect()
}

/// Which working pixels are foreground, by the border model of [`dominant_colors`].
fn foreground(cells: &Cells, work: &Working) -> Vec<bool> {
    let (w, h) = (work.width, work.height);
    let band = |side: usize| ((side as f32 * BORDER_FRACTION).ceil() as usize).max(1);
    let (bx, by) = (band(w), band(h));
    let in_band = |i: usize| {
        let (x, y) = (i % w, i / w);
        x < bx || y < by || x + bx >= w || y + by >= h
    };
    let border_pixels = cells.gather(&work.lab, &work.weight, in_band);
    let border = cluster::kmeans(&border_pixels, BORDER_CLUSTERS);
    let band_weight: f64 = border.iter().map(|c| c.weight).sum();
    let background: Vec<Lab> = border
        .iter()
        .enumerate()
        // The heaviest border colour is background however fragmented the band is.
        .filter(|(rank, c)| *rank == 0 || c.weight >= MIN_BORDER_SHARE * band_weight)
        .map(|(_, c)| c.lab)
        .collect();

    let saliency: Vec<f32> = work
        .lab
        .iter()
        .enumerate()
        .map(|(i, &px)| {
            let nearest_sq = background
                .iter()
                .map(|&c| lab::delta_e_squared(px, c))
                .fold(f32::INFINITY, f32::min);
            // Offset from the centre, -1..=1 on each axis; r_sq is 0 at the centre, 1 at
            // the corners.
            let dx = 2.0 * ((i % w) as f32 + 0.5) / w as f32 - 1.0;
            let dy = 2.0 * ((i / w) as f32 + 0.5) / h as f32 - 1.0;
            let r_sq = 0.5 * (dx * dx + dy * dy);
            nearest_sq.sqrt() * (1.0 - CENTRE_PRIOR * r_sq)
        })
        .collect();
    let threshold = otsu(&saliency, &work.weight).max(MIN_FOREGROUND_DELTA_E);
    saliency.iter().map(|&s| s > threshold).collect()
}

/// Otsu's threshold of weighted values: the cut that maximises the between-class
/// variance of a [`OTSU_BINS`]-bin histogram. Values at or below it form the lower class.
fn otsu(values: &[f32], weights: &[f64]) -> f32 {
    let max = values.iter().copied().fold(0.0f32, f32::max);
    if max <= 0.0 {
        return 0.0;
    }
    let bin_width = max / OTSU_BINS as f32;
    let mut histogram = [0.0f64; OTSU_BINS];
    for (&v, &w) in values.iter().zip(weights) {
        let bin = ((v / bin_width) as usize).min(OTSU_BINS - 1);
        histogram[bin] += w;
    }
    let total: f64 = histogram.iter().sum();
    let total_moment: f64 = histogram
        .iter()
        .enumerate()
        .map(|(i, &n)| i as f64 * n)
        .sum();
    let (mut lower, mut lower_moment) = (0.0, 0.0);
    let (mut best_cut, mut best_variance) = (OTSU_BINS - 1, -1.0);
    for (i, &n) in histogram.iter().enumerate().take(OTSU_BINS - 1) {
        lower += n;
        lower_moment += i as f64 * n;
        let upper = total - lower;
        if lower <= 0.0 || upper <= 0.0 {
            continue;
        }
        let mean_gap = lower_moment / lower - (total_moment - lower_moment) / upper;
        let variance = lower * upper * mean_gap * mean_gap;
        if variance > best_variance {
            best_variance = variance;
            best_cut = i;
        }
    }
    (best_cut + 1) as f32 * bin_width
}

#[cfg(test)]
mod tests;
