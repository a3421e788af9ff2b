//! JPEG through libjpeg-turbo, scaled in the IDCT.
//!
//! A model looks at a 224-pixel crop; a 12-megapixel photo holds sixty times the pixels
//! that crop needs. libjpeg-turbo can run its inverse DCT at 1/2, 1/4 or 1/8 scale, which
//! skips most of the decoder's arithmetic and memory traffic, so the decode is asked for
//! the smallest of those scales whose result the caller still accepts. The full-size
//! pixels are never made.
//!
//! CMYK and YCCK files (which libjpeg-turbo cannot turn into RGB) stay with the `image`
//! crate's decoder; everything else, greyscale, progressive, arithmetic-coded and
//! restart-marker files included, comes out here as RGB8.

use std::cell::RefCell;

use image::RgbImage;
use tagfleet_contracts::{ErrorKind, ImageError};
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

use super::scan::MAX_JPEG_SCANS;

/// Reductions tried, the largest first.
const SCALES: [ScalingFactor; 3] = [
    ScalingFactor::ONE_EIGHTH,
    ScalingFactor::ONE_QUARTER,
    ScalingFactor::ONE_HALF,
];

/// What a JPEG's header says.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub grey: bool,
    /// Lossless JPEGs cannot be scaled in the IDCT: they have none.
    lossless: bool,
}

/// The header of `bytes`, or `None` when libjpeg-turbo cannot give RGB for it (CMYK,
/// YCCK), which another decoder must take.
pub fn header(bytes: &[u8]) -> Result<Option<Header>, ImageError> {
    with_decompressor(|d| {
        let h = d.read_header(bytes).map_err(error)?;
        if matches!(h.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
            return Ok(None);
        }
        let side = |v: usize| {
            u32::try_from(v).map_err(|_| ImageError::new(ErrorKind::TooLarge, "JPEG side too long"))
        };
        Ok(Some(Header {
            width: side(h.width)?,
            height: side(h.height)?,
            grey: h.colorspace == Colorspace::Gray,
            lossless: h.is_lossless,
        }))
    })
}

/// The scale to decode `header`'s image at: the smallest whose stored-orientation size,
/// passed through `upright` (which swaps the sides of a quarter-turned image), `fits`.
pub fn scale_for(
    header: &Header,
    upright: impl Fn(u32, u32) -> (u32, u32),
    fits: &dyn Fn(u32, u32) -> bool,
) -> ScalingFactor {
    if header.lossless {
        return ScalingFactor::ONE;
    }
    SCALES
        .into_iter()
        .find(|s| {
            let (w, h) = scaled(header, *s);
            let (w, h) = upright(w, h);
            fits(w, h)
        })
        .unwrap_or(ScalingFactor::ONE)
}

/// `header`'s size at `scale`, as libjpeg-turbo rounds it (up).
pub fn scaled(header: &Header, scale: ScalingFactor) -> (u32, u32) {
    let side = |v: u32| scale.scale(v as usize) as u32;
    (side(header.width), side(header.height))
}

/// Decodes `bytes` at `scale` into RGB8, in stored orientation.
pub fn decode(bytes: &[u8], header: &Header, scale: ScalingFactor) -> Result<RgbImage, ImageError> {
    let (width, height) = scaled(header, scale);
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    with_decompressor(|d| {
        d.set_scaling_factor(scale).map_err(error)?;
        let image = Image {
            pixels: pixels.as_mut_slice(),
            width: width as usize,
            pitch: width as usize * 3,
            height: height as usize,
            format: PixelFormat::RGB,
        };
        d.decompress(bytes, image).map_err(error)
    })?;
    Ok(RgbImage::from_raw(width, height, pixels).expect("three bytes a pixel"))
}

thread_local! {
    /// One decompressor a thread, reused: it holds libjpeg's state and tables.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut Decompressor) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => d,
            None => {
                let mut d = Decompressor::new().map_err(error)?;
                // A second line behind the scan count checked before decoding.
                d.set_scan_limit(MAX_JPEG_SCANS as u32).map_err(error)?;
                slot.insert(d)
            }
        };
        f(d)
    })
}

/// libjpeg-turbo's messages say what is wrong with the data ("Premature end of JPEG
/// file", "Corrupt JPEG data: ..."), never anything of the image's name.
fn error(e: turbojpeg::Error) -> ImageError {
    match e {
        turbojpeg::Error::TurboJpegError(message) => ImageError::new(
            ErrorKind::Decode,
            format!("JPEG data is broken: {}", message.trim()),
        ),
        other => ImageError::new(ErrorKind::Decode, format!("JPEG data is broken: {other}")),
    }
}
