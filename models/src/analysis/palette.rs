//! The named colours that colour analysis reports: a few dozen everyday names, each under
//! one of eleven basic colour names.

use std::sync::LazyLock;

use crate::analysis::lab::{self, Lab};

/// The basic colour names every [`NamedColor::parent`] is one of (Berlin and Kay's
/// eleven basic colour terms).
pub const BASIC_COLORS: [&str; 11] = [
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "grey", "white",
];

/// A colour of the palette: its everyday name, its basic colour name and a representative
/// sRGB value.
#[derive(Debug, PartialEq, Eq)]
pub struct NamedColor {
    pub name: &'static str,
    /// One of [`BASIC_COLORS`].
    pub parent: &'static str,
    pub rgb: [u8; 3],
}

const fn named(name: &'static str, parent: &'static str, rgb: [u8; 3]) -> NamedColor {
    NamedColor { name, parent, rgb }
}

/// The palette. Teal and cyan count as blue: the service reports a basic
/// colour per name, and these sit nearer blue than green for most viewers.
pub static PALETTE: [NamedColor; 45] = [
    named("white", "white", [255, 255, 255]),
    named("ivory", "white", [245, 240, 225]),
    named("light grey", "grey", [200, 200, 200]),
    named("grey", "grey", [128, 128, 128]),
    named("slate grey", "grey", [112, 128, 144]),
    named("dark grey", "grey", [75, 75, 75]),
    named("black", "black", [0, 0, 0]),
    named("red", "red", [255, 0, 0]),
    named("crimson", "red", [220, 20, 60]),
    named("brick red", "red", [178, 34, 34]),
    named("dark red", "red", [139, 0, 0]),
    named("orange", "orange", [255, 128, 0]),
    named("burnt orange", "orange", [204, 85, 0]),
    named("amber", "orange", [230, 145, 50]),
    named("coral", "orange", [255, 127, 80]),
    named("apricot", "orange", [255, 170, 110]),
    named("peach", "orange", [255, 200, 160]),
    named("yellow", "yellow", [255, 255, 0]),
    named("gold", "yellow", [255, 200, 0]),
    named("green", "green", [0, 200, 0]),
    named("light green", "green", [144, 238, 144]),
    named("yellow green", "green", [154, 205, 50]),
    named("olive", "green", [128, 128, 0]),
    named("dark green", "green", [0, 100, 0]),
    named("teal", "blue", [0, 128, 128]),
    named("cyan", "blue", [0, 255, 255]),
    named("sky blue", "blue", [135, 206, 235]),
    named("steel blue", "blue", [70, 130, 180]),
    named("royal blue", "blue", [65, 105, 225]),
    named("blue", "blue", [0, 0, 255]),
    named("denim", "blue", [70, 95, 140]),
    named("navy", "blue", [0, 0, 128]),
    named("midnight blue", "blue", [25, 35, 65]),
    named("purple", "purple", [128, 0, 128]),
    named("magenta", "purple", [255, 0, 255]),
    named("lavender", "purple", [200, 180, 230]),
    named("pink", "pink", [255, 192, 203]),
    named("hot pink", "pink", [255, 105, 180]),
    named("salmon", "pink", [250, 128, 114]),
    named("beige", "brown", [235, 220, 190]),
    named("tan", "brown", [210, 180, 140]),
    named("caramel", "brown", [190, 130, 80]),
    named("brown", "brown", [139, 69, 19]),
    named("taupe", "brown", [130, 115, 100]),
    named("dark brown", "brown", [80, 50, 30]),
];

/// The palette's colours in Lab, in palette order.
static PALETTE_LAB: LazyLock<Vec<Lab>> =
    LazyLock::new(|| PALETTE.iter().map(|c| Lab::from_rgb(c.rgb)).collect());

/// The palette colour nearest to `rgb` in Lab (ΔE, see [`lab::delta_e`]). Ties go to the
/// colour listed first.
pub fn closest(rgb: [u8; 3]) -> &'static NamedColor {
    let target = Lab::from_rgb(rgb);
    let mut best = 0;
    let mut best_distance = f32::INFINITY;
    for (i, &candidate) in PALETTE_LAB.iter().enumerate() {
        let distance = lab::delta_e_squared(target, candidate);
        if distance < best_distance {
            best = i;
            best_distance = distance;
        }
    }
    &PALETTE[best]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rgb: [u8; 3]) -> (&'static str, &'static str) {
        let c = closest(rgb);
        (c.name, c.parent)
    }

    #[test]
    fn primaries_and_neutrals() {
        assert_eq!(names([255, 0, 0]), ("red", "red"));
        assert_eq!(names([0, 255, 0]), ("green", "green"));
        assert_eq!(names([0, 0, 255]), ("blue", "blue"));
        assert_eq!(names([255, 255, 0]), ("yellow", "yellow"));
        assert_eq!(names([255, 255, 255]), ("white", "white"));
        assert_eq!(names([0, 0, 0]), ("black", "black"));
        assert_eq!(names([128, 128, 128]), ("grey", "grey"));
    }

    #[test]
    fn everyday_colours_land_under_their_basic_name() {
        assert_eq!(closest([10, 20, 110]).parent, "blue"); // navy-ish
        assert_eq!(closest([200, 30, 50]).parent, "red"); // crimson-ish
        assert_eq!(closest([110, 60, 30]).parent, "brown"); // wood
        assert_eq!(closest([225, 210, 180]).parent, "brown"); // sand, beige
        assert_eq!(closest([120, 125, 20]).parent, "green"); // olive
        assert_eq!(closest([250, 250, 245]).parent, "white"); // paper
        assert_eq!(closest([20, 20, 22]).parent, "black");
    }

    #[test]
    fn every_entry_maps_to_itself() {
        for c in &PALETTE {
            assert_eq!(closest(c.rgb).name, c.name);
        }
    }

    #[test]
    fn names_are_unique_and_parents_basic() {
        for (i, c) in PALETTE.iter().enumerate() {
            assert!(BASIC_COLORS.contains(&c.parent), "{}: {}", c.name, c.parent);
            assert!(
                PALETTE[..i]
                    .iter()
                    .all(|d| d.name != c.name && d.rgb != c.rgb),
                "{} listed twice",
                c.name
            );
        }
        for basic in BASIC_COLORS {
            assert!(PALETTE.iter().any(|c| c.parent == basic), "{basic} unused");
        }
    }
}
