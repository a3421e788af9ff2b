//! From bytes to RGB8 pixels, refusing before decoding what would cost too much.
//!
//! The format is sniffed from the bytes, never from a file name. The container and the
//! header are read first: an image over the byte, pixel or decode-memory limit, or with
//! outsized metadata, is refused without allocating its pixels. EXIF orientation is
//! applied; grey, alpha, CMYK, 16-bit and float images end as RGB8, alpha flattened onto
//! white, converted in the decoder's own buffer.
//!
//! JPEGs are decoded by libjpeg-turbo ([`jpeg`]), and [`decode_to_fit`] lets it scale
//! them down by 2, 4 or 8 in the IDCT when the caller needs no more pixels than that.
//! WebPs are decoded by libwebp ([`webp`]), an animation's first frame on its canvas;
//! other formats by the `image` crate.

mod budget;
mod jpeg;
mod rgb8;
mod scan;
mod webp;

use std::io::Cursor;

use image::metadata::Orientation;
use image::{
    ColorType, ImageDecoder, ImageError as ImgError, ImageFormat, ImageReader, Limits, RgbImage,
};
use tagfleet_contracts::{ErrorKind, ImageError};

pub use scan::{MAX_JPEG_SCANS, MAX_METADATA_BYTES};

/// Default refusal thresholds.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 50 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 100_000_000;
/// Room for a 100-megapixel RGB8 image (300 MB), or a 48-megapixel photo with the copy
/// its quarter turn needs; a 100-megapixel 16-bit one (600 MB) is refused.
pub const DEFAULT_MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Longest side the decoders accept (JPEG's own maximum): a longer one is a strip built
/// to probe limits, not a photo.
const MAX_SIDE: u32 = 65_535;

/// What an image may cost before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Size of the encoded image.
    pub max_bytes: u64,
    /// Width times height, from the header.
    pub max_pixels: u64,
    /// Memory the decode of one image may hold at its peak, reckoned from the header.
    pub max_decode_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_decode_bytes: DEFAULT_MAX_DECODE_BYTES,
        }
    }
}

/// A decoded, upright RGB8 image, perhaps at a reduced scale.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub pixels: RgbImage,
    /// The image's upright size as stored: what a result reports, whatever the scale the
    /// pixels were decoded at.
    pub full_size: (u32, u32),
}

impl Decoded {
    /// Pixels decoded at the image's full size.
    pub fn full(pixels: RgbImage) -> Self {
        let full_size = pixels.dimensions();
        Self { pixels, full_size }
    }
    /// Width of the pixels held.
    pub fn width(&self) -> u32 {
        self.pixels.width()
    }
    /// Height of the pixels held.
    pub fn height(&self) -> u32 {
        self.pixels.height()
    }
}

/// Decodes `bytes` at full size. Every failure is an [`ImageError`] with its kind;
/// messages never contain anything of the image's name or metadata.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Decoded, ImageError> {
    decode_with(bytes, limits, None)
}

/// Decodes `bytes` at the smallest scale (1/8, 1/4, 1/2 of each side, or full) whose
/// upright width and height still `fit`; only JPEGs are decoded scaled, other formats
/// come at full size. Fails as [`decode`] does.
pub fn decode_to_fit(
    bytes: &[u8],
    limits: DecodeLimits,
    fits: &dyn Fn(u32, u32) -> bool,
) -> Result<Decoded, ImageError> {
    decode_with(bytes, limits, Some(fits))
}

fn decode_with(
    bytes: &[u8],
    limits: DecodeLimits,
    fits: Option<&dyn Fn(u32, u32) -> bool>,
) -> Result<Decoded, ImageError> {
    let Checked {
        reader,
        width,
        height,
        color,
        orientation,
        ..
    } = check(bytes, limits)?;
    let swap = budget::swaps_axes(orientation);
    let upright = move |w: u32, h: u32| if swap { (h, w) } else { (w, h) };
    let stored = match reader {
        Reader::Turbo(header) => {
            let scale = match fits {
                Some(fits) => jpeg::scale_for(&header, upright, fits),
                None => turbojpeg::ScalingFactor::ONE,
            };
            jpeg::decode(bytes, &header, scale)?
        }
        Reader::Webp { animated } => {
            let bpp = usize::from(color.bytes_per_pixel());
            let mut buf = vec![0u8; width as usize * height as usize * bpp];
            if animated {
                webp::decode_first_frame(bytes, width, height, &mut buf)?;
            } else {
                webp::decode_into(bytes, width, height, color.has_alpha(), &mut buf)?;
            }
            rgb8::into_rgb8(buf, width, height, color)?
        }
        Reader::Image(decoder) => {
            // Within the budget: the decoder writes into a buffer converted in place.
            let mut buf = vec![0u8; decoder.total_bytes() as usize];
            decoder.read_image(&mut buf).map_err(classify)?;
            rgb8::into_rgb8(buf, width, height, color)?
        }
    };
    Ok(Decoded {
        pixels: rgb8::orient(stored, orientation),
        full_size: upright(width, height),
    })
}

/// The bytes decoding `bytes` would hold at its peak, read from the container and the
/// header only; fails as [`decode`] would fail before decoding.
pub fn decode_cost(bytes: &[u8], limits: DecodeLimits) -> Result<u64, ImageError> {
    check(bytes, limits).map(|c| c.peak)
}

/// Who decodes an image that passed every check.
enum Reader<D> {
    /// libjpeg-turbo, able to scale.
    Turbo(jpeg::Header),
    /// libwebp: a still WebP in the colour type the `image` crate's header reader
    /// reported (RGB8 or RGBA8), or an animation's first frame on its canvas (RGBA8).
    Webp { animated: bool },
    /// The `image` crate's decoder for the format.
    Image(D),
}

/// A decoder whose image passed every check, and what its header says.
struct Checked<D> {
    reader: Reader<D>,
    width: u32,
    height: u32,
    color: ColorType,
    orientation: Orientation,
    peak: u64,
}

/// Every refusal that needs no pixels, cheapest first: size, format, container and
/// metadata, dimensions, then the memory the decode would hold.
fn check(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<Checked<impl ImageDecoder + '_>, ImageError> {
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
    // Before the decoder: it would inflate a PNG's ICC profile while reading the header.
    let facts = scan::scan(format, bytes)?;
    let turbo = match format {
        ImageFormat::Jpeg => jpeg::header(bytes)?,
        _ => None,
    };
    let (reader, width, height, color, orientation) = match turbo {
        Some(header) => {
            let orientation = facts
                .jpeg
                .as_ref()
                .and_then(|f| f.orientation)
                .unwrap_or(Orientation::NoTransforms);
            let color = if header.grey {
                ColorType::L8
            } else {
                ColorType::Rgb8
            };
            let (w, h) = (header.width, header.height);
            (Reader::Turbo(header), w, h, color, orientation)
        }
        None => {
            let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
            reader.limits(decoder_limits(limits));
            let mut decoder = reader.into_decoder().map_err(classify)?;
            let (w, h) = decoder.dimensions();
            // A broken EXIF block does not make the pixels unusable: keep them
            // upright-as-stored.
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            let color = decoder.color_type();
            // WebPs go to libwebp, with the header read here; an animation's first frame
            // comes out as RGBA on its canvas.
            let (reader, color) = match format {
                ImageFormat::WebP if facts.webp_animated => {
                    (Reader::Webp { animated: true }, ColorType::Rgba8)
                }
                ImageFormat::WebP if matches!(color, ColorType::Rgb8 | ColorType::Rgba8) => {
                    (Reader::Webp { animated: false }, color)
                }
                _ => (Reader::Image(decoder), color),
            };
            (reader, w, h, color, orientation)
        }
    };
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ImageError::new(
            ErrorKind::TooLarge,
            format!("image is {width}x{height}, the longest side accepted is {MAX_SIDE}"),
        ));
    }
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
    let cost = budget::Plan {
        format,
        width,
        height,
        color,
        orientation,
        input_bytes: bytes.len() as u64,
        facts: &facts,
    }
    .cost();
    if cost.peak > limits.max_decode_bytes {
        let turn = if budget::swaps_axes(orientation) {
            ", turned a quarter,"
        } else {
            ""
        };
        return Err(ImageError::new(
            ErrorKind::TooLarge,
            format!(
                "decoding this {width}x{height} {} image{turn} needs {}, the limit is {}",
                budget::describe(color),
                budget::mib(cost.peak),
                budget::mib(limits.max_decode_bytes)
            ),
        ));
    }
    Ok(Checked {
        reader,
        width,
        height,
        color,
        orientation,
        peak: cost.peak,
    })
}

/// The decoders' own limits, a second line behind the budget: none allocates more than
/// the budget at once, nor accepts a side longer than [`MAX_SIDE`].
fn decoder_limits(limits: DecodeLimits) -> Limits {
    let mut l = Limits::default();
    l.max_alloc = Some(limits.max_decode_bytes);
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
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

#[cfg(test)]
mod tests;
