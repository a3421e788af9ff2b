//! Images made to cost far more memory to decode than their size suggests: the inputs of
//! the tests proving such images are refused before their pixels are allocated. Built in
//! memory rather than committed, each from zeros that compress to almost nothing.
//!
//! Compiled for this crate's unit tests and, through the `hostile-images` feature, for
//! integration tests (this crate's and the binary's); nothing else uses it.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};

/// A `width`x`height` 16-bit RGB PNG, all black: 6 bytes a pixel once decoded.
pub fn png_rgb16(width: u32, height: u32) -> Vec<u8> {
    png_rgb16_with(width, height, None)
}

/// [`png_rgb16`] with an `eXIf` chunk asking for a quarter turn (orientation 6), which
/// used to cost one more full-size copy.
pub fn png_rgb16_rotated(width: u32, height: u32) -> Vec<u8> {
    png_rgb16_with(width, height, Some(&tiff_orientation(6)))
}

fn png_rgb16_with(width: u32, height: u32, exif: Option<&[u8]>) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 2, 0, 0, 0]); // 16 bits, RGB, deflate, no filter, no interlace
    let mut png = png_start(&ihdr);
    if let Some(exif) = exif {
        png_chunk(&mut png, b"eXIf", exif);
    }
    // Every row is its filter byte (0, none) and black pixels: zeros throughout.
    let row = 1 + u64::from(width) * 6;
    png_chunk(&mut png, b"IDAT", &zlib_zeros(row * u64::from(height)));
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A 1x1 PNG whose ICC profile (`iCCP`, compressed) inflates to `profile_bytes`.
pub fn png_with_icc_profile(profile_bytes: u64) -> Vec<u8> {
    let mut png = png_start(&[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
    let mut iccp = b"bomb\0\0".to_vec(); // profile name, NUL, compression method 0
    iccp.extend_from_slice(&zlib_zeros(profile_bytes));
    png_chunk(&mut png, b"iCCP", &iccp);
    png_chunk(&mut png, b"IDAT", &zlib_zeros(4)); // filter byte and one black pixel
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A real 16x16 JPEG whose frame header claims `width`x`height`.
pub fn jpeg_claiming_size(width: u16, height: u16) -> Vec<u8> {
    let small = RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 99])
    });
    let mut jpeg = encode(&DynamicImage::ImageRgb8(small), ImageFormat::Jpeg);
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// A GIF with a `width`x`height` logical screen and one 1x1 frame in its corner.
pub fn gif_with_canvas(width: u16, height: u16) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&width.to_le_bytes());
    gif.extend_from_slice(&height.to_le_bytes());
    gif.extend_from_slice(&[0x80, 0, 0]); // a global colour table of 2 entries
    gif.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // the 1x1 frame at 0,0
    gif.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3B]); // LZW: clear, 0, end; trailer
    gif
}

/// An animated WebP with a `width`x`height` canvas (at most 2^24 a side) and one 1x1
/// lossless frame.
pub fn webp_animated_canvas(width: u32, height: u32) -> Vec<u8> {
    let pixel = RgbaImage::from_pixel(1, 1, image::Rgba([200, 10, 10, 255]));
    let single = encode(&DynamicImage::ImageRgba8(pixel), ImageFormat::WebP);
    webp_animation(&single, (1, 1), (width, height))
}

/// An animated WebP of one frame: the lossless still WebP `still`, `frame` (width,
/// height) in size, at the top left of a `canvas` (width, height).
pub fn webp_animation(still: &[u8], frame: (u32, u32), canvas: (u32, u32)) -> Vec<u8> {
    let vp8l = &still[12..]; // the VP8L chunk, header and padding included
    assert_eq!(&vp8l[..4], b"VP8L", "a lossless WebP");
    let minus_one = |v: u32| (v - 1).to_le_bytes();
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0]; // animation, no alpha
    vp8x.extend_from_slice(&minus_one(canvas.0)[..3]);
    vp8x.extend_from_slice(&minus_one(canvas.1)[..3]);
    riff_chunk(&mut body, b"VP8X", &vp8x);
    riff_chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    let mut anmf = vec![0; 6]; // frame at 0,0
    anmf.extend_from_slice(&minus_one(frame.0)[..3]);
    anmf.extend_from_slice(&minus_one(frame.1)[..3]);
    anmf.extend_from_slice(&[100, 0, 0, 0]); // 100 ms, no blending, no disposal
    anmf.extend_from_slice(vp8l);
    riff_chunk(&mut body, b"ANMF", &anmf);
    let mut webp = b"RIFF".to_vec();
    webp.extend_from_slice(&(body.len() as u32).to_le_bytes());
    webp.extend_from_slice(&body);
    webp
}

/// A lossless WebP of `side`x`side` black pixels (`side` at most 1024) whose bitstream
/// declares one Huffman group for each 4x4 block, 65,535 for 1024x1024, each made of
/// one-symbol codes: a few hundred KB asking a decoder for a lookup table a group,
/// 1.3 GB in libwebp (a colour cache of 2^11 entries makes each table about 20 KB).
pub fn webp_huffman_groups(side: u32) -> Vec<u8> {
    assert!((4..=1024).contains(&side), "65,536 groups at most");
    let mut bits = LsbBits::default();
    // Header: signature, width-1, height-1, no alpha, version 0.
    bits.put(0x2F, 8);
    bits.put(side - 1, 14);
    bits.put(side - 1, 14);
    bits.put(0, 1);
    bits.put(0, 3);
    bits.put(0, 1); // no transform
    bits.put(1, 1); // a colour cache...
    bits.put(11, 4); // ...of 2^11 entries
    bits.put(1, 1); // meta Huffman codes: an entropy image...
    bits.put(0, 3); // ...of one pixel a 4x4 block
    // The entropy image: no colour cache; green and red codes of 8 bits a symbol (for
    // the group number's two bytes), one-symbol codes for blue, alpha and distance.
    bits.put(0, 1);
    bits.flat_8_bit_code(280);
    bits.flat_8_bit_code(256);
    for _ in 0..3 {
        bits.one_symbol_code();
    }
    let blocks = side.div_ceil(4).pow(2);
    let groups = blocks.min(65_536);
    // Block i uses group i + 1 while there are groups; the rest use group 0.
    for i in 0..blocks {
        let group = if i + 1 < groups { i + 1 } else { 0 };
        bits.huffman_code(group & 0xFF, 8);
        bits.huffman_code(group >> 8, 8);
    }
    // Five one-symbol codes a group: every pixel reads no bits and is black.
    for _ in 0..groups * 5 {
        bits.one_symbol_code();
    }
    let mut data = bits.finish();
    data.extend_from_slice(&[0; 64]);
    let mut body = b"WEBP".to_vec();
    riff_chunk(&mut body, b"VP8L", &data);
    let mut webp = b"RIFF".to_vec();
    webp.extend_from_slice(&(body.len() as u32).to_le_bytes());
    webp.extend_from_slice(&body);
    webp
}

/// Bits as a lossless WebP stores them: values least significant bit first, Huffman
/// codes most significant bit first.
#[derive(Default)]
struct LsbBits {
    bytes: Vec<u8>,
    used: u32,
}

impl LsbBits {
    fn bit(&mut self, bit: u32) {
        if self.used.is_multiple_of(8) {
            self.bytes.push(0);
        }
        *self.bytes.last_mut().expect("pushed above") |= ((bit & 1) as u8) << (self.used % 8);
        self.used += 1;
    }

    fn put(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.bit(value >> i);
        }
    }

    fn huffman_code(&mut self, code: u32, length: u32) {
        for i in (0..length).rev() {
            self.bit(code >> i);
        }
    }

    /// A simple code of one 1-bit symbol (0): reading it takes no bits.
    fn one_symbol_code(&mut self) {
        self.put(1, 1); // simple
        self.put(0, 1); // one symbol
        self.put(0, 1); // of 1 bit
        self.put(0, 1); // symbol 0
    }

    /// A normal code over `symbols` symbols: the first 256 of 8 bits, the rest unused.
    fn flat_8_bit_code(&mut self, symbols: u32) {
        // Code-length code lengths, in their stored order: lengths 0 and 8 get 1 bit.
        const ORDER: [u32; 19] = [
            17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ];
        self.put(0, 1); // normal
        self.put(12 - 4, 4); // twelve code-length code lengths
        for order in &ORDER[..12] {
            self.put(u32::from(*order == 0 || *order == 8), 3);
        }
        self.put(0, 1); // every symbol's length follows
        // Length 0 is code 0, length 8 code 1 (canonical, in symbol order).
        for symbol in 0..symbols {
            self.put(u32::from(symbol < 256), 1);
        }
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// A little-endian TIFF block with one IFD0 entry: Orientation = `orientation`.
pub fn tiff_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec(); // IFD at 8, one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, no next IFD
    tiff
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .expect("encoding in memory");
    out.into_inner()
}

fn png_start(ihdr: &[u8]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut png, b"IHDR", ihdr);
    png
}

fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    png.extend_from_slice(&crc.sum().to_be_bytes());
}

fn riff_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(kind);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

/// A zlib stream of `len` zeros, written directly: one fixed-Huffman block of a literal
/// zero and back-references of 258 bytes at distance 1, 13 bits each (a general-purpose
/// compressor takes a minute over a GiB in a debug build).
fn zlib_zeros(len: u64) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.out.extend_from_slice(&[0x78, 0x01]);
    bits.put(0b011, 3); // last block, fixed Huffman codes
    // Codes go out most significant bit first, so they are written reversed.
    const LITERAL_ZERO: u64 = 0b0000_1100; // 0x30, 8 bits
    // Length 258 (symbol 285, 0xC5, 8 bits), then distance 1 (code 0, 5 zero bits).
    const MATCH_258_AT_1: u64 = 0b1010_0011;
    let mut left = len;
    if left > 0 {
        bits.put(LITERAL_ZERO, 8);
        left -= 1;
    }
    while left >= 258 {
        bits.put(MATCH_258_AT_1, 13);
        left -= 258;
    }
    for _ in 0..left {
        bits.put(LITERAL_ZERO, 8);
    }
    bits.put(0, 7); // end of block
    bits.flush();
    // Adler-32 of zeros: the byte sum stays 1, the running sum grows by 1 a byte.
    let adler = ((len % 65_521) << 16) | 1;
    bits.out.extend_from_slice(&(adler as u32).to_be_bytes());
    bits.out
}

/// Bits packed least significant first, as DEFLATE wants them.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    count: u32,
}

impl Bits {
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.count;
        self.count += count;
        while self.count >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    fn flush(&mut self) {
        if self.count > 0 {
            self.out.push(self.acc as u8);
        }
        self.acc = 0;
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use image::ImageDecoder;

    use super::*;
    use crate::{DecodeLimits, decode};

    /// Small, each is a valid image, so what refuses a large one is its size alone.
    #[test]
    fn small_ones_are_valid_images() {
        let black = decode(&png_rgb16(50, 40), DecodeLimits::default()).unwrap();
        assert_eq!((black.width(), black.height()), (50, 40));
        assert!(black.pixels.pixels().all(|p| p.0 == [0, 0, 0]));
        let turned = decode(&png_rgb16_rotated(50, 40), DecodeLimits::default()).unwrap();
        assert_eq!((turned.width(), turned.height()), (40, 50));
        for (bytes, size) in [
            (jpeg_claiming_size(16, 16), (16, 16)),
            (gif_with_canvas(20, 10), (20, 10)),
            (webp_animated_canvas(20, 10), (20, 10)),
        ] {
            let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
            assert_eq!((decoded.width(), decoded.height()), size);
        }

        let png = png_with_icc_profile(1000);
        let mut decoder = image::codecs::png::PngDecoder::new(Cursor::new(&png)).unwrap();
        assert_eq!(decoder.icc_profile().unwrap(), Some(vec![0; 1000]));
        // Every length of the tail after the 258-byte references inflates exactly.
        for len in [0, 1, 258, 259, 517, 1 << 16] {
            let (zlib, mut out) = (zlib_zeros(len), Vec::new());
            let mut z = flate2::read::ZlibDecoder::new(&zlib[..]);
            std::io::Read::read_to_end(&mut z, &mut out).unwrap();
            assert_eq!(out.len() as u64, len);
        }
    }
}
