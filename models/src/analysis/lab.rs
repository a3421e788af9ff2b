//! sRGB to CIE L*a*b* (D65) and back, and the colour difference used throughout colour
//! analysis.
//!
//! The formulas are the exact ones: the sRGB transfer curve (IEC 61966-2-1), the sRGB
//! primaries' matrix to XYZ, and CIE 1976 L*a*b* against the D65 white point.

use std::sync::LazyLock;

/// D65 reference white in XYZ (Y normalised to 1).
const WHITE: [f32; 3] = [0.950_47, 1.0, 1.088_83];

/// Where CIE's `f` turns from a cube root into a straight line: (6/29)^3.
const EPSILON: f32 = 216.0 / 24_389.0;
/// 6/29: `f`'s value at [`EPSILON`], where `f`'s inverse turns from a cube into a line.
const DELTA: f32 = 6.0 / 29.0;

/// `LINEAR[v]` is the linear-light intensity (0..=1) of the 8-bit sRGB value `v`.
static LINEAR: LazyLock<[f32; 256]> = LazyLock::new(|| {
    let mut table = [0.0; 256];
    for (v, out) in table.iter_mut().enumerate() {
        *out = decode_channel(v as f32 / 255.0);
    }
    table
});

/// A colour in CIE L*a*b* (D65): `l` lightness 0..=100, `a` green (-) to red (+), `b` blue
/// (-) to yellow (+), both roughly -128..=127 for sRGB colours.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lab {
    pub l: f32,
    pub a: f32,
    pub b: f32,
}

impl Lab {
    /// The Lab coordinates of an 8-bit sRGB colour.
    pub fn from_rgb(rgb: [u8; 3]) -> Self {
        let lut = linear_table();
        Self::from_linear([
            lut[usize::from(rgb[0])],
            lut[usize::from(rgb[1])],
            lut[usize::from(rgb[2])],
        ])
    }

    /// The Lab coordinates of a linear-light sRGB colour (each channel 0..=1).
    pub fn from_linear([r, g, b]: [f32; 3]) -> Self {
        let x = 0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b;
        let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
        let z = 0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b;
        let fx = f(x / WHITE[0]);
        let fy = f(y / WHITE[1]);
        let fz = f(z / WHITE[2]);
        Self {
            l: 116.0 * fy - 16.0,
            a: 500.0 * (fx - fy),
            b: 200.0 * (fy - fz),
        }
    }

    /// The nearest 8-bit sRGB colour. Lab colours outside the sRGB gamut are clipped per
    /// channel.
    pub fn to_rgb(self) -> [u8; 3] {
        let fy = (self.l + 16.0) / 116.0;
        let fx = fy + self.a / 500.0;
        let fz = fy - self.b / 200.0;
        let x = WHITE[0] * f_inv(fx);
        let y = WHITE[1] * f_inv(fy);
        let z = WHITE[2] * f_inv(fz);
        let r = 3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z;
        let g = -0.969_266 * x + 1.876_010_8 * y + 0.041_556 * z;
        let b = 0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z;
        [linear_to_srgb(r), linear_to_srgb(g), linear_to_srgb(b)]
    }
}

/// The table of the 256 linear-light intensities, indexed by 8-bit sRGB value: for loops
/// that convert many pixels (look the table up once, outside the loop).
pub fn linear_table() -> &'static [f32; 256] {
    &LINEAR
}

/// Linear-light intensity (0..=1) of an 8-bit sRGB value.
pub fn srgb_to_linear(v: u8) -> f32 {
    linear_table()[usize::from(v)]
}

/// The 8-bit sRGB value of a linear-light intensity; values outside 0..=1 are clipped.
pub fn linear_to_srgb(v: f32) -> u8 {
    let v = v.clamp(0.0, 1.0);
    let encoded = if v <= 0.003_130_8 {
        12.92 * v
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    // In range after the clamp, so the cast neither wraps nor saturates.
    (encoded * 255.0).round() as u8
}

/// Colour difference ΔE between two Lab colours: CIE76, the Euclidean distance.
///
/// CIE76 rather than CIEDE2000: the clustering averages colours, and the mean is what
/// minimises squared Euclidean distance, so k-means is only consistent under this metric;
/// it is also an order of magnitude cheaper. Its known weakness, overstating differences
/// between saturated colours, only makes the merge of near-identical clusters a little
/// more conservative there.
pub fn delta_e(p: Lab, q: Lab) -> f32 {
    delta_e_squared(p, q).sqrt()
}

/// [`delta_e`] squared: orders colours the same way without the square root, for loops
/// that only compare distances.
pub fn delta_e_squared(p: Lab, q: Lab) -> f32 {
    let dl = p.l - q.l;
    let da = p.a - q.a;
    let db = p.b - q.b;
    dl * dl + da * da + db * db
}

fn decode_channel(c: f32) -> f32 {
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn f(t: f32) -> f32 {
    if t > EPSILON {
        t.cbrt()
    } else {
        t / (3.0 * DELTA * DELTA) + 4.0 / 29.0
    }
}

fn f_inv(u: f32) -> f32 {
    if u > DELTA {
        u * u * u
    } else {
        3.0 * DELTA * DELTA * (u - 4.0 / 29.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(lab: Lab, l: f32, a: f32, b: f32) -> bool {
        delta_e(lab, Lab { l, a, b }) < 0.05
    }

    #[test]
    fn reference_values() {
        // The usual reference values for sRGB under D65.
        assert!(close(Lab::from_rgb([255, 255, 255]), 100.0, 0.0, 0.0));
        assert!(close(Lab::from_rgb([0, 0, 0]), 0.0, 0.0, 0.0));
        assert!(close(Lab::from_rgb([255, 0, 0]), 53.2408, 80.0925, 67.2032));
        assert!(close(
            Lab::from_rgb([0, 255, 0]),
            87.7347,
            -86.1827,
            83.1793
        ));
        assert!(close(
            Lab::from_rgb([0, 0, 255]),
            32.2970,
            79.1875,
            -107.8602
        ));
        assert!(close(Lab::from_rgb([128, 128, 128]), 53.5850, 0.0, 0.0));
    }

    #[test]
    fn greys_have_no_chroma() {
        for v in [1u8, 10, 60, 119, 200, 254] {
            let lab = Lab::from_rgb([v; 3]);
            assert!(lab.a.abs() < 0.01 && lab.b.abs() < 0.01, "{v}: {lab:?}");
        }
    }

    #[test]
    fn round_trips_every_channel_value() {
        for v in 0..=255u8 {
            assert_eq!(linear_to_srgb(srgb_to_linear(v)), v);
            for rgb in [[v, 0, 0], [0, v, 0], [0, 0, v], [v, 255 - v, v / 2]] {
                assert_eq!(Lab::from_rgb(rgb).to_rgb(), rgb, "{rgb:?}");
            }
        }
    }

    #[test]
    fn out_of_gamut_clips() {
        let saturated = Lab {
            l: 50.0,
            a: 120.0,
            b: 0.0,
        };
        let [r, g, b] = saturated.to_rgb();
        assert!(r > 200 && g == 0 && b > 100, "{:?}", [r, g, b]);
        let too_bright = Lab {
            l: 150.0,
            a: 0.0,
            b: 0.0,
        };
        assert_eq!(too_bright.to_rgb(), [255, 255, 255]);
    }

    #[test]
    fn delta_e_is_euclidean() {
        let p = Lab {
            l: 50.0,
            a: 10.0,
            b: -5.0,
        };
        let q = Lab {
            l: 53.0,
            a: 14.0,
            b: -5.0,
        };
        assert_eq!(delta_e(p, q), 5.0);
        assert_eq!(delta_e(q, p), 5.0);
        assert_eq!(delta_e(p, p), 0.0);
    }
}
