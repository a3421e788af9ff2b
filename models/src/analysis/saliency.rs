//! A cheap, deterministic saliency map: where in a frame the content worth keeping is.
//!
//! The map is computed on a small working copy (longest side at most [`WORK_SIDE`] cells),
//! made with an area-average box filter in a single pass over the input, so the cost is
//! one read of every input pixel plus a few passes over a few thousand cells, whatever
//! the frame's size.
//!
//! # Model
//!
//! Each cell's saliency combines three cues, each normalised to `0..=1`:
//!
//! * **Border contrast** (weight [`W_CONTRAST`]): the colour distance of the cell from the
//!   median colour of the frame's outer band. Subjects seldom fill the edges of a frame,
//!   so the band is a fair sample of the background, and the per-channel median ignores a
//!   subject that does reach the edge on one side. This is the cue that separates an
//!   object from a plain backdrop, so it weighs most.
//! * **Edge strength** (weight [`W_EDGES`]): the Sobel gradient magnitude of luminance.
//!   Faces, text, machinery and other detailed subjects are dense in edges; skies, walls
//!   and out-of-focus backgrounds are not. Cluttered backgrounds have edges too, which is
//!   why this cue does not stand alone.
//! * **Colour saturation** (weight [`W_SATURATION`]): the chroma `max(r, g, b) - min(r, g,
//!   b)`, rather than HSV saturation, which is large and noisy in near-black pixels.
//!   Colourful objects stand out against the muted tones of most backgrounds; it weighs
//!   least because some backgrounds (grass, sky, wood) are saturated too.
//!
//! Each cue is divided by its 98th percentile, robust against a few extreme cells, but
//! never by less than a fixed floor, so a cue that is nearly absent (a grey frame's chroma,
//! a flat frame's edges) stays small instead of amplifying noise. The weighted sum is
//! squared, so cells where several cues agree outweigh cells that only one cue picks out
//! (background clutter is usually salient in one cue only). It is then multiplied by a
//! mild centre prior, falling from 1 at the centre to `1 - CENTRE_WEIGHT` in the corners:
//! photographers frame subjects towards the middle, and when a subject is wider than the
//! crop this keeps its middle rather than the busiest clutter beside it. Last, a 3x3 box
//! filter spreads an outline's saliency over the object it bounds.

use image::RgbImage;

/// Longest side of the working copy, in cells.
pub const WORK_SIDE: u32 = 96;

/// Weight of the distance from the border's median colour.
pub const W_CONTRAST: f32 = 0.4;
/// Weight of the luminance gradient magnitude.
pub const W_EDGES: f32 = 0.35;
/// Weight of the chroma.
pub const W_SATURATION: f32 = 0.25;

/// How much less a corner counts than the centre.
pub const CENTRE_WEIGHT: f32 = 0.5;

/// Percentile of each cue that maps to 1.0.
const NORM_PERCENTILE: f32 = 0.98;
/// Smallest divisors, in each cue's own units: a Sobel response of a 0.1 luminance step
/// is 0.4, chroma and colour distance are in `0..=1`.
const EDGE_FLOOR: f32 = 0.3;
const CHROMA_FLOOR: f32 = 0.15;
const CONTRAST_FLOOR: f32 = 0.15;
/// Thickness of the outer band sampled for the background colour, as a fraction of the
/// shorter side of the working copy.
const BAND_FRACTION: f32 = 0.08;

/// Saliency of each cell of a frame's working copy, row-major, each in `0..=1`.
///
/// Cell `(cx, cy)` covers the frame's pixels `x` with `x * width / frame_width == cx` (and
/// likewise for `y`), so the map spans the whole frame whatever its size.
#[derive(Debug, Clone, PartialEq)]
pub struct SaliencyMap {
    pub width: u32,
    pub height: u32,
    values: Vec<f32>,
}

impl SaliencyMap {
    /// Saliency of cell `(x, y)`; panics outside the map.
    pub fn get(&self, x: u32, y: u32) -> f32 {
        assert!(x < self.width && y < self.height, "cell outside the map");
        self.values[(y * self.width + x) as usize]
    }

    /// All cells, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Sum over all cells.
    pub fn total(&self) -> f32 {
        self.values.iter().sum()
    }

    /// Whether the map has no cells (the frame had no pixels).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The saliency map of `img`: at most [`WORK_SIDE`] cells on its longer side, the frame's
/// aspect ratio kept as far as whole cells allow. An empty frame gives an empty map.
pub fn saliency(img: &RgbImage) -> SaliencyMap {
    let (width, height) = work_size(img.width(), img.height());
    if width == 0 || height == 0 {
        return SaliencyMap {
            width: 0,
            height: 0,
            values: Vec::new(),
        };
    }
    let rgb = downscale(img, width, height);
    let (w, h) = (width as usize, height as usize);

    let mut edges = sobel(&rgb, w, h);
    let mut saturation: Vec<f32> = rgb.iter().map(chroma).collect();
    let background = border_median(&rgb, w, h);
    let mut contrast: Vec<f32> = rgb
        .iter()
        .map(|p| {
            let [dr, dg, db] = [
                p[0] - background[0],
                p[1] - background[1],
                p[2] - background[2],
            ];
            ((dr * dr + dg * dg + db * db) / 3.0).sqrt()
        })
        .collect();
    let mut scratch = Vec::with_capacity(w * h);
    normalise(&mut edges, EDGE_FLOOR, &mut scratch);
    normalise(&mut saturation, CHROMA_FLOOR, &mut scratch);
    normalise(&mut contrast, CONTRAST_FLOOR, &mut scratch);

    // Centre prior: 1 - CENTRE_WEIGHT * r², r² = (dx² + dy²) / 2 in -1..1 coordinates.
    let offsets = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + 0.5) / n as f32 * 2.0 - 1.0).powi(2) / 2.0)
            .collect()
    };
    let (dx2, dy2) = (offsets(w), offsets(h));
    let mut combined = Vec::with_capacity(w * h);
    for (y, dy2) in dy2.iter().enumerate() {
        let row = y * w..(y + 1) * w;
        let cues = contrast[row.clone()]
            .iter()
            .zip(&edges[row.clone()])
            .zip(&saturation[row]);
        combined.extend(cues.zip(&dx2).map(|(((c, e), s), dx2)| {
            let cue = W_CONTRAST * c + W_EDGES * e + W_SATURATION * s;
            cue * cue * (1.0 - CENTRE_WEIGHT * (dx2 + dy2))
        }));
    }
    SaliencyMap {
        width,
        height,
        values: box_blur3(&combined, w, h),
    }
}

/// The working copy's size: the frame scaled so its longer side is at most [`WORK_SIDE`],
/// never enlarged, never below one cell on a non-empty side.
fn work_size(width: u32, height: u32) -> (u32, u32) {
    if width == 0 || height == 0 {
        return (0, 0);
    }
    let long = width.max(height);
    if long <= WORK_SIDE {
        return (width, height);
    }
    let scale = |side: u32| {
        ((u64::from(side) * u64::from(WORK_SIDE) + u64::from(long) / 2) / u64::from(long)).max(1)
            as u32
    };
    (scale(width), scale(height))
}

/// Area-average downscale to `w x h` cells, RGB in `0..=1`, in one pass over the input:
/// every pixel is added to the one cell it falls in, then each cell is divided by its
/// pixel count.
fn downscale(img: &RgbImage, w: u32, h: u32) -> Vec<[f32; 3]> {
    let (iw, ih) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    // Pixel `i` of `total` falls in cell `i * n / total`, so cell `c` starts at the first
    // pixel with `i * n >= c * total`.
    let starts = |n: usize, total: u32| -> Vec<usize> {
        (0..=n)
            .map(|c| (c as u64 * u64::from(total)).div_ceil(n as u64) as usize)
            .collect()
    };
    let (cols, rows) = (starts(w, iw), starts(h, ih));
    let row_len = iw as usize * 3;
    let raw = img.as_raw();
    let mut cells = Vec::with_capacity(w * h);
    let mut sums = vec![[0u64; 3]; w];
    for cy in 0..h {
        sums.fill([0; 3]);
        for row in raw[rows[cy] * row_len..rows[cy + 1] * row_len].chunks_exact(row_len) {
            for (cx, sum) in sums.iter_mut().enumerate() {
                for px in row[cols[cx] * 3..cols[cx + 1] * 3].chunks_exact(3) {
                    sum[0] += u64::from(px[0]);
                    sum[1] += u64::from(px[1]);
                    sum[2] += u64::from(px[2]);
                }
            }
        }
        let height = (rows[cy + 1] - rows[cy]) as u64;
        cells.extend(sums.iter().enumerate().map(|(cx, sum)| {
            // Mean first (exact in f64), then scale: a flat region then gives identical
            // cells whatever their pixel counts, so it has exactly zero gradient.
            let n = (height * (cols[cx + 1] - cols[cx]) as u64) as f64;
            sum.map(|c| (c as f64 / n / 255.0) as f32)
        }));
    }
    cells
}

/// `max(r, g, b) - min(r, g, b)`.
fn chroma(p: &[f32; 3]) -> f32 {
    p.iter().copied().fold(0.0, f32::max) - p.iter().copied().fold(1.0, f32::min)
}

/// Sobel gradient magnitude of Rec. 709 luminance, edges extended by repetition.
fn sobel(rgb: &[[f32; 3]], w: usize, h: usize) -> Vec<f32> {
    // Luminance with a one-cell border repeating the edge, so the kernel needs no bounds.
    let pw = w + 2;
    let mut luma = vec![0.0f32; pw * (h + 2)];
    for py in 0..h + 2 {
        let y = py.clamp(1, h) - 1;
        for px in 0..pw {
            let p = rgb[y * w + px.clamp(1, w) - 1];
            luma[py * pw + px] = 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2];
        }
    }
    let mut out = vec![0.0; w * h];
    for (y, out) in out.chunks_exact_mut(w).enumerate() {
        let (up, mid, down) = (
            &luma[y * pw..(y + 1) * pw],
            &luma[(y + 1) * pw..(y + 2) * pw],
            &luma[(y + 2) * pw..(y + 3) * pw],
        );
        for (x, o) in out.iter_mut().enumerate() {
            // Differences first, so a flat region gives exactly zero.
            let gx = (up[x + 2] - up[x]) + 2.0 * (mid[x + 2] - mid[x]) + (down[x + 2] - down[x]);
            let gy =
                (down[x] - up[x]) + 2.0 * (down[x + 1] - up[x + 1]) + (down[x + 2] - up[x + 2]);
            *o = (gx * gx + gy * gy).sqrt();
        }
    }
    out
}

/// Per-channel median of the cells in the outer band.
fn border_median(rgb: &[[f32; 3]], w: usize, h: usize) -> [f32; 3] {
    let band = ((w.min(h) as f32 * BAND_FRACTION).round() as usize).max(1);
    let mut channels: [Vec<f32>; 3] = Default::default();
    for (y, row) in rgb.chunks_exact(w).enumerate() {
        let whole_row = y < band || y + band >= h;
        for (x, p) in row.iter().enumerate() {
            if whole_row || x < band || x + band >= w {
                for (c, v) in channels.iter_mut().zip(p) {
                    c.push(*v);
                }
            }
        }
    }
    channels.map(|mut c| {
        let mid = c.len() / 2;
        *c.select_nth_unstable_by(mid, f32::total_cmp).1
    })
}

/// Scales `values` so the [`NORM_PERCENTILE`] maps to 1 (but never divides by less than
/// `floor`), clamping above.
fn normalise(values: &mut [f32], floor: f32, scratch: &mut Vec<f32>) {
    scratch.clear();
    scratch.extend_from_slice(values);
    let k = ((scratch.len() - 1) as f32 * NORM_PERCENTILE) as usize;
    let reference = scratch
        .select_nth_unstable_by(k, f32::total_cmp)
        .1
        .max(floor);
    for v in values {
        *v = (*v / reference).min(1.0);
    }
}

/// Mean over each cell's 3x3 neighbourhood, clipped at the edges.
fn box_blur3(values: &[f32], w: usize, h: usize) -> Vec<f32> {
    // Separable: the mean of three cells (two at an edge) across, then down.
    let mut across = vec![0.0; w * h];
    for (row, out) in values.chunks_exact(w).zip(across.chunks_exact_mut(w)) {
        for (x, o) in out.iter_mut().enumerate() {
            let (lo, hi) = (x.saturating_sub(1), (x + 1).min(w - 1));
            *o = row[lo..=hi].iter().sum::<f32>() / (hi - lo + 1) as f32;
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        let (lo, hi) = (y.saturating_sub(1), (y + 1).min(h - 1));
        let n = (hi - lo + 1) as f32;
        let row = &mut out[y * w..(y + 1) * w];
        for source in across[lo * w..(hi + 1) * w].chunks_exact(w) {
            for (o, v) in row.iter_mut().zip(source) {
                *o += v;
            }
        }
        for o in row {
            *o /= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const GREY: Rgb<u8> = Rgb([128, 128, 128]);

    /// A flat grey frame with a `side`-pixel red-and-yellow checkerboard at `(x, y)`.
    fn scene(width: u32, height: u32, x: u32, y: u32, side: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |px, py| {
            if (x..x + side).contains(&px) && (y..y + side).contains(&py) {
                if ((px - x) / 10 + (py - y) / 10).is_multiple_of(2) {
                    Rgb([220, 30, 30])
                } else {
                    Rgb([240, 220, 40])
                }
            } else {
                GREY
            }
        })
    }

    /// Mean saliency of the cells whose centres fall inside `frame` pixels `x0..x1, y0..y1`,
    /// and of all other cells.
    fn inside_outside(map: &SaliencyMap, frame: (u32, u32), rect: [u32; 4]) -> (f32, f32) {
        let [x0, y0, x1, y1] = rect.map(f64::from);
        let (mut inside, mut outside) = ((0.0, 0), (0.0, 0));
        for cy in 0..map.height {
            for cx in 0..map.width {
                let px = (f64::from(cx) + 0.5) * f64::from(frame.0) / f64::from(map.width);
                let py = (f64::from(cy) + 0.5) * f64::from(frame.1) / f64::from(map.height);
                let bucket = if (x0..x1).contains(&px) && (y0..y1).contains(&py) {
                    &mut inside
                } else {
                    &mut outside
                };
                bucket.0 += map.get(cx, cy);
                bucket.1 += 1;
            }
        }
        (inside.0 / inside.1 as f32, outside.0 / outside.1 as f32)
    }

    #[test]
    fn working_copy_keeps_the_aspect_and_never_enlarges() {
        assert_eq!(work_size(400, 200), (96, 48));
        assert_eq!(work_size(375, 500), (72, 96));
        assert_eq!(work_size(50, 30), (50, 30));
        assert_eq!(work_size(10_000, 10), (96, 1));
        assert_eq!(work_size(0, 300), (0, 0));
        let map = saliency(&scene(400, 200, 10, 10, 60));
        assert_eq!((map.width, map.height), (96, 48));
        assert_eq!(map.values().len(), 96 * 48);
    }

    #[test]
    fn downscale_averages_each_cells_pixels() {
        // 4x2 to 2x1: each cell is the mean of a 2x2 block.
        let img = RgbImage::from_raw(
            4,
            2,
            vec![
                0, 0, 0, 255, 255, 255, 10, 20, 30, 10, 20, 30, //
                255, 255, 255, 0, 0, 0, 30, 40, 50, 30, 40, 50,
            ],
        )
        .unwrap();
        let cells = downscale(&img, 2, 1);
        assert_eq!(cells[0], [0.5; 3]);
        let expected = [20.0 / 255.0, 30.0 / 255.0, 40.0 / 255.0];
        for (got, want) in cells[1].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Uneven division: 5 columns into 2 cells (3 + 2), all pixels counted once.
        let ramp = RgbImage::from_fn(5, 1, |x, _| Rgb([(x * 50) as u8; 3]));
        let cells = downscale(&ramp, 2, 1);
        assert!((cells[0][0] - 50.0 / 255.0).abs() < 1e-6);
        assert!((cells[1][0] - 175.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn empty_frame_gives_empty_map() {
        for (w, h) in [(0, 0), (0, 5), (5, 0)] {
            let map = saliency(&RgbImage::new(w, h));
            assert!(map.is_empty());
            assert_eq!((map.width, map.height), (0, 0));
        }
    }

    #[test]
    fn flat_frame_has_no_saliency() {
        let map = saliency(&RgbImage::from_pixel(300, 200, GREY));
        assert_eq!(map.total(), 0.0);
    }

    #[test]
    fn textured_object_stands_out_and_values_are_in_range() {
        let img = scene(400, 200, 320, 70, 60);
        let map = saliency(&img);
        assert!(map.values().iter().all(|v| (0.0..=1.0).contains(v)));
        let (inside, outside) = inside_outside(&map, (400, 200), [320, 70, 380, 130]);
        assert!(
            inside > 20.0 * outside,
            "inside {inside}, outside {outside}"
        );
        assert_eq!(map, saliency(&img), "deterministic");
    }

    #[test]
    fn flat_coloured_object_is_salient_inside_not_only_on_its_outline() {
        let img = RgbImage::from_fn(400, 400, |x, y| {
            if (150..250).contains(&x) && (150..250).contains(&y) {
                Rgb([40, 60, 200])
            } else {
                GREY
            }
        });
        let map = saliency(&img);
        let centre = map.get(48, 48);
        let background = map.get(10, 48);
        assert!(centre > 0.2, "centre of the object {centre}");
        assert!(background < 0.01, "background {background}");
    }

    #[test]
    fn colourless_texture_is_salient_through_its_edges() {
        let img = RgbImage::from_fn(400, 400, |x, y| {
            if (100..200).contains(&x)
                && (100..200).contains(&y)
                && (x / 8 + y / 8).is_multiple_of(2)
            {
                Rgb([150, 150, 150])
            } else {
                GREY
            }
        });
        let (inside, outside) = inside_outside(&saliency(&img), (400, 400), [100, 100, 200, 200]);
        assert!(
            inside > 10.0 * outside,
            "inside {inside}, outside {outside}"
        );
    }

    #[test]
    fn background_is_the_median_of_the_border_band() {
        // A subject touching the left edge occupies part of the band; the median ignores it.
        let img = RgbImage::from_fn(
            400,
            300,
            |x, _| {
                if x < 60 { Rgb([30, 160, 40]) } else { GREY }
            },
        );
        let map = saliency(&img);
        assert!(map.get(5, 36) > 0.1, "green strip {}", map.get(5, 36));
        assert!(map.get(60, 36) < 1e-6, "grey backdrop {}", map.get(60, 36));
    }

    #[test]
    fn centre_prior_favours_the_middle_of_the_frame() {
        let centred = saliency(&scene(400, 400, 170, 170, 60));
        let cornered = saliency(&scene(400, 400, 0, 0, 60));
        assert!(centred.total() > cornered.total());
        assert!(cornered.total() > 0.4 * centred.total(), "only mildly");
    }
}
