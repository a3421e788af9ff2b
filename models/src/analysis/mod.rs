//! Analyses that read the decoded pixels rather than the model's outputs: dominant colors
//! and smart crops. They run on the decode threads, right after decoding, on the image as
//! decoded (a JPEG at a reduced DCT scale is already the small copy they want), and report
//! in the original image's upright coordinates.

pub mod colors;
pub mod crops;
pub mod lab;
pub mod palette;
pub mod saliency;

use tagfleet_contracts::analyses::{Color, Colors, Crop, Region};
use tagfleet_contracts::schema::{Analysis, TaskOptions};

use crate::Decoded;

/// What the pixel analyses a task asks for found in one image.
#[derive(Debug, Default)]
pub struct Described {
    pub colors: Option<Colors>,
    pub crops: Option<Vec<Crop>>,
}

/// Runs the pixel analyses `analyses` asks for on `image`; `lap` is called with each
/// analysis's name as it finishes, to time it.
pub fn describe(
    image: &Decoded,
    analyses: &[Analysis],
    options: &TaskOptions,
    mut lap: impl FnMut(&'static str),
) -> Described {
    let mut described = Described::default();
    if analyses.contains(&Analysis::Colors) {
        let found = colors::dominant_colors(&image.pixels, options.colors);
        described.colors = Some(Colors {
            image: found.image.iter().map(wire_color).collect(),
            background: found.background.iter().map(wire_color).collect(),
            foreground: found.foreground.iter().map(wire_color).collect(),
        });
        lap("colors");
    }
    if analyses.contains(&Analysis::Crops) {
        let boxes = crops::suggest_crops(&image.pixels, image.full_size, &options.crops);
        described.crops = Some(
            options
                .crops
                .iter()
                .zip(boxes)
                .map(|(request, found)| {
                    let (region, error) = match found {
                        Ok(b) => (
                            Some(Region {
                                x: b.x,
                                y: b.y,
                                width: b.width,
                                height: b.height,
                            }),
                            None,
                        ),
                        Err(why) => (None, Some(why)),
                    };
                    Crop {
                        request: request.to_string(),
                        region,
                        error,
                    }
                })
                .collect(),
        );
        lap("crops");
    }
    described
}

fn wire_color(c: &colors::DominantColor) -> Color {
    Color {
        hex: c.hex(),
        rgb: c.rgb,
        // One decimal: more would claim a precision the downscaled copy does not have.
        share: (f64::from(c.share_percent) * 10.0).round() / 10.0,
        name: c.name.to_owned(),
        parent: c.parent.to_owned(),
    }
}
