//! Smart crops: for each requested aspect ratio or size, the box of a frame that keeps
//! the most salient content.
//!
//! # Search and scoring
//!
//! For a request of aspect `w:h`, the candidates are boxes of that aspect at 100%, 90%,
//! 80%, 70% and 60% of the side of the largest one that fits the frame, each at every
//! position of the saliency grid (see [`super::saliency`]). Summed-area tables of the
//! saliency and of its first moments make each candidate O(1), and a request has a few
//! thousand of them. A candidate `B` scores
//!
//! ```text
//! score(B) = captured(B) / relative_area(B) ^ 0.2 * centring(B)
//! ```
//!
//! * `captured(B)`: the fraction of the frame's saliency inside `B`. Among boxes of one
//!   size, it alone would choose the place.
//! * `relative_area(B)`: the area of `B` over the area of the largest box. With exponent 1
//!   the score would be plain density, and the smallest box around the most salient spot
//!   would always win; with exponent 0 the largest box always would. With 0.2, a box at a
//!   fraction `s` of the largest side wins only if it keeps more than `s ^ 0.4` of what the
//!   best largest box keeps (96% at `s` = 0.9, 82% at `s` = 0.6), that is when it holds
//!   clearly more salient content for its size. A subject spread over the frame keeps the
//!   largest box; a compact subject on a plain background gets a closer one.
//! * `centring(B)`: `1 - 0.1 * d²`, where `d` is the distance from the centre of `B` to the
//!   centroid of the saliency inside it, in half-box units (0 when centred, up to 1.4 in a
//!   corner). Where several positions keep the same content (a small subject in a large
//!   box), it puts the subject in the middle rather than against an edge.
//!
//! Remaining ties go to the larger box, then to the position nearer the frame's centre.
//! The winning grid window is carried over to frame pixels by its relative offset, so a
//! window against an edge of the grid gives a box against that edge of the frame. A frame
//! with no saliency at all gets the largest box, centred.

use image::RgbImage;
use tagfleet_contracts::analyses::{CropRequest, MAX_CROPS};

use super::saliency::{SaliencyMap, saliency};

/// Fractions of the largest box's side tried for each request (see the module docs).
const SCALES: [f64; 5] = [1.0, 0.9, 0.8, 0.7, 0.6];
/// Exponent of the relative area that divides a candidate's score.
const SCALE_EXPONENT: f64 = 0.2;
/// Cost of a subject off the centre of its box, per squared half-box.
const CENTRING_WEIGHT: f64 = 0.1;

/// A crop in the original frame's pixels: `x..x + width`, `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Suggests one crop per request, in order.
///
/// `img` is the decoded frame, upright (orientation applied), possibly reduced in size
/// (a JPEG decoded at 1/2..1/8 scale); `full_size` is the upright size of the original.
/// Boxes are in `full_size` coordinates. One answer per request, in order: the box, or
/// why there is none (a size larger than the image: "the image is 200x150, smaller than
/// 300x200"; an empty image; a request beyond the first [`MAX_CROPS`]).
///
/// An aspect request gets a box of exactly that aspect as far as whole pixels allow (the
/// width within half a pixel of `height * w / h`, or the other way round). A size request
/// `WxH` gets a box of aspect `W:H` at least `W` by `H` pixels, for the caller to resize.
pub fn suggest_crops(
    img: &RgbImage,
    full_size: (u32, u32),
    requests: &[CropRequest],
) -> Vec<Result<CropBox, String>> {
    let (fw, fh) = full_size;
    let empty = if fw == 0 || fh == 0 {
        Some(format!("the image is empty ({fw}x{fh})"))
    } else if img.width() == 0 || img.height() == 0 {
        Some(format!(
            "the decoded frame is empty ({}x{})",
            img.width(),
            img.height()
        ))
    } else {
        None
    };
    let mut search: Option<Search> = None;
    requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            if let Some(why) = &empty {
                return Err(why.clone());
            }
            if i >= MAX_CROPS {
                return Err(format!("at most {MAX_CROPS} crops per image"));
            }
            let (aspect, min) = match *request {
                CropRequest::Aspect { w, h } => ((w, h), (0, 0)),
                CropRequest::Size { width, height } => {
                    if width > fw || height > fh {
                        return Err(format!(
                            "the image is {fw}x{fh}, smaller than {width}x{height}"
                        ));
                    }
                    ((width, height), (width, height))
                }
            };
            let search = search.get_or_insert_with(|| Search::new(saliency(img), full_size));
            Ok(search.best(aspect, min))
        })
        .collect()
}

/// `round(a * b / c)` without overflow, for `c > 0`.
fn mul_div_round(a: u32, b: u32, c: u32) -> u32 {
    let (a, b, c) = (u64::from(a), u64::from(b), u64::from(c));
    ((2 * a * b + c) / (2 * c)).min(u64::from(u32::MAX)) as u32
}

/// A frame's saliency with its summed-area tables, ready for any number of requests.
struct Search {
    frame: (u32, u32),
    grid: (usize, usize),
    /// Inclusive prefix sums, `(grid.0 + 1) * (grid.1 + 1)`, of saliency `s`, `s * x` and
    /// `s * y` (cell centres), for the mass and centroid of any window in O(1).
    mass: Vec<f64>,
    moment_x: Vec<f64>,
    moment_y: Vec<f64>,
}

impl Search {
    fn new(map: SaliencyMap, frame: (u32, u32)) -> Self {
        let (w, h) = (map.width as usize, map.height as usize);
        let stride = w + 1;
        let mut mass = vec![0.0; stride * (h + 1)];
        let mut moment_x = mass.clone();
        let mut moment_y = mass.clone();
        for y in 0..h {
            let (mut row_s, mut row_x, mut row_y) = (0.0, 0.0, 0.0);
            for x in 0..w {
                let s = f64::from(map.values()[y * w + x]);
                row_s += s;
                row_x += s * (x as f64 + 0.5);
                row_y += s * (y as f64 + 0.5);
                let (above, here) = (y * stride + x + 1, (y + 1) * stride + x + 1);
                mass[here] = mass[above] + row_s;
                moment_x[here] = moment_x[above] + row_x;
                moment_y[here] = moment_y[above] + row_y;
            }
        }
        Self {
            frame,
            grid: (w, h),
            mass,
            moment_x,
            moment_y,
        }
    }

    /// Sum of `table` over cells `x0..x1`, `y0..y1`.
    fn window(&self, table: &[f64], x0: usize, y0: usize, x1: usize, y1: usize) -> f64 {
        let stride = self.grid.0 + 1;
        table[y1 * stride + x1] - table[y0 * stride + x1] - table[y1 * stride + x0]
            + table[y0 * stride + x0]
    }

    /// The best box of aspect `aspect` that is at least `min` in frame pixels.
    fn best(&self, aspect: (u32, u32), min: (u32, u32)) -> CropBox {
        let (fw, fh) = self.frame;
        let (gw, gh) = self.grid;
        let sizes = box_sizes(self.frame, aspect, min);
        let largest = sizes[0];
        let total = self.window(&self.mass, 0, 0, gw, gh);
        let centred = |(bw, bh): (u32, u32)| CropBox {
            x: (fw - bw) / 2,
            y: (fh - bh) / 2,
            width: bw,
            height: bh,
        };
        if total <= 0.0 {
            return centred(largest);
        }
        let largest_area = f64::from(largest.0) * f64::from(largest.1);
        let mut best: Option<Candidate> = None;
        for &(bw, bh) in &sizes {
            let cw = ((f64::from(bw) * gw as f64 / f64::from(fw)).round() as usize).clamp(1, gw);
            let ch = ((f64::from(bh) * gh as f64 / f64::from(fh)).round() as usize).clamp(1, gh);
            let tightness =
                (f64::from(bw) * f64::from(bh) / largest_area).powf(-SCALE_EXPONENT) / total;
            let (half_w, half_h) = (cw as f64 / 2.0, ch as f64 / 2.0);
            for y0 in 0..=gh - ch {
                for x0 in 0..=gw - cw {
                    let (x1, y1) = (x0 + cw, y0 + ch);
                    let s = self.window(&self.mass, x0, y0, x1, y1);
                    if s <= 0.0 {
                        continue;
                    }
                    let centre = (x0 as f64 + half_w, y0 as f64 + half_h);
                    let dx = (self.window(&self.moment_x, x0, y0, x1, y1) / s - centre.0) / half_w;
                    let dy = (self.window(&self.moment_y, x0, y0, x1, y1) / s - centre.1) / half_h;
                    let centring = 1.0 - CENTRING_WEIGHT * (dx * dx + dy * dy);
                    let candidate = Candidate {
                        score: s * tightness * centring,
                        size: (bw, bh),
                        origin: (x0, y0),
                        window: (cw, ch),
                        off_centre: (centre.0 - gw as f64 / 2.0).powi(2)
                            + (centre.1 - gh as f64 / 2.0).powi(2),
                    };
                    if best.as_ref().is_none_or(|b| candidate.beats(b)) {
                        best = Some(candidate);
                    }
                }
            }
        }
        let Some(Candidate {
            size: (bw, bh),
            origin: (x0, y0),
            window: (cw, ch),
            ..
        }) = best
        else {
            return centred(largest);
        };
        // The window's offset as a fraction of the room it had, applied to the room the box
        // has: a window against an edge gives a box against that edge, although whole cells
        // and whole pixels round differently.
        let place = |start: usize, window: usize, cells: usize, frame: u32, size: u32| {
            let room = frame - size;
            if window >= cells {
                return room / 2;
            }
            (start as f64 * f64::from(room) / (cells - window) as f64).round() as u32
        };
        CropBox {
            x: place(x0, cw, gw, fw, bw),
            y: place(y0, ch, gh, fh, bh),
            width: bw,
            height: bh,
        }
    }
}

/// A box size placed at a window of the saliency grid.
struct Candidate {
    score: f64,
    /// In frame pixels.
    size: (u32, u32),
    /// In cells.
    origin: (usize, usize),
    window: (usize, usize),
    /// Squared distance, in cells, from the window's centre to the grid's.
    off_centre: f64,
}

impl Candidate {
    /// Relative score difference below which two candidates tie: sums over different
    /// windows of equal content differ in their last bits.
    const TIE: f64 = 1e-6;

    /// Whether `self` is better than `other`, which was found earlier. Ties keep the
    /// larger box (sizes are tried largest first), then the position nearer the centre,
    /// so evenly spread content is cropped from the middle.
    fn beats(&self, other: &Self) -> bool {
        if self.score > other.score * (1.0 + Self::TIE) {
            return true;
        }
        self.score >= other.score * (1.0 - Self::TIE)
            && self.size == other.size
            && self.off_centre < other.off_centre
    }
}

/// Candidate box sizes, largest first, without repeats: `SCALES` of the largest box of
/// aspect `aspect` inside `frame`, none smaller than `min` (which must fit the frame).
/// A smaller box whose short side would round up from under a pixel is left out: it
/// would not have the aspect asked for (on a 9-pixel-wide strip, 10:1 is 9x1, not 5x1).
fn box_sizes(frame: (u32, u32), aspect: (u32, u32), min: (u32, u32)) -> Vec<(u32, u32)> {
    let (fw, fh) = frame;
    let (aw, ah) = aspect;
    // Whether the height is the limiting side: the frame is at least as wide as the aspect.
    let height_limited = u64::from(fw) * u64::from(ah) >= u64::from(fh) * u64::from(aw);
    let mut sizes: Vec<(u32, u32)> = Vec::with_capacity(SCALES.len());
    for scale in SCALES {
        let (size, derived) = if height_limited {
            let bh = ((scale * f64::from(fh)).round() as u32).clamp(min.1.max(1), fh);
            let exact = f64::from(bh) * f64::from(aw) / f64::from(ah);
            ((mul_div_round(bh, aw, ah).clamp(1, fw), bh), exact)
        } else {
            let bw = ((scale * f64::from(fw)).round() as u32).clamp(min.0.max(1), fw);
            let exact = f64::from(bw) * f64::from(ah) / f64::from(aw);
            ((bw, mul_div_round(bw, ah, aw).clamp(1, fh)), exact)
        };
        if !sizes.is_empty() && derived < 1.0 {
            continue;
        }
        if !sizes.contains(&size) {
            sizes.push(size);
        }
    }
    sizes
}

#[cfg(test)]
mod tests;
