//! From bytes to RGB8 pixels, refusing what is too large before decoding it.
//!
//! The format is sniffed from the bytes, never from a file name. The header is read
//! first: an image over the byte or pixel limit is refused without allocating its pixels.
//! EXIF orientation is applied; grey, alpha, CMYK and 16-bit images end as RGB8, alpha
//! flattened onto white (how a viewer shows a transparent image on a page).

use std::io::Cursor;

use image::{
    DynamicImage, ImageDecoder, ImageError as ImgError, ImageFormat, ImageReader, Limits, RgbImage,
};
use tagfleet_contracts::{ErrorKind, ImageError};

/// Default refusal thresholds.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 50 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// What an image may cost before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_bytes: u64,
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

/// A decoded, upright RGB8 image.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub pixels: RgbImage,
}

impl Decoded {
    pub fn width(&self) -> u32 {
        self.pixels.width()
    }
    pub fn height(&self) -> u32 {
        self.pixels.height()
    }
}

/// Decodes `bytes`. Every failure is an [`ImageError`] with its kind; messages never
/// contain anything of the image's name or metadata.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Decoded, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::new(
            ErrorKind::Decode,
            "image is empty (0 bytes)",
        ));
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::new(
            ErrorKind::TooLarge,
            format!(
                "image is {} bytes, the limit is {}",
                bytes.len(),
                limits.max_bytes
            ),
        ));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        ImageError::new(
            ErrorKind::Unsupported,
            "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF)",
        )
    })?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing.
        return Err(ImageError::new(
            ErrorKind::Decode,
            "JPEG data is cut short: no end-of-image marker after the last scan",
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits(limits));
    let mut decoder = reader.into_decoder().map_err(classify)?;

    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::new(
            ErrorKind::TooLarge,
            format!(
                "image is {width}x{height} ({pixels} pixels), the limit is {}",
                limits.max_pixels
            ),
        ));
    }
    // A broken EXIF block does not make the pixels unusable: keep them upright-as-stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    image.apply_orientation(orientation);
    Ok(Decoded {
        pixels: to_rgb8(image),
    })
}

/// Whether an end-of-image marker (FF D9) follows the last start-of-scan (FF DA). Inside
/// entropy-coded data a 0xFF byte is always stuffed or a restart marker, so neither pair
/// can occur by accident; bytes after the EOI (some cameras append data) are allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

fn decoder_limits(limits: DecodeLimits) -> Limits {
    let mut l = Limits::default();
    // Four bytes a pixel covers RGBA8; 16-bit images are caught by the pixel check.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(64 * 1024 * 1024));
    l
}

fn classify(err: ImgError) -> ImageError {
    match err {
        ImgError::Limits(e) => ImageError::new(ErrorKind::TooLarge, format!("decoder limit: {e}")),
        ImgError::Unsupported(e) => ImageError::new(ErrorKind::Unsupported, e.to_string()),
        ImgError::Decoding(e) => ImageError::new(ErrorKind::Decode, e.to_string()),
        ImgError::IoError(e) => ImageError::new(
            ErrorKind::Decode,
            format!("image data is cut short or unreadable: {e}"),
        ),
        other => ImageError::new(ErrorKind::Decode, other.to_string()),
    }
}

/// Any colour type to RGB8. Alpha is composited onto white.
fn to_rgb8(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            // c*a + 255*(1-a), rounded, in integers.
            let v = u32::from(src[c]) * a + 255 * (255 - a);
            dst[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        })
    }

    #[test]
    fn formats_decode_to_rgb8() {
        let img = DynamicImage::ImageRgb8(gradient(40, 30));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let bytes = encode(&img, format);
            let decoded = decode(&bytes, DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((decoded.width(), decoded.height()), (40, 30), "{format:?}");
        }
    }

    #[test]
    fn transparent_pixels_become_white_and_opaque_ones_keep_colour() {
        let mut rgba = RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, Rgba([10, 20, 30, 0]));
        rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
        let bytes = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
        assert_eq!(decoded.pixels.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(decoded.pixels.get_pixel(1, 0).0, [10, 20, 30]);
    }

    #[test]
    fn grey_and_16_bit_become_rgb8() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 3, image::Luma([77])));
        let decoded = decode(&encode(&grey, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(decoded.pixels.get_pixel(1, 1).0, [77, 77, 77]);

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            3,
            3,
            image::Rgb([65535u16, 0, 32896]),
        ));
        let decoded = decode(&encode(&deep, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(decoded.pixels.get_pixel(0, 0).0, [255, 0, 128]);
    }

    /// Inserts an EXIF block with an orientation tag right after a JPEG's SOI marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec(); // little endian, IFD at 8, one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let jpeg = encode(
            &DynamicImage::ImageRgb8(gradient(40, 30)),
            ImageFormat::Jpeg,
        );
        let rotated = decode(&with_exif_orientation(&jpeg, 6), DecodeLimits::default()).unwrap();
        assert_eq!((rotated.width(), rotated.height()), (30, 40));
        let upright = decode(&with_exif_orientation(&jpeg, 1), DecodeLimits::default()).unwrap();
        assert_eq!((upright.width(), upright.height()), (40, 30));
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(gradient(100, 100)),
            ImageFormat::Png,
        );
        let limits = DecodeLimits {
            max_pixels: 9_999,
            ..DecodeLimits::default()
        };
        let err = decode(&bytes, limits).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge, "{err}");
        assert!(err.message.contains("100x100"), "{err}");
    }

    #[test]
    fn byte_limit_and_garbage_have_their_kinds() {
        let bytes = encode(&DynamicImage::ImageRgb8(gradient(10, 10)), ImageFormat::Png);
        let limits = DecodeLimits {
            max_bytes: 10,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decode(&bytes, limits).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        assert_eq!(
            decode(b"hello, not an image", DecodeLimits::default())
                .unwrap_err()
                .kind,
            ErrorKind::Unsupported
        );
        assert_eq!(
            decode(b"", DecodeLimits::default()).unwrap_err().kind,
            ErrorKind::Decode
        );
        let truncated = &bytes[..bytes.len() / 2];
        assert_eq!(
            decode(truncated, DecodeLimits::default()).unwrap_err().kind,
            ErrorKind::Decode
        );
    }
}
