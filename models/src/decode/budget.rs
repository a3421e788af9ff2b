//! What decoding an image costs in memory, reckoned from its header before a pixel is
//! allocated: the decoder's output in the colour type it writes (16-bit and alpha
//! included), what the decoder allocates besides, the RGB8 conversion and the copy a
//! quarter turn needs. An image over the budget is refused; one under it holds no more.

use image::metadata::Orientation;
use image::{ColorType, ImageFormat};

use super::scan::Facts;

/// What any decoder holds whatever the image's size: headers, tables, an inflate window.
const DECODER_STATE: u64 = 1 << 20;

/// What the header says about an image.
pub struct Plan<'a> {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// What the decoder writes.
    pub color: ColorType,
    pub orientation: Orientation,
    /// Size of the encoded image (the JPEG decoder works on a copy).
    pub input_bytes: u64,
    pub facts: &'a Facts,
}

/// Bytes held at once, at the costliest moment of a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// The decoder's output.
    pub decoded: u64,
    /// What the decoder allocates besides its output.
    pub scratch: u64,
    /// The most held at once: while decoding, converting to RGB8 or orienting.
    pub peak: u64,
}

impl Plan<'_> {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    pub fn cost(&self) -> Cost {
        let decoded = self.pixels() * u64::from(self.color.bytes_per_pixel());
        let rgb8 = self.pixels() * 3;
        let scratch = self.scratch(decoded);
        let decoding = decoded + scratch;
        // Conversion reuses the decoder's output; only a narrower one (grey) must grow,
        // which may move it.
        let converting = match self.color {
            ColorType::Rgb8 => 0,
            c if c.bytes_per_pixel() < 3 => decoded + rgb8,
            _ => decoded,
        };
        let orienting = if swaps_axes(self.orientation) {
            2 * rgb8
        } else {
            0
        };
        Cost {
            decoded,
            scratch,
            peak: decoding.max(converting).max(orienting),
        }
    }

    /// The decoder's own allocations, per format, as the decoders in Cargo.lock make them
    /// (measured in tests/decode_memory.rs), with room for their tables and windows.
    fn scratch(&self, decoded: u64) -> u64 {
        let (w, h) = (u64::from(self.width), u64::from(self.height));
        DECODER_STATE
            + match self.format {
                // A window of rows at up to 8 bytes a pixel.
                ImageFormat::Png => 8 * (w * 8 + 1),
                ImageFormat::Jpeg => self.input_bytes + self.jpeg_coefficients(),
                // The frame's colour indices; a frame not spanning the screen's width is
                // also expanded aside and copied in (one spanning it is expanded in place).
                ImageFormat::Gif => match self.facts.gif_frame {
                    Some(f) => {
                        let frame = u64::from(f.width) * u64::from(f.height);
                        let aside = !(f.left == 0 && u64::from(f.width) == w);
                        frame + if aside { frame * 4 } else { 0 }
                    }
                    None => w * h * 5,
                },
                // An animation: libwebp's canvas and its disposed copy (RGBA) and the first
                // frame's planes or lossless ARGB; a still image's lossless ARGB, or a lossy
                // one's alpha plane and the ARGB plane a lossless-coded alpha is decoded in
                // (measured: 630 MiB beside a 67 MP lossy+alpha file's RGBA output).
                ImageFormat::WebP if self.facts.webp_animated => w * h * 13,
                ImageFormat::WebP => w * h * 5,
                // Rows are read straight into the output.
                ImageFormat::Bmp => 0,
                // One strip or tile may span the image, decoded aside before it is copied.
                _ => decoded,
            }
    }

    /// A JPEG decoder's coefficients, as i16: the whole image's when every scan must be
    /// read before the first pixel (progressive, multi-scan), else one row of MCUs (for
    /// the coefficients, their upsampled rows and the colour conversion).
    fn jpeg_coefficients(&self) -> u64 {
        let frame = self.facts.jpeg.clone().unwrap_or_default();
        let sampling = if frame.sampling.is_empty() {
            vec![(1, 1); 4] // unread: the most components, no subsampling
        } else {
            frame.sampling
        };
        let h_max = u64::from(sampling.iter().map(|s| s.0).max().unwrap_or(1).max(1));
        let v_max = u64::from(sampling.iter().map(|s| s.1).max().unwrap_or(1).max(1));
        let mcus_x = u64::from(self.width).div_ceil(8 * h_max);
        let mcus_y = u64::from(self.height).div_ceil(8 * v_max);
        sampling
            .iter()
            .map(|&(hs, vs)| {
                let width = mcus_x * u64::from(hs) * 8;
                let rows = if frame.buffered {
                    mcus_y * u64::from(vs) * 8
                } else {
                    3 * v_max * 8
                };
                width * rows * 2
            })
            .sum()
    }
}

/// Whether `orientation` turns the image a quarter, which needs a second buffer; flips
/// and half turns are done in place.
pub fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// `color` in words, for messages.
pub fn describe(color: ColorType) -> &'static str {
    match color {
        ColorType::L8 => "8-bit grey",
        ColorType::La8 => "8-bit grey and alpha",
        ColorType::Rgb8 => "8-bit RGB",
        ColorType::Rgba8 => "8-bit RGBA",
        ColorType::L16 => "16-bit grey",
        ColorType::La16 => "16-bit grey and alpha",
        ColorType::Rgb16 => "16-bit RGB",
        ColorType::Rgba16 => "16-bit RGBA",
        ColorType::Rgb32F => "32-bit float RGB",
        ColorType::Rgba32F => "32-bit float RGBA",
        _ => "multi-channel",
    }
}

/// `bytes` in MiB for messages: whole when it is whole, else to a hundredth.
pub fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan::{GifFrame, JpegFrame};
    use super::*;
    use crate::decode::DEFAULT_MAX_DECODE_BYTES as BUDGET;

    const MIB: u64 = 1 << 20;

    fn plan(
        format: ImageFormat,
        (width, height): (u32, u32),
        color: ColorType,
        facts: &Facts,
    ) -> Plan<'_> {
        Plan {
            format,
            width,
            height,
            color,
            orientation: Orientation::NoTransforms,
            input_bytes: 0,
            facts,
        }
    }

    fn turned(plan: Plan<'_>) -> Plan<'_> {
        Plan {
            orientation: Orientation::Rotate90,
            ..plan
        }
    }

    #[test]
    fn a_16_bit_png_costs_its_16_bit_pixels_once() {
        let facts = Facts::default();
        let deep = plan(ImageFormat::Png, (10_000, 10_000), ColorType::Rgb16, &facts);
        let cost = deep.cost();
        assert_eq!(cost.decoded, 600_000_000);
        assert_eq!(cost.scratch, MIB + 8 * 80_001);
        // Narrowed in place, then turned: the turn's two RGB8 buffers are 600 MB too.
        assert_eq!(cost.peak, cost.decoded + cost.scratch);
        assert_eq!(turned(deep).cost().peak, cost.peak);
        assert!(cost.peak > BUDGET, "refused by default");
    }

    #[test]
    fn an_8_bit_100_megapixel_png_fits_unless_turned() {
        let facts = Facts::default();
        let wide = plan(ImageFormat::Png, (10_000, 10_000), ColorType::Rgb8, &facts);
        assert_eq!(wide.cost().peak, 300_000_000 + MIB + 8 * 80_001);
        assert!(wide.cost().peak < BUDGET);
        assert_eq!(turned(wide).cost().peak, 600_000_000);
    }

    #[test]
    fn grey_widens_and_alpha_narrows() {
        let facts = Facts::default();
        let grey = plan(ImageFormat::Png, (1000, 1000), ColorType::L8, &facts).cost();
        assert_eq!(
            grey.peak,
            1_000_000 + 3_000_000,
            "decoded and widened, if moved"
        );
        let rgba = plan(ImageFormat::Png, (1000, 1000), ColorType::Rgba8, &facts).cost();
        assert_eq!(rgba.peak, rgba.decoded + rgba.scratch, "narrowed in place");
    }

    #[test]
    fn a_48_megapixel_photo_fits_turned_even_progressive() {
        let baseline = Facts {
            jpeg: Some(JpegFrame {
                sampling: vec![(2, 2), (1, 1), (1, 1)],
                buffered: false,
                orientation: None,
            }),
            ..Facts::default()
        };
        let photo = Plan {
            input_bytes: 15 * MIB,
            ..turned(plan(
                ImageFormat::Jpeg,
                (8000, 6000),
                ColorType::Rgb8,
                &baseline,
            ))
        };
        assert_eq!(
            photo.cost().peak,
            2 * 144_000_000,
            "the turn is the costliest"
        );

        let progressive = Facts {
            jpeg: Some(JpegFrame {
                buffered: true,
                ..baseline.jpeg.clone().unwrap()
            }),
            ..Facts::default()
        };
        let photo = Plan {
            facts: &progressive,
            ..photo
        };
        // Coefficients as i16: luma at full size, chroma at a quarter each.
        let coefficients = (8000 * 6000 + 2 * 4000 * 3000) * 2;
        assert_eq!(photo.cost().scratch, MIB + 15 * MIB + coefficients);
        assert_eq!(
            photo.cost().peak,
            144_000_000 + MIB + 15 * MIB + coefficients
        );
        assert!(photo.cost().peak < BUDGET);
    }

    #[test]
    fn an_unread_jpeg_frame_is_costed_at_its_worst() {
        let unread = Facts::default();
        let cost = plan(ImageFormat::Jpeg, (800, 800), ColorType::Rgb8, &unread).cost();
        // Four components at full resolution, a row of MCUs (3 x 8 rows) each.
        assert_eq!(cost.scratch, MIB + 4 * 800 * 24 * 2);
    }

    #[test]
    fn a_gif_frame_beside_the_screen_width_is_decoded_aside() {
        let frame = |left, width| Facts {
            gif_frame: Some(GifFrame {
                left,
                top: 0,
                width,
                height: 100,
            }),
            ..Facts::default()
        };
        let (spanning, aside) = (frame(0, 1000), frame(10, 500));
        let cost = |facts| plan(ImageFormat::Gif, (1000, 1000), ColorType::Rgba8, facts).cost();
        assert_eq!(cost(&spanning).scratch, MIB + 100_000);
        assert_eq!(cost(&aside).scratch, MIB + 50_000 * 5);
        assert_eq!(cost(&Facts::default()).scratch, MIB + 5_000_000);
    }

    #[test]
    fn an_animated_webp_pays_for_its_canvas() {
        let still = Facts::default();
        let animated = Facts {
            webp_animated: true,
            ..Facts::default()
        };
        let cost = |facts| plan(ImageFormat::WebP, (10_000, 10_000), ColorType::Rgb8, facts).cost();
        assert_eq!(cost(&still).peak, 300_000_000 + MIB + 500_000_000);
        assert_eq!(cost(&animated).peak, 300_000_000 + MIB + 1_300_000_000);
    }

    #[test]
    fn only_quarter_turns_swap_axes() {
        use Orientation::*;
        for o in [Rotate90, Rotate270, Rotate90FlipH, Rotate270FlipH] {
            assert!(swaps_axes(o), "{o:?}");
        }
        for o in [NoTransforms, Rotate180, FlipHorizontal, FlipVertical] {
            assert!(!swaps_axes(o), "{o:?}");
        }
    }

    #[test]
    fn messages_round_to_whole_or_hundredths() {
        assert_eq!(mib(512 * MIB), "512 MiB");
        assert_eq!(mib(600_000_000), "572.20 MiB");
    }
}
