//! JPEG through libjpeg-turbo, scaled in the IDCT.
//!
//! A model looks at a 224-pixel crop; a 12-megapixel photo holds sixty times the pixels
//! that crop needs. libjpeg-turbo can run its inverse DCT at 1/2, 1/4 or 1/8 scale, which
//! skips most of the decoder's arithmetic and memory traffic, so the decode is asked for
//! the smallest of those scales whose result the caller still accepts. The full-size
//! pixels are never made.
//!
//! At 1/8 scale the inverse DCT of a full-resolution block is its DC coefficient alone. A
//! progressive JPEG sends the DC coefficients in scans of their own, first, and the AC
//! coefficients after them in scans that cost most of the decoding (each refinement
//! revisits every block); at that scale the AC scans of the full-resolution components
//! are left out of what libjpeg-turbo reads ([`dc_scans_only`]), which changes no pixel.
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
    progressive: bool,
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
            progressive: h.is_progressive,
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
    let dc_only = (header.progressive && scale == ScalingFactor::ONE_EIGHTH)
        .then(|| dc_scans_only(bytes))
        .flatten();
    let bytes = dc_only.as_deref().unwrap_or(bytes);
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

/// A progressive JPEG without the AC scans of its full-resolution components: what
/// decoding at 1/8 scale reads. Those components' blocks become one pixel each, from the
/// DC coefficient alone; a subsampled component (the chroma of a 4:2:0 file) is scaled
/// less, by an IDCT that reads AC coefficients too, so its AC scans stay.
///
/// Each left-out component gets one scan of its own in their place, a few bytes long,
/// saying its AC coefficients are all zero: were they merely missing, libjpeg-turbo
/// would smooth the DC coefficients of neighbouring blocks to make up for them, and the
/// pixels would change. `None` when the structure is not followed to its end, or has
/// restart intervals (the full file is then decoded, and libjpeg-turbo reports what is
/// wrong with it).
pub fn dc_scans_only(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    out.extend_from_slice(bytes.get(..2)?);
    // From the frame header: the ids of the components sampled at full resolution, and
    // how many blocks such a component has.
    let mut full_resolution: Option<Vec<u8>> = None;
    let mut blocks = 0usize;
    // Components whose AC scans were replaced; whether the AC table slot the
    // replacements use still holds theirs.
    let mut replaced: Vec<u8> = Vec::new();
    let mut slot_ours = false;
    let mut at = 2;
    loop {
        // Fill bytes may precede a marker.
        while bytes.get(at..at + 2)? == [0xFF, 0xFF] {
            at += 1;
        }
        let [0xFF, marker] = *bytes.get(at..at + 2)? else {
            return None;
        };
        if marker == 0xD9 {
            out.extend_from_slice(&[0xFF, 0xD9]);
            return Some(out);
        }
        let len = usize::from(u16::from_be_bytes(
            bytes.get(at + 2..at + 4)?.try_into().ok()?,
        ));
        let segment_end = at + 2 + len;
        let segment = bytes.get(at..segment_end)?;
        match marker {
            // SOF2: precision, height, width, Nf, then Nf of (id, H<<4|V, table).
            0xC2 => {
                let side = |i: usize| {
                    Some(usize::from(u16::from_be_bytes([
                        *segment.get(i)?,
                        *segment.get(i + 1)?,
                    ])))
                };
                blocks = side(5)?.div_ceil(8) * side(7)?.div_ceil(8);
                let count = usize::from(*segment.get(9)?);
                let components = segment.get(10..10 + 3 * count)?;
                let sampling = |c: &[u8]| (c[1] >> 4, c[1] & 0x0F);
                let max_h = components.chunks(3).map(|c| sampling(c).0).max()?;
                let max_v = components.chunks(3).map(|c| sampling(c).1).max()?;
                full_resolution = Some(
                    components
                        .chunks(3)
                        .filter(|c| sampling(c) == (max_h, max_v))
                        .map(|c| c[0])
                        .collect(),
                );
            }
            // DRI: a run of empty blocks would have to stop at every restart marker.
            0xDD if segment.get(4..6)? != [0, 0] => return None,
            0xC4 if defines_ac_table(segment, ZERO_AC_TABLE)? => slot_ours = false,
            _ => {}
        }
        if marker != 0xDA {
            out.extend_from_slice(segment);
            at = segment_end;
            continue;
        }
        // SOS: Ns, Ns of (component id, DC<<4|AC table), then Ss, Se, Ah/Al.
        let count = usize::from(*segment.get(4)?);
        let selectors = segment.get(5..5 + 2 * count)?;
        let spectral_start = *segment.get(5 + 2 * count)?;
        let data_end = segment_end + entropy_data_len(bytes.get(segment_end..)?)?;
        let full_resolution = full_resolution.as_ref()?;
        // AC scans hold one component each.
        let id = *selectors.first()?;
        if spectral_start > 0 && count == 1 && full_resolution.contains(&id) {
            if !replaced.contains(&id) {
                replaced.push(id);
                zero_ac_scan(id, blocks, &mut out);
                slot_ours = true;
            }
        } else {
            let uses_slot =
                spectral_start > 0 && selectors.chunks(2).any(|c| c[1] & 0x0F == ZERO_AC_TABLE);
            if slot_ours && uses_slot {
                return None; // a kept scan reads the table our replacement overwrote
            }
            out.extend_from_slice(&bytes[at..data_end]);
        }
        at = data_end;
    }
}

/// The AC Huffman table slot the zero scans define and use.
const ZERO_AC_TABLE: u8 = 3;

/// Whether DHT `segment` defines AC table `slot`; `None` if it is cut short.
fn defines_ac_table(segment: &[u8], slot: u8) -> Option<bool> {
    let mut at = 4;
    let mut found = false;
    while at < segment.len() {
        let class_slot = *segment.get(at)?;
        found |= class_slot == (1 << 4 | slot);
        let symbols: usize = segment
            .get(at + 1..at + 17)?
            .iter()
            .map(|&n| usize::from(n))
            .sum();
        at += 17 + symbols;
    }
    Some(found)
}

/// A progressive AC scan of component `id` (coefficients 1 to 63, full precision) in
/// which each of its `blocks` blocks is empty: end-of-band runs of up to 32767 blocks,
/// coded by a table of its own (EOB0 to EOB14, four bits each).
fn zero_ac_scan(id: u8, blocks: usize, out: &mut Vec<u8>) {
    // DHT: AC table ZERO_AC_TABLE, fifteen codes of four bits for EOB0..EOB14.
    out.extend_from_slice(&[0xFF, 0xC4, 0, 34, 1 << 4 | ZERO_AC_TABLE]);
    out.extend_from_slice(&[0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend((0..15).map(|n| n << 4));
    // SOS: one component, its AC table, Ss 1, Se 63, Ah 0, Al 0.
    out.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, id, ZERO_AC_TABLE, 1, 63, 0]);
    let mut bits = BitWriter::new(out);
    let mut left = blocks;
    while left > 0 {
        let run = left.min(0x7FFF);
        let n = run.ilog2();
        // Canonical codes: EOBn is n, in four bits; then n bits of run - 2^n.
        bits.put(n, 4);
        bits.put((run - (1 << n)) as u32, n);
        left -= run;
    }
    bits.finish();
}

/// Entropy-coded bits, most significant first, with 0xFF bytes stuffed.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u32,
    len: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            len: 0,
        }
    }

    fn put(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.acc = self.acc << 1 | (value >> i & 1);
            self.len += 1;
            if self.len == 8 {
                self.byte();
            }
        }
    }

    fn byte(&mut self) {
        let b = self.acc as u8;
        self.out.push(b);
        if b == 0xFF {
            self.out.push(0);
        }
        self.acc = 0;
        self.len = 0;
    }

    /// Pads the last byte with ones, as the standard asks.
    fn finish(mut self) {
        if self.len > 0 {
            let pad = 8 - self.len;
            self.put((1 << pad) - 1, pad);
        }
    }
}

/// Bytes of entropy-coded data at the start of `data`: up to the first marker that is
/// neither a stuffed 0xFF (FF 00) nor a restart marker (FF D0 to FF D7).
fn entropy_data_len(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        at += data.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match *data.get(at + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => at += 1,
            _ => return Some(at),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{photo, turbo_jpeg};

    fn progressive_photo(subsamp: turbojpeg::Subsamp) -> Vec<u8> {
        turbo_jpeg(&photo(2400, 1600), |c| {
            c.set_progressive(true).unwrap();
            c.set_subsamp(subsamp).unwrap();
        })
    }

    #[test]
    fn leaving_out_the_ac_scans_changes_no_pixel_at_one_eighth() {
        use turbojpeg::Subsamp;
        for subsamp in [
            Subsamp::Sub2x2,
            Subsamp::None,
            Subsamp::Sub2x1,
            Subsamp::Gray,
        ] {
            same_pixels_at_one_eighth(&progressive_photo(subsamp), subsamp);
        }
    }

    fn same_pixels_at_one_eighth(jpeg: &[u8], subsamp: turbojpeg::Subsamp) {
        let dc = dc_scans_only(jpeg).expect("a well-formed progressive JPEG");
        let scans = |b: &[u8]| b.windows(2).filter(|w| *w == [0xFF, 0xDA]).count();
        assert!(
            scans(jpeg) > 4,
            "{subsamp:?}: a progressive file of several scans"
        );
        assert!(scans(&dc) < scans(jpeg), "{subsamp:?}: AC scans left out");
        assert!(
            dc.len() * 2 < jpeg.len(),
            "{subsamp:?}: {} of {} bytes",
            dc.len(),
            jpeg.len()
        );

        let header = header(jpeg).unwrap().unwrap();
        assert!(header.progressive);
        // Decoded the long way, every scan read, and through `decode`.
        let mut full = vec![0u8; 300 * 200 * 3];
        with_decompressor(|d| {
            d.set_scaling_factor(ScalingFactor::ONE_EIGHTH).unwrap();
            let image = Image {
                pixels: full.as_mut_slice(),
                width: 300,
                pitch: 900,
                height: 200,
                format: PixelFormat::RGB,
            };
            d.decompress(jpeg, image).map_err(error)
        })
        .unwrap();
        let scaled = decode(jpeg, &header, ScalingFactor::ONE_EIGHTH).unwrap();
        assert_eq!(scaled.dimensions(), (300, 200));
        assert!(scaled.as_raw() == &full, "{subsamp:?}: the same pixels");
    }

    #[test]
    fn a_structure_not_followed_to_its_end_is_left_whole() {
        let jpeg = progressive_photo(turbojpeg::Subsamp::Sub2x2);
        assert!(dc_scans_only(&jpeg[..jpeg.len() / 2]).is_none());
        assert!(dc_scans_only(b"\xFF\xD8\xFF").is_none());
        // A scan of no component, after the frame header.
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC2]).unwrap();
        let mut crafted = jpeg[..sof].to_vec();
        crafted.extend_from_slice(&jpeg[sof..sof + 2 + 17]);
        crafted.extend_from_slice(&[0xFF, 0xDA, 0, 6, 0, 1, 63, 0, 0xFF, 0xD9]);
        assert!(dc_scans_only(&crafted).is_none());
        assert!(dc_scans_only(&[]).is_none());
    }
}
