//! Decoded samples to upright RGB8 in the decoder's own buffer: a 16-bit, alpha or float
//! image narrows in place, front to back; a grey one widens in place, back to front. Only
//! a quarter turn needs a second full-size buffer. Alpha is composited onto white (how a
//! viewer shows a transparent image on a page); conversions round as the `image` crate's.

use image::metadata::Orientation;
use image::{ColorType, DynamicImage, RgbImage};
use tagfleet_contracts::{ErrorKind, ImageError};

/// `buf`, holding `width`x`height` pixels of `color` as the decoder wrote them (16-bit
/// and float samples in native byte order), as RGB8.
pub fn into_rgb8(
    mut buf: Vec<u8>,
    width: u32,
    height: u32,
    color: ColorType,
) -> Result<RgbImage, ImageError> {
    let pixels = width as usize * height as usize;
    let bpp = usize::from(color.bytes_per_pixel());
    assert_eq!(
        buf.len(),
        pixels * bpp,
        "decoder output of the advertised size"
    );
    match color {
        ColorType::Rgb8 => {}
        ColorType::Rgba8 => narrow(&mut buf, pixels, bpp, |p| {
            over_white([p[0], p[1], p[2]], p[3])
        }),
        ColorType::L8 => widen(&mut buf, pixels, bpp, |p| [p[0]; 3]),
        ColorType::La8 => widen(&mut buf, pixels, bpp, |p| over_white([p[0]; 3], p[1])),
        ColorType::L16 => widen(&mut buf, pixels, bpp, |p| [u16_at(p, 0); 3]),
        ColorType::La16 => narrow(&mut buf, pixels, bpp, |p| {
            over_white([u16_at(p, 0); 3], u16_at(p, 1))
        }),
        ColorType::Rgb16 => narrow(&mut buf, pixels, bpp, |p| {
            [u16_at(p, 0), u16_at(p, 1), u16_at(p, 2)]
        }),
        ColorType::Rgba16 => narrow(&mut buf, pixels, bpp, |p| {
            over_white([u16_at(p, 0), u16_at(p, 1), u16_at(p, 2)], u16_at(p, 3))
        }),
        ColorType::Rgb32F => narrow(&mut buf, pixels, bpp, |p| {
            [f32_at(p, 0), f32_at(p, 1), f32_at(p, 2)]
        }),
        ColorType::Rgba32F => narrow(&mut buf, pixels, bpp, |p| {
            over_white([f32_at(p, 0), f32_at(p, 1), f32_at(p, 2)], f32_at(p, 3))
        }),
        other => {
            return Err(ImageError::new(
                ErrorKind::Unsupported,
                format!("colour type {other:?} is not supported"),
            ));
        }
    }
    Ok(RgbImage::from_raw(width, height, buf).expect("three bytes a pixel"))
}

/// Applies the EXIF `orientation`: flips and half turns in place, quarter turns into a
/// new buffer (the old one is freed as soon as the new one is filled).
pub fn orient(image: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

/// Pixels of `bpp` >= 3 bytes to 3, front to back: pixel i is read whole before its
/// output (at 3i, never past its own input) is written, and no later pixel is touched.
fn narrow(buf: &mut Vec<u8>, pixels: usize, bpp: usize, rgb: impl Fn(&[u8]) -> [u8; 3]) {
    debug_assert!(bpp >= 3);
    let mut px = [0u8; 16];
    for i in 0..pixels {
        px[..bpp].copy_from_slice(&buf[i * bpp..(i + 1) * bpp]);
        buf[i * 3..i * 3 + 3].copy_from_slice(&rgb(&px[..bpp]));
    }
    buf.truncate(pixels * 3);
    buf.shrink_to_fit();
}

/// Pixels of `bpp` < 3 bytes to 3, back to front in the grown buffer: pixel i's output
/// (at 3i) starts past the input of every earlier pixel.
fn widen(buf: &mut Vec<u8>, pixels: usize, bpp: usize, rgb: impl Fn(&[u8]) -> [u8; 3]) {
    debug_assert!(bpp < 3);
    // Exactly: a plain resize would round the capacity up to twice the decoded size.
    buf.reserve_exact(pixels * 3 - buf.len());
    buf.resize(pixels * 3, 0);
    let mut px = [0u8; 2];
    for i in (0..pixels).rev() {
        px[..bpp].copy_from_slice(&buf[i * bpp..(i + 1) * bpp]);
        buf[i * 3..i * 3 + 3].copy_from_slice(&rgb(&px[..bpp]));
    }
}

/// Colour `c` with alpha `a` over white: c*a + 255*(1-a), rounded, in integers.
fn over_white(c: [u8; 3], a: u8) -> [u8; 3] {
    let a = u32::from(a);
    c.map(|c| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8)
}

/// The 16-bit sample `i` of `p`, to 8 bits: round(v * 255 / 65535).
fn u16_at(p: &[u8], i: usize) -> u8 {
    let v = u32::from(u16::from_ne_bytes([p[2 * i], p[2 * i + 1]]));
    ((v + 128) / 257) as u8
}

/// The float sample `i` of `p`, clamped to 0..=1, to 8 bits (NaN as white).
fn f32_at(p: &[u8], i: usize) -> u8 {
    let v = f32::from_ne_bytes(p[4 * i..4 * i + 4].try_into().unwrap());
    let v = if v < 1.0 { v.max(0.0) } else { 1.0 };
    (v * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    use super::*;

    /// What the image crate makes of `image`, alpha composited onto white.
    fn reference(image: &DynamicImage) -> RgbImage {
        if !image.color().has_alpha() {
            return image.to_rgb8();
        }
        let rgba = image.to_rgba8();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let p = rgba.get_pixel(x, y).0;
            Rgb(over_white([p[0], p[1], p[2]], p[3]))
        })
    }

    #[test]
    fn every_colour_type_converts_as_the_image_crate_does() {
        let (w, h) = (37, 11); // odd sizes: no pixel lines up with a word by luck
        let v8 = |x: u32, y: u32, k: u32| ((x * 7 + y * 13 + k * 50) % 256) as u8;
        let v16 = |x: u32, y: u32, k: u32| ((x * 1777 + y * 3001 + k * 9000) % 65536) as u16;
        // Out of range and NaN floats included: clamped, NaN as white.
        let vf = |x: u32, y: u32, k: u32| match (x + y + k) % 9 {
            0 => -0.5,
            1 => 1.5,
            2 => f32::NAN,
            n => n as f32 / 9.0,
        };
        let images = [
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([v8(x, y, 0)]))),
            DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
                LumaA([v8(x, y, 0), v8(x, y, 1)])
            })),
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
                Rgb([v8(x, y, 0), v8(x, y, 1), v8(x, y, 2)])
            })),
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([v8(x, y, 0), v8(x, y, 1), v8(x, y, 2), v8(x, y, 3)])
            })),
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([v16(x, y, 0)]))),
            DynamicImage::ImageLumaA16(ImageBuffer::from_fn(w, h, |x, y| {
                LumaA([v16(x, y, 0), v16(x, y, 1)])
            })),
            DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| {
                Rgb([v16(x, y, 0), v16(x, y, 1), v16(x, y, 2)])
            })),
            DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([v16(x, y, 0), v16(x, y, 1), v16(x, y, 2), v16(x, y, 3)])
            })),
            DynamicImage::ImageRgb32F(ImageBuffer::from_fn(w, h, |x, y| {
                Rgb([vf(x, y, 0), vf(x, y, 1), vf(x, y, 2)])
            })),
            DynamicImage::ImageRgba32F(ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([vf(x, y, 0), vf(x, y, 1), vf(x, y, 2), vf(x, y, 3)])
            })),
        ];
        for image in images {
            // As a decoder writes them: samples in native byte order.
            let buf = image.as_bytes().to_vec();
            let got = into_rgb8(buf, w, h, image.color()).unwrap();
            assert_eq!(got, reference(&image), "{:?}", image.color());
        }
    }

    #[test]
    fn every_orientation_is_the_image_crates() {
        let image = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8, y as u8, (x * y) as u8]));
        for exif in 1..=8 {
            let orientation = Orientation::from_exif(exif).unwrap();
            let mut want = DynamicImage::ImageRgb8(image.clone());
            want.apply_orientation(orientation);
            assert_eq!(
                orient(image.clone(), orientation),
                want.into_rgb8(),
                "{orientation:?}"
            );
        }
    }
}
