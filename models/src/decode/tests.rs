//! `decode` end to end: formats, colour types, orientation, and every refusal with its
//! kind and message.

use super::*;
use crate::hostile;
use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};

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
        let decoded =
            decode(&bytes, DecodeLimits::default()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
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
    let tiff = crate::hostile::tiff_orientation(orientation);
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

/// `png` with an `eXIf` chunk asking for `orientation`, inserted after IHDR.
fn png_with_orientation(png: &[u8], orientation: u16) -> Vec<u8> {
    let exif = hostile::tiff_orientation(orientation);
    let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
    let mut crc = flate2::Crc::new();
    crc.update(b"eXIf");
    crc.update(&exif);
    chunk.extend_from_slice(b"eXIf");
    chunk.extend_from_slice(&exif);
    chunk.extend_from_slice(&crc.sum().to_be_bytes());
    [&png[..33], &chunk, &png[33..]].concat()
}

#[test]
fn every_orientation_matches_the_image_crate_for_narrowed_and_widened_pixels() {
    let deep = DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(7, 4, |x, y| {
        Rgba([
            x as u16 * 9000,
            y as u16 * 15000,
            40000,
            20000 + x as u16 * 6000,
        ])
    }));
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(7, 4, |x, y| {
        image::Luma([(x * 30 + y * 5) as u8])
    }));
    for source in [deep, grey] {
        let png = encode(&source, ImageFormat::Png);
        for orientation in 1..=8u16 {
            let bytes = png_with_orientation(&png, orientation);
            let got = decode(&bytes, DecodeLimits::default()).unwrap().pixels;
            let mut want = image::load_from_memory(&bytes).unwrap();
            want.apply_orientation(
                image::metadata::Orientation::from_exif(orientation as u8).unwrap(),
            );
            let want = if want.color().has_alpha() {
                let mut flat = RgbImage::new(want.width(), want.height());
                for (dst, src) in flat.pixels_mut().zip(want.to_rgba8().pixels()) {
                    let a = u32::from(src[3]);
                    for c in 0..3 {
                        dst[c] = ((u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
                    }
                }
                flat
            } else {
                want.to_rgb8()
            };
            assert_eq!(got, want, "{:?}, orientation {orientation}", source.color());
        }
    }
}

/// A baseline CMYK JPEG as Adobe software writes it (APP14, transform 0, inverted inks),
/// one flat 8x8 block per entry of `blocks` side by side: each block only a DC term, so
/// the encoder fits here.
fn cmyk_jpeg(blocks: &[[u8; 4]]) -> Vec<u8> {
    let segment = |out: &mut Vec<u8>, marker: u8, data: &[u8]| {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(data);
    };
    let mut jpeg = vec![0xFF, 0xD8];
    segment(&mut jpeg, 0xEE, b"Adobe\0\x64\0\0\0\0\0"); // version 100, transform 0
    segment(&mut jpeg, 0xDB, &[[0u8].as_slice(), &[1; 64]].concat()); // all-ones table
    let mut sof = vec![8, 0, 8];
    sof.extend_from_slice(&(8 * blocks.len() as u16).to_be_bytes());
    sof.push(4);
    for id in 1..=4 {
        sof.extend_from_slice(&[id, 0x11, 0]);
    }
    segment(&mut jpeg, 0xC0, &sof);
    // DC: categories 0 to 11, four-bit codes equal to the category. AC: end-of-block, "0".
    let mut dc = vec![0x00, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    dc.extend(0..12u8);
    segment(&mut jpeg, 0xC4, &dc);
    segment(
        &mut jpeg,
        0xC4,
        &[0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    segment(&mut jpeg, 0xDA, &[4, 1, 0, 2, 0, 3, 0, 4, 0, 0, 63, 0]);
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |value: u32, n: u32| bits.extend((0..n).rev().map(|i| value >> i & 1 == 1));
    let mut previous = [0i32; 4];
    for block in blocks {
        for (c, &sample) in block.iter().enumerate() {
            let dc = (i32::from(sample) - 128) * 8;
            let diff = dc - previous[c];
            previous[c] = dc;
            let category = 32 - diff.unsigned_abs().leading_zeros();
            put(category, 4);
            let extra = if diff < 0 {
                diff + (1 << category) - 1
            } else {
                diff
            };
            put(extra as u32, category);
            put(0, 1);
        }
    }
    while !bits.len().is_multiple_of(8) {
        bits.push(true);
    }
    for byte in bits.chunks(8) {
        let byte = byte.iter().fold(0u8, |b, &bit| b << 1 | u8::from(bit));
        jpeg.push(byte);
        if byte == 0xFF {
            jpeg.push(0);
        }
    }
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    jpeg
}

#[test]
fn cmyk_jpeg_becomes_rgb8() {
    // Inverted inks: RGB is ink times black over 255.
    let jpeg = cmyk_jpeg(&[[255, 64, 64, 255], [64, 64, 255, 128]]);
    let decoded = decode(&jpeg, DecodeLimits::default()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (16, 8));
    let near = |got: [u8; 3], want: [u8; 3]| got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 2);
    let left = decoded.pixels.get_pixel(3, 4).0;
    let right = decoded.pixels.get_pixel(12, 4).0;
    assert!(near(left, [255, 64, 64]), "{left:?}");
    assert!(near(right, [32, 32, 128]), "{right:?}");
}

#[test]
fn memory_bombs_are_refused_with_what_they_would_need() {
    let small_budget = DecodeLimits {
        max_decode_bytes: 4 << 20,
        ..DecodeLimits::default()
    };
    let refusals = [
        (
            hostile::png_rgb16(1000, 1000),
            small_budget,
            "decoding this 1000x1000 16-bit RGB image needs 6.78 MiB, the limit is 4 MiB",
        ),
        (
            hostile::png_rgb16_rotated(1000, 700),
            small_budget,
            "decoding this 1000x700 16-bit RGB image, turned a quarter, needs 5.07 MiB, the limit is 4 MiB",
        ),
        (
            hostile::png_with_icc_profile(2 << 20),
            DecodeLimits::default(),
            "ICC profile inflates to more than 1 MiB, the limit for image metadata",
        ),
        (
            hostile::jpeg_claiming_size(60_000, 60_000),
            DecodeLimits::default(),
            "image is 60000x60000 (3600000000 pixels), the limit is 100000000",
        ),
        (
            hostile::gif_with_canvas(16_000, 16_000),
            DecodeLimits::default(),
            "image is 16000x16000 (256000000 pixels), the limit is 100000000",
        ),
        (
            hostile::webp_animated_canvas(1000, 1000),
            small_budget,
            "decoding this 1000x1000 8-bit RGBA image needs 17.21 MiB, the limit is 4 MiB",
        ),
    ];
    for (bytes, limits, message) in refusals {
        let err = decode(&bytes, limits).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::TooLarge, message)
        );
    }
    // A profile just under the cap is read as before.
    let icc = hostile::png_with_icc_profile(1 << 19);
    assert_eq!(decode(&icc, DecodeLimits::default()).unwrap().width(), 1);
}

#[test]
fn the_decoders_own_limits_stand_behind_the_budget() {
    let limits = decoder_limits(DecodeLimits::default());
    assert_eq!(limits.max_alloc, Some(DEFAULT_MAX_DECODE_BYTES));
    assert_eq!(limits.max_image_width, Some(MAX_SIDE));
    // A side over the maximum is refused by the decoder, whatever the pixel count.
    let err = decode(
        &hostile::png_rgb16(MAX_SIDE + 1, 1),
        DecodeLimits::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge, "{err}");
    assert!(err.message.starts_with("decoder limit"), "{err}");
}

// ---------------------------------------------------------------- scaled JPEG decoding

/// What the model needs: a 224-pixel crop of 0.875 of the shorter side.
fn covers_224(w: u32, h: u32) -> bool {
    f64::from(w.min(h)) * 0.875 >= 224.0
}

/// A sample photo enlarged to `w`x`h`: real content at a camera's size.
pub(super) fn photo(w: u32, h: u32) -> RgbImage {
    let coffee = crate::test_support::photos()
        .into_iter()
        .find(|p| p.full_size == (600, 400))
        .expect("coffee.png, 600x400, among the sample photos");
    image::imageops::resize(&coffee.pixels, w, h, image::imageops::FilterType::Triangle)
}

/// `image` as a JPEG by libjpeg-turbo, with `tune` setting the encoder's options.
pub(super) fn turbo_jpeg(
    image: &RgbImage,
    tune: impl FnOnce(&mut turbojpeg::Compressor),
) -> Vec<u8> {
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_quality(88).unwrap();
    tune(&mut c);
    c.compress_to_vec(turbojpeg::Image {
        pixels: image.as_raw().as_slice(),
        width: image.width() as usize,
        pitch: image.width() as usize * 3,
        height: image.height() as usize,
        format: turbojpeg::PixelFormat::RGB,
    })
    .unwrap()
}

/// `image` as a baseline JPEG with a restart marker after every MCU row, through
/// TurboJPEG's C API (the crate does not expose the restart interval).
fn jpeg_with_restart_markers(image: &RgbImage) -> Vec<u8> {
    use turbojpeg::raw;
    // SAFETY: a compressor handle used and freed here; the source is width*height*3
    // bytes of RGB, and the output buffer libjpeg-turbo allocates is copied out, then freed.
    unsafe {
        let handle = raw::tj3Init(raw::TJINIT_TJINIT_COMPRESS as i32);
        assert!(!handle.is_null());
        for (param, value) in [
            (raw::TJPARAM_TJPARAM_QUALITY, 88),
            (raw::TJPARAM_TJPARAM_SUBSAMP, raw::TJSAMP_TJSAMP_420),
            (raw::TJPARAM_TJPARAM_RESTARTROWS, 1),
        ] {
            assert_eq!(raw::tj3Set(handle, param as i32, value), 0);
        }
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut len: raw::size_t = 0;
        let rc = raw::tj3Compress8(
            handle,
            image.as_raw().as_ptr(),
            image.width() as i32,
            0,
            image.height() as i32,
            raw::TJPF_TJPF_RGB,
            &mut out,
            &mut len,
        );
        assert_eq!(rc, 0);
        let bytes = std::slice::from_raw_parts(out, len as usize).to_vec();
        raw::tj3Free(out.cast());
        raw::tj3Destroy(handle);
        bytes
    }
}

/// Mean absolute difference per sample between `scaled` and `full` shrunk to its size
/// by averaging: how far the IDCT's scaling strays from decoding everything.
fn mean_difference(scaled: &RgbImage, full: &RgbImage) -> f64 {
    let shrunk = image::imageops::thumbnail(full, scaled.width(), scaled.height());
    let total: u64 = scaled
        .as_raw()
        .iter()
        .zip(shrunk.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    total as f64 / scaled.as_raw().len() as f64
}

#[test]
fn a_camera_sized_jpeg_decodes_at_the_smallest_scale_covering_the_crop() {
    let limits = DecodeLimits::default();
    // (stored size, the size decoded): 1/8 leaves a 320x256 image whose 224-pixel crop
    // just covers 224; at 2400x1600, 1/8 would leave a 175-pixel crop, so 1/4; a small
    // image stays whole.
    for ((w, h), expect) in [
        ((2560, 2048), (320, 256)),
        ((2400, 1600), (600, 400)),
        ((1200, 800), (600, 400)),
        ((600, 400), (600, 400)),
        ((500, 300), (500, 300)),
    ] {
        let jpeg = turbo_jpeg(&photo(w, h), |_| {});
        let scaled = decode_to_fit(&jpeg, limits, &covers_224).unwrap();
        assert_eq!(scaled.full_size, (w, h), "reported at its stored size");
        assert_eq!(scaled.pixels.dimensions(), expect, "{w}x{h}");
        assert!(covers_224(scaled.width(), scaled.height()));
        let full = decode(&jpeg, limits).unwrap();
        assert_eq!(full.pixels.dimensions(), (w, h));
        let diff = mean_difference(&scaled.pixels, &full.pixels);
        assert!(diff < 3.0, "{w}x{h}: scaled decode strays {diff:.2} levels");
    }
}

#[test]
fn scaled_decoding_keeps_progressive_subsampled_grey_and_restart_marker_files() {
    let limits = DecodeLimits::default();
    let rgb = photo(2048, 1536);
    let cases: [(&str, Vec<u8>); 5] = [
        ("baseline 4:2:0", turbo_jpeg(&rgb, |_| {})),
        (
            "progressive",
            turbo_jpeg(&rgb, |c| c.set_progressive(true).unwrap()),
        ),
        (
            "4:4:4",
            turbo_jpeg(&rgb, |c| c.set_subsamp(turbojpeg::Subsamp::None).unwrap()),
        ),
        ("restart markers", jpeg_with_restart_markers(&rgb)),
        ("greyscale", grey_jpeg(&rgb)),
    ];
    for (what, jpeg) in cases {
        let scaled =
            decode_to_fit(&jpeg, limits, &covers_224).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(scaled.pixels.dimensions(), (512, 384), "{what}: 1/4 scale");
        let full = decode(&jpeg, limits).unwrap();
        let diff = mean_difference(&scaled.pixels, &full.pixels);
        assert!(diff < 3.0, "{what}: scaled decode strays {diff:.2} levels");
    }
    let scaled = decode_to_fit(&grey_jpeg(&rgb), limits, &covers_224).unwrap();
    assert!(
        scaled
            .pixels
            .pixels()
            .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]),
        "grey stays grey in RGB"
    );
}

fn grey_jpeg(rgb: &RgbImage) -> Vec<u8> {
    let grey = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Jpeg)
}

#[test]
fn a_quarter_turned_jpeg_is_scaled_by_its_upright_size() {
    let limits = DecodeLimits::default();
    // Stored 1600 wide, 2400 high; upright (a quarter turn) 2400x1600.
    let stored = image::imageops::rotate270(&photo(2400, 1600));
    let jpeg = with_exif_orientation(&turbo_jpeg(&stored, |_| {}), 6);
    let scaled = decode_to_fit(&jpeg, limits, &covers_224).unwrap();
    assert_eq!(scaled.full_size, (2400, 1600));
    assert_eq!(scaled.pixels.dimensions(), (600, 400), "upright at 1/4");
    let upright = decode(&jpeg, limits).unwrap();
    assert_eq!(upright.pixels.dimensions(), (2400, 1600));
    let diff = mean_difference(&scaled.pixels, &upright.pixels);
    assert!(diff < 3.0, "turned the same way: {diff:.2}");
    // A fit that only a tall image meets proves the sides were swapped before asking.
    let tall = |w: u32, h: u32| h > w;
    assert_eq!(
        decode_to_fit(&jpeg, limits, &tall).unwrap().full_size,
        (2400, 1600)
    );
}

#[test]
fn hostile_jpegs_end_as_errors_before_their_scans_are_decoded() {
    let limits = DecodeLimits::default();
    let progressive = turbo_jpeg(&photo(1600, 1200), |c| c.set_progressive(true).unwrap());
    // A progressive file with its last scan repeated past the limit.
    let last_scan = progressive
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .unwrap();
    let end = progressive.len() - 2; // the EOI
    let mut many = progressive[..end].to_vec();
    for _ in 0..MAX_JPEG_SCANS {
        many.extend_from_slice(&progressive[last_scan..end]);
    }
    many.extend_from_slice(&[0xFF, 0xD9]);
    let err = decode_to_fit(&many, limits, &covers_224).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge, "{err}");
    assert!(err.message.contains("scans"), "{err}");

    // Cut short, and corrupted in the middle of its entropy-coded data.
    let cut = &progressive[..progressive.len() * 2 / 3];
    assert_eq!(
        decode_to_fit(cut, limits, &covers_224).unwrap_err().kind,
        ErrorKind::Decode
    );
    let mut corrupt = turbo_jpeg(&photo(1600, 1200), |_| {});
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 64].fill(0xA5);
    let err = decode_to_fit(&corrupt, limits, &covers_224).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Decode, "{err}");
}
