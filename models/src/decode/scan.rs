//! What an image's container says before any pixel is decoded, read by walking its
//! structure: the facts a decode's memory depends on that the decoders do not expose, and
//! the caps on metadata a decoder would read into memory whole.

use std::io::Read;

use image::ImageFormat;
use image::metadata::Orientation;
use tagfleet_contracts::{ErrorKind, ImageError};

/// Metadata (an ICC profile, an EXIF block) larger than this is refused. Real ones are
/// tens of KB; a PNG's profile is compressed, so a 1 MB file can carry a 1 GB one.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Scans a JPEG may have. Encoders write one, or about ten when progressive; each scan of
/// a progressive image revisits all of its coefficients, so thousands of tiny scans turn
/// a small file into minutes of decoding.
pub const MAX_JPEG_SCANS: usize = 100;

/// What the cost of decoding depends on beyond size and colour type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub jpeg: Option<JpegFrame>,
    /// A GIF's first frame, the one decoded.
    pub gif_frame: Option<GifFrame>,
    /// An animated WebP is composed on a canvas of its own.
    pub webp_animated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JpegFrame {
    /// Horizontal and vertical sampling factors of each component; empty if unread.
    pub sampling: Vec<(u8, u8)>,
    /// Whether every coefficient is held until the last scan: progressive, or more than
    /// one scan, where a component's data is complete only at the end.
    pub buffered: bool,
    /// The EXIF orientation of the first APP1 Exif segment, when it has one.
    pub orientation: Option<Orientation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GifFrame {
    pub left: u16,
    pub top: u16,
    pub width: u16,
    pub height: u16,
}

/// Walks `bytes` of `format`. Fails on metadata over [`MAX_METADATA_BYTES`] and on a
/// JPEG cut short; a structure it cannot follow is left for the decoder to report.
pub fn scan(format: ImageFormat, bytes: &[u8]) -> Result<Facts, ImageError> {
    Ok(match format {
        ImageFormat::Png => {
            png(bytes)?;
            Facts::default()
        }
        ImageFormat::Jpeg => Facts {
            jpeg: Some(jpeg(bytes)?),
            ..Facts::default()
        },
        ImageFormat::Gif => Facts {
            gif_frame: gif_first_frame(bytes),
            ..Facts::default()
        },
        ImageFormat::WebP => webp(bytes)?,
        _ => Facts::default(),
    })
}

fn too_large(what: &str, bytes: u64) -> ImageError {
    ImageError::new(
        ErrorKind::TooLarge,
        format!(
            "{what} is {bytes} bytes, the limit for image metadata is {} MiB",
            MAX_METADATA_BYTES >> 20
        ),
    )
}

/// PNG chunks: `iCCP` (a compressed profile the decoder inflates whole) and `eXIf`.
/// Compressed text is inflated only on request, which never comes.
fn png(bytes: &[u8]) -> Result<(), ImageError> {
    let mut at = 8;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let data = &bytes[(at + 8).min(bytes.len())..(at + 8).saturating_add(len).min(bytes.len())];
        match &header[4..] {
            b"iCCP" => {
                // Profile name (1 to 79 bytes), NUL, compression method, zlib stream.
                if let Some(nul) = data.iter().take(81).position(|&b| b == 0) {
                    let stream = data.get(nul + 2..).unwrap_or_default();
                    if inflated_len(stream, MAX_METADATA_BYTES) > MAX_METADATA_BYTES {
                        return Err(ImageError::new(
                            ErrorKind::TooLarge,
                            format!(
                                "ICC profile inflates to more than {} MiB, the limit for image metadata",
                                MAX_METADATA_BYTES >> 20
                            ),
                        ));
                    }
                }
            }
            b"eXIf" if len as u64 > MAX_METADATA_BYTES => {
                return Err(too_large("EXIF block", len as u64));
            }
            b"IEND" => break,
            _ => {}
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Bytes a zlib stream inflates to, counted up to `cap + 1` without keeping them; a
/// broken stream counts what came out before the break (a decoder would have held it).
fn inflated_len(zlib: &[u8], cap: u64) -> u64 {
    let mut stream = flate2::read::ZlibDecoder::new(zlib).take(cap + 1);
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        total += n as u64;
    }
    total
}

/// JPEG markers up to the first scan: the frame header and ICC profile segments; then
/// whether the data is complete and has more than one scan.
fn jpeg(bytes: &[u8]) -> Result<JpegFrame, ImageError> {
    // An end-of-image marker (FF D9) must follow the last start-of-scan (FF DA). Inside
    // entropy-coded data a 0xFF byte is always stuffed or a restart marker, so neither
    // pair occurs by accident; bytes after the EOI (some cameras append data) are allowed.
    // One pass over the 0xFF bytes: the scans, the last SOS and the last EOI.
    let (mut scans, mut last_sos, mut last_eoi) = (0usize, None, None);
    let mut at = 0;
    while let Some(found) = bytes[at..].iter().position(|&b| b == 0xFF) {
        let i = at + found;
        match bytes.get(i + 1) {
            Some(0xDA) => {
                scans += 1;
                last_sos = Some(i);
            }
            Some(0xD9) => last_eoi = Some(i),
            _ => {}
        }
        at = i + 1;
    }
    let complete = matches!((last_sos, last_eoi), (Some(sos), Some(eoi)) if eoi > sos);
    if !complete {
        // The JPEG decoder fills a cut-off scan with grey instead of failing.
        return Err(ImageError::new(
            ErrorKind::Decode,
            "JPEG data is cut short: no end-of-image marker after the last scan",
        ));
    }
    if scans > MAX_JPEG_SCANS {
        return Err(ImageError::new(
            ErrorKind::TooLarge,
            format!("JPEG has {scans} scans, the limit is {MAX_JPEG_SCANS}"),
        ));
    }
    let mut frame = JpegFrame {
        sampling: Vec::new(),
        buffered: scans > 1,
        orientation: None,
    };
    let mut icc = 0u64;
    let mut at = 2;
    while let Some(&[0xFF, marker]) = bytes.get(at..at + 2) {
        // Fill bytes, and markers without a segment.
        if marker == 0xFF || marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            at += if marker == 0xFF { 1 } else { 2 };
            continue;
        }
        let Some(len) = bytes.get(at + 2..at + 4) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let segment = bytes.get(at + 4..at + 2 + len.max(2)).unwrap_or_default();
        match marker {
            0xDA => break,
            0xE2 if segment.starts_with(b"ICC_PROFILE\0") => icc += segment.len() as u64,
            0xE1 if frame.orientation.is_none() && segment.starts_with(b"Exif\0\0") => {
                frame.orientation = Orientation::from_exif_chunk(&segment[6..]);
            }
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                frame.buffered |= matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
                let components = usize::from(*segment.get(5).unwrap_or(&0));
                frame.sampling = (0..components)
                    .filter_map(|i| segment.get(7 + 3 * i))
                    .map(|hv| (hv >> 4, hv & 0x0F))
                    .collect();
            }
            _ => {}
        }
        at += 2 + len;
    }
    if icc > MAX_METADATA_BYTES {
        return Err(too_large("ICC profile", icc));
    }
    Ok(frame)
}

/// The first image descriptor of a GIF, past its colour table and extensions.
fn gif_first_frame(bytes: &[u8]) -> Option<GifFrame> {
    let packed = *bytes.get(10)?;
    let mut at = 13;
    if packed & 0x80 != 0 {
        at += 3 << ((packed & 0x07) + 1);
    }
    loop {
        match *bytes.get(at)? {
            0x21 => {
                // Extension: label, then sub-blocks until an empty one.
                at += 2;
                loop {
                    let n = usize::from(*bytes.get(at)?);
                    at += 1 + n;
                    if n == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let d = bytes.get(at + 1..at + 9)?;
                let le = |i: usize| u16::from_le_bytes([d[i], d[i + 1]]);
                return Some(GifFrame {
                    left: le(0),
                    top: le(2),
                    width: le(4),
                    height: le(6),
                });
            }
            _ => return None,
        }
    }
}

/// WebP chunks: the animation flag, and the ICC and EXIF chunks the decoder reads whole.
fn webp(bytes: &[u8]) -> Result<Facts, ImageError> {
    let mut facts = Facts::default();
    let mut extended = false;
    let mut at = 12; // RIFF, size, WEBP
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u64::from(u32::from_le_bytes(header[4..].try_into().unwrap()));
        match &header[..4] {
            // The decoders read the first VP8X; so does this.
            b"VP8X" if !extended => {
                extended = true;
                facts.webp_animated = bytes.get(at + 8).is_some_and(|f| f & 0x02 != 0);
            }
            b"ICCP" if len > MAX_METADATA_BYTES => return Err(too_large("ICC profile", len)),
            b"EXIF" if len > MAX_METADATA_BYTES => return Err(too_large("EXIF block", len)),
            _ => {}
        }
        let next = len + (len & 1) + 8;
        at = at.saturating_add(usize::try_from(next).unwrap_or(usize::MAX));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::{DynamicImage, RgbImage};

    use super::*;
    use crate::hostile;

    fn jpeg() -> Vec<u8> {
        let img = RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 50]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    /// `jpeg` with `segments` APP2 ICC_PROFILE segments of 65,000 bytes after its SOI.
    fn jpeg_with_icc(jpeg: &[u8], segments: u8) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        for i in 1..=segments {
            let mut data = b"ICC_PROFILE\0".to_vec();
            data.extend_from_slice(&[i, segments]);
            data.resize(65_000, 0);
            out.extend_from_slice(&[0xFF, 0xE2]);
            out.extend_from_slice(&(data.len() as u16 + 2).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn kind_and_message(result: Result<Facts, ImageError>) -> (ErrorKind, String) {
        let err = result.unwrap_err();
        (err.kind, err.message)
    }

    #[test]
    fn an_icc_profile_is_measured_inflated_without_being_kept() {
        assert!(scan(ImageFormat::Png, &hostile::png_with_icc_profile(1 << 20)).is_ok());
        let (kind, message) = kind_and_message(scan(
            ImageFormat::Png,
            &hostile::png_with_icc_profile((1 << 20) + 1),
        ));
        assert_eq!(kind, ErrorKind::TooLarge);
        assert_eq!(
            message,
            "ICC profile inflates to more than 1 MiB, the limit for image metadata"
        );
        // A broken profile is skipped by the decoder, and so here.
        let mut broken = hostile::png_with_icc_profile(1000);
        let iccp = broken.windows(4).position(|w| w == b"iCCP").unwrap();
        broken[iccp + 4 + 6] ^= 0xFF; // the zlib header
        assert_eq!(inflated_len(&broken[iccp + 10..], MAX_METADATA_BYTES), 0);
    }

    #[test]
    fn a_png_exif_block_over_the_cap_is_refused() {
        let png = hostile::png_rgb16(2, 2);
        let mut exif = (2u32 << 20).to_be_bytes().to_vec(); // length only: never read
        exif.extend_from_slice(b"eXIf");
        let crafted = [&png[..33], &exif, &png[33..]].concat();
        let (kind, message) = kind_and_message(scan(ImageFormat::Png, &crafted));
        assert_eq!(kind, ErrorKind::TooLarge);
        assert_eq!(
            message,
            "EXIF block is 2097152 bytes, the limit for image metadata is 1 MiB"
        );
    }

    #[test]
    fn a_jpeg_frame_says_its_sampling_and_whether_it_is_buffered() {
        let baseline = jpeg();
        let facts = scan(ImageFormat::Jpeg, &baseline).unwrap().jpeg.unwrap();
        assert_eq!(facts.sampling.len(), 3);
        assert!(!facts.buffered);

        let mut progressive = baseline.clone();
        let sof = progressive
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .unwrap();
        progressive[sof + 1] = 0xC2;
        let facts = scan(ImageFormat::Jpeg, &progressive).unwrap().jpeg.unwrap();
        assert!(facts.buffered);
    }

    #[test]
    fn jpeg_icc_segments_count_together() {
        let jpeg = jpeg();
        assert!(scan(ImageFormat::Jpeg, &jpeg_with_icc(&jpeg, 16)).is_ok());
        let (kind, message) = kind_and_message(scan(ImageFormat::Jpeg, &jpeg_with_icc(&jpeg, 17)));
        assert_eq!(kind, ErrorKind::TooLarge);
        assert!(
            message.starts_with("ICC profile is 1105000 bytes"),
            "{message}"
        );
    }

    #[test]
    fn a_jpeg_without_an_end_after_its_last_scan_is_cut_short() {
        let jpeg = jpeg();
        let (kind, _) = kind_and_message(scan(ImageFormat::Jpeg, &jpeg[..jpeg.len() - 2]));
        assert_eq!(kind, ErrorKind::Decode);
        // Bytes after the end are a camera's business.
        assert!(scan(ImageFormat::Jpeg, &[jpeg.as_slice(), b"trailer"].concat()).is_ok());
    }

    #[test]
    fn a_gif_frame_is_found_past_its_extensions() {
        let mut gif = hostile::gif_with_canvas(300, 200);
        // A graphic control extension before the image descriptor, as animations have.
        gif.splice(19..19, [0x21, 0xF9, 4, 0, 10, 0, 0, 0]);
        let frame = scan(ImageFormat::Gif, &gif).unwrap().gif_frame.unwrap();
        assert_eq!(
            frame,
            GifFrame {
                left: 0,
                top: 0,
                width: 1,
                height: 1
            }
        );
        assert_eq!(gif_first_frame(&gif[..19]), None);
    }

    /// The decoders read a WebP's first VP8X chunk; a second one saying "animated" must
    /// not send a still image to the animation path (or the reverse).
    #[test]
    fn the_first_vp8x_decides_a_webp_is_animated() {
        let vp8x = |flags: u8| {
            let mut c = b"VP8X".to_vec();
            c.extend_from_slice(&10u32.to_le_bytes());
            c.extend_from_slice(&[flags, 0, 0, 0, 99, 0, 0, 99, 0, 0]);
            c
        };
        for (first, second, animated) in [(0x00, 0x02, false), (0x02, 0x00, true)] {
            let mut body = b"WEBP".to_vec();
            body.extend(vp8x(first));
            body.extend(vp8x(second));
            let mut file = b"RIFF".to_vec();
            file.extend_from_slice(&(body.len() as u32).to_le_bytes());
            file.extend(body);
            assert_eq!(
                scan(ImageFormat::WebP, &file).unwrap().webp_animated,
                animated
            );
        }
    }

    #[test]
    fn webp_animation_and_metadata_chunks() {
        let animated = hostile::webp_animated_canvas(300, 200);
        assert!(scan(ImageFormat::WebP, &animated).unwrap().webp_animated);
        for chunk in [b"ICCP", b"EXIF"] {
            let mut big = animated.clone();
            big.extend_from_slice(chunk);
            big.extend_from_slice(&(3u32 << 20).to_le_bytes());
            let (kind, message) = kind_and_message(scan(ImageFormat::WebP, &big));
            assert_eq!(kind, ErrorKind::TooLarge);
            assert!(message.contains("3145728 bytes"), "{message}");
        }
    }
}
