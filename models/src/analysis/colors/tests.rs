use image::{Rgb, RgbImage};

use super::*;
use crate::analysis::palette::PALETTE;

const RED: Rgb<u8> = Rgb([220, 20, 30]);
const BLUE: Rgb<u8> = Rgb([20, 40, 200]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

use crate::test_support::photo;

/// 200x100, the left 140 columns red, the rest blue.
fn red_blue() -> RgbImage {
    RgbImage::from_fn(200, 100, |x, _| if x < 140 { RED } else { BLUE })
}

/// 200x200 white with an 80x80 red square in the middle.
fn red_square() -> RgbImage {
    RgbImage::from_fn(200, 200, |x, y| {
        let inside = |v: u32| (60..140).contains(&v);
        if inside(x) && inside(y) { RED } else { WHITE }
    })
}

/// A diagonal colour gradient with pseudo-random noise (a fixed 64-bit LCG).
fn noisy_gradient(width: u32, height: u32) -> RgbImage {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut noise = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 56) as i32 - 128) / 4 // -32..=31
    };
    RgbImage::from_fn(width, height, |x, y| {
        let ramp = |v: u32, n: u32| (255 * v / n.max(1)) as i32;
        let base = [
            ramp(x, width),
            ramp(y, height),
            255 - ramp(x + y, width + height),
        ];
        Rgb(base.map(|c| (c + noise()).clamp(0, 255) as u8))
    })
}

fn shares(list: &[DominantColor]) -> f32 {
    list.iter().map(|c| c.share_percent).sum()
}

/// What holds for every full-length analysis: lists sorted by share, shares summing to
/// 100, names and parents from the palette.
fn check_consistent(analysis: &ColorAnalysis) {
    for list in [&analysis.image, &analysis.background, &analysis.foreground] {
        if list.is_empty() {
            continue;
        }
        assert!((shares(list) - 100.0).abs() < 0.01, "{list:?}");
        assert!(list.len() <= MAX_COLORS);
        for pair in list.windows(2) {
            assert!(pair[0].share_percent >= pair[1].share_percent, "{list:?}");
        }
        for c in list {
            assert!(
                PALETTE
                    .iter()
                    .any(|p| p.name == c.name && p.parent == c.parent),
                "{c:?}"
            );
        }
    }
}

fn parents(list: &[DominantColor]) -> Vec<&'static str> {
    list.iter().map(|c| c.parent).collect()
}

#[test]
fn two_colours_seventy_thirty() {
    let analysis = dominant_colors(&red_blue(), 5);
    let image = &analysis.image;
    assert_eq!(image.len(), 2, "{image:?}");
    assert!((image[0].share_percent - 70.0).abs() <= 2.0, "{image:?}");
    assert!((image[1].share_percent - 30.0).abs() <= 2.0, "{image:?}");
    assert_eq!(parents(image), ["red", "blue"]);
    // The means of flat regions are their colours.
    assert_eq!(image[0].rgb, RED.0);
    assert_eq!(image[1].rgb, BLUE.0);
    check_consistent(&analysis);
}

#[test]
fn square_on_white_splits_foreground_from_background() {
    let analysis = dominant_colors(&red_square(), 5);
    let (background, foreground) = (&analysis.background, &analysis.foreground);
    assert_eq!(background[0].name, "white", "{background:?}");
    assert_eq!(background[0].parent, "white");
    assert_eq!(foreground[0].parent, "red", "{foreground:?}");
    // Working pixels that straddle the square's edge blend red and white; the rest of
    // each side is pure.
    assert!(background[0].share_percent > 95.0, "{background:?}");
    assert!(foreground[0].share_percent > 80.0, "{foreground:?}");
    assert_eq!(foreground[0].rgb, RED.0);
    assert!(!parents(background).contains(&"red"), "{background:?}");
    // The square is 80x80 of 200x200.
    let red = &analysis.image[1];
    assert_eq!(red.parent, "red");
    assert!(
        (red.share_percent - 16.0).abs() < 2.0,
        "{:?}",
        analysis.image
    );
    check_consistent(&analysis);
}

#[test]
fn uniform_image_has_no_foreground() {
    let grey = RgbImage::from_pixel(300, 200, Rgb([120, 120, 120]));
    let analysis = dominant_colors(&grey, MAX_COLORS);
    assert_eq!(analysis.image.len(), 1);
    assert_eq!(analysis.image[0].rgb, [120, 120, 120]);
    assert_eq!(analysis.image[0].share_percent, 100.0);
    assert_eq!(analysis.background, analysis.image);
    assert!(analysis.foreground.is_empty());
}

#[test]
fn deterministic() {
    for img in [
        red_square(),
        noisy_gradient(317, 233),
        noisy_gradient(640, 480),
    ] {
        let first = dominant_colors(&img, MAX_COLORS);
        let second = dominant_colors(&img.clone(), MAX_COLORS);
        assert_eq!(first, second);
        check_consistent(&first);
    }
    // The noise spreads colours, so the gradient reports many of them.
    assert!(
        dominant_colors(&noisy_gradient(317, 233), MAX_COLORS)
            .image
            .len()
            >= 5
    );
}

#[test]
fn count_truncates_without_renormalising() {
    let img = noisy_gradient(400, 300);
    let full = dominant_colors(&img, MAX_COLORS);
    let three = dominant_colors(&img, 3);
    assert!(full.image.len() > 3 && full.background.len() > 3);
    assert_eq!(three.image, full.image[..3]);
    assert_eq!(three.background, full.background[..3]);
    assert_eq!(
        three.foreground,
        full.foreground[..full.foreground.len().min(3)]
    );
    assert!(shares(&three.image) < 100.0);

    let one = dominant_colors(&red_square(), 1);
    assert_eq!(one.image.len(), 1);
    assert_eq!(one.background.len(), 1);
    assert_eq!(one.foreground.len(), 1);
    assert_eq!(one.image[0].parent, "white");

    assert_eq!(dominant_colors(&img, 100), full);
    assert_eq!(dominant_colors(&img, 0), ColorAnalysis::default());
}

#[test]
fn degenerate_sizes() {
    for (w, h) in [(0, 0), (0, 10), (10, 0)] {
        assert_eq!(
            dominant_colors(&RgbImage::new(w, h), 5),
            ColorAnalysis::default()
        );
    }
    for (w, h) in [(1, 1), (1, 500), (700, 1), (3, 2)] {
        let img = RgbImage::from_pixel(w, h, Rgb([10, 200, 30]));
        let analysis = dominant_colors(&img, 5);
        assert_eq!(analysis.image.len(), 1, "{w}x{h}");
        assert_eq!(analysis.image[0].rgb, [10, 200, 30]);
        assert!(analysis.foreground.is_empty());
    }
}

#[test]
fn large_input_matches_its_reduction() {
    // A 4000x3000 frame and the same scene at 1/10: the working copies hold the same
    // colours, so the lists agree.
    let scene = |w: u32, h: u32| {
        RgbImage::from_fn(w, h, |x, y| {
            let (u, v) = (x * 8 / w, y * 8 / h);
            if (2..6).contains(&u) && (2..6).contains(&v) {
                RED
            } else {
                BLUE
            }
        })
    };
    let large = dominant_colors(&scene(4000, 3000), 4);
    let small = dominant_colors(&scene(400, 300), 4);
    assert_eq!(parents(&large.image), ["blue", "red"]);
    assert_eq!(parents(&large.foreground), ["red"]);
    assert_eq!(parents(&large.background), ["blue"]);
    for (l, s) in large.image.iter().zip(&small.image) {
        assert_eq!(l.rgb, s.rgb);
        assert!((l.share_percent - s.share_percent).abs() < 0.5);
    }
}

#[test]
fn hex_is_lowercase_rrggbb() {
    let c = DominantColor {
        rgb: [0xab, 0x05, 0xff],
        share_percent: 1.0,
        name: "x",
        parent: "y",
    };
    assert_eq!(c.hex(), "#ab05ff");
    assert_eq!(dominant_colors(&red_blue(), 1).image[0].hex(), "#dc141e");
}

/// A sample photo's full analysis, checked for the invariants and printed on failure.
fn analyse(name: &str) -> ColorAnalysis {
    let analysis = dominant_colors(&photo(name), MAX_COLORS);
    assert!(!analysis.image.is_empty() && !analysis.background.is_empty());
    check_consistent(&analysis);
    analysis
}

#[test]
fn horse_silhouette_on_white() {
    let a = analyse("horse.png");
    assert_eq!(parents(&a.image[..2]), ["white", "black"], "{a:#?}");
    assert_eq!(a.background[0].parent, "white", "{a:#?}");
    assert!(a.background[0].share_percent > 85.0, "{a:#?}");
    assert_eq!(a.foreground[0].parent, "black", "{a:#?}");
    assert!(a.foreground[0].share_percent > 85.0, "{a:#?}");
}

#[test]
fn coffee_cup_on_wooden_table() {
    let a = analyse("coffee.png");
    // The table is brown, the saucer red, the cup white.
    assert_eq!(a.background[0].parent, "brown", "{a:#?}");
    assert_eq!(a.foreground[0].parent, "red", "{a:#?}");
    assert!(
        a.foreground
            .iter()
            .any(|c| c.parent == "white" && c.share_percent > 5.0),
        "{a:#?}"
    );
    assert!(parents(&a.image[..3]).contains(&"brown"), "{a:#?}");
}

#[test]
fn red_motorcycle_in_a_garage() {
    let a = analyse("motorcycle_left.png");
    let red: f32 = a
        .foreground
        .iter()
        .filter(|c| c.parent == "red")
        .map(|c| c.share_percent)
        .sum();
    assert!(red > 50.0, "{a:#?}");
    assert!(!parents(&a.background[..3]).contains(&"red"), "{a:#?}");
    assert_eq!(a.background[0].parent, "grey", "{a:#?}");
}

#[test]
fn rocket_against_a_dusk_sky() {
    let a = analyse("rocket.jpg");
    assert_eq!(a.image[0].parent, "blue", "{a:#?}");
    assert!(a.image[0].share_percent > 30.0, "{a:#?}");
    assert_eq!(parents(&a.background[..2]), ["blue", "blue"], "{a:#?}");
    assert!(!a.foreground.is_empty(), "{a:#?}");
}

#[test]
fn green_and_orange_logo_on_white() {
    let a = analyse("logo.png");
    let top = parents(&a.image[..4]);
    for colour in ["green", "white", "orange"] {
        assert!(top.contains(&colour), "{colour}: {a:#?}");
    }
    assert_eq!(a.foreground[0].parent, "orange", "{a:#?}");
}
