//! Decode memory, measured: a counting allocator records the most this thread holds while
//! an image is decoded. Memory bombs are refused before their pixels are allocated, and
//! for real decodes the cost reckoned from the header is never below what was held.
//!
//! A test binary of its own, so its allocator counts nothing but these tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};
use tagfleet_contracts::ErrorKind;
use tagfleet_models::{DecodeLimits, decode, decode_cost, hostile};

struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread, and the most since a reset.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counting only
// touches const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && new_size <= layout.size() {
            // Shrinking happens in place (glibc splits the block or remaps its pages).
            note(new_size as isize - layout.size() as isize);
        } else if !p.is_null() {
            // Growing may move the block, holding both for a moment.
            note(new_size as isize);
            note(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` returns and the most it held at once beyond what was held before, in bytes.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    (out, (PEAK.with(Cell::get) - start).max(0) as u64)
}

const MIB: u64 = 1 << 20;

#[test]
fn memory_bombs_are_refused_before_their_pixels_are_allocated() {
    let bombs = [
        ("16-bit PNG", hostile::png_rgb16(10_000, 10_000)),
        (
            "16-bit PNG turned",
            hostile::png_rgb16_rotated(10_000, 10_000),
        ),
        ("PNG ICC profile", hostile::png_with_icc_profile(1 << 30)),
        (
            "JPEG claiming 60000x60000",
            hostile::jpeg_claiming_size(60_000, 60_000),
        ),
        ("GIF canvas", hostile::gif_with_canvas(16_000, 16_000)),
        (
            "animated WebP canvas",
            hostile::webp_animated_canvas(10_000, 10_000),
        ),
    ];
    for (what, bytes) in &bombs {
        let (result, peak) = peak_of(|| decode(bytes, DecodeLimits::default()));
        let err = result.expect_err(what);
        assert_eq!(err.kind, ErrorKind::TooLarge, "{what}: {err}");
        assert!(err.message.contains("limit"), "{what}: {err}");
        assert!(
            peak < 4 * MIB,
            "{what}: {} KiB held before refusing",
            peak >> 10
        );
    }
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A PNG with an `eXIf` chunk asking for `orientation`, inserted after IHDR.
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
fn the_reckoned_cost_covers_what_decoding_holds() {
    let (w, h) = (800u32, 600u32);
    let rgb = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    let deep = ImageBuffer::<Rgba<u16>, _>::from_fn(w, h, |x, y| {
        Rgba([
            (x * 50) as u16,
            (y * 70) as u16,
            9000,
            (x * y % 65535) as u16,
        ])
    });
    let grey = ImageBuffer::<Luma<u8>, _>::from_fn(w, h, |x, y| Luma([((x + y) % 256) as u8]));
    let grey_alpha = ImageBuffer::<LumaA<u8>, _>::from_fn(w, h, |x, y| {
        LumaA([(x % 256) as u8, (y % 256) as u8])
    });
    let rgba = DynamicImage::ImageRgb8(rgb.clone()).into_rgba8();
    // Few colours: the GIF encoder takes them as its palette instead of quantising.
    let flags = image::RgbaImage::from_fn(w, h, |x, y| {
        Rgba([(x / 100 * 30) as u8, (y / 100 * 40) as u8, 90, 255])
    });
    let images = [
        (
            "JPEG",
            encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg),
        ),
        (
            "PNG RGB8",
            encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png),
        ),
        (
            "PNG RGBA16",
            encode(&DynamicImage::ImageRgba16(deep.clone()), ImageFormat::Png),
        ),
        (
            "PNG RGBA16 turned",
            png_with_orientation(
                &encode(&DynamicImage::ImageRgba16(deep), ImageFormat::Png),
                6,
            ),
        ),
        (
            "PNG RGB8 turned",
            png_with_orientation(
                &encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png),
                8,
            ),
        ),
        (
            "PNG grey",
            encode(&DynamicImage::ImageLuma8(grey.clone()), ImageFormat::Png),
        ),
        (
            "PNG grey and alpha",
            encode(&DynamicImage::ImageLumaA8(grey_alpha), ImageFormat::Png),
        ),
        (
            "JPEG grey",
            encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Jpeg),
        ),
        (
            "GIF",
            encode(&DynamicImage::ImageRgba8(flags), ImageFormat::Gif),
        ),
        (
            "WebP lossless",
            encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::WebP),
        ),
        (
            "WebP lossless RGBA",
            encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::WebP),
        ),
        (
            "TIFF",
            encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Tiff),
        ),
        (
            "BMP",
            encode(&DynamicImage::ImageRgb8(rgb), ImageFormat::Bmp),
        ),
    ];
    for (what, bytes) in &images {
        let reckoned = decode_cost(bytes, DecodeLimits::default()).expect(what);
        let (decoded, held) = peak_of(|| decode(bytes, DecodeLimits::default()));
        let decoded = decoded.expect(what);
        let output = u64::from(decoded.width()) * u64::from(decoded.height()) * 3;
        assert!(held >= output, "{what}: the counter sees the output");
        // What is held beyond the reckoning: the decoders' small state (tables, windows).
        assert!(
            held <= reckoned + MIB,
            "{what}: held {} KiB, reckoned {} KiB",
            held >> 10,
            reckoned >> 10
        );
    }
}

#[test]
fn a_budget_just_under_the_cost_refuses_and_one_at_it_decodes() {
    // Large enough for the quarter turn's copy to be the costliest moment.
    let rgb = RgbImage::from_fn(1000, 800, |x, y| Rgb([x as u8, y as u8, 7]));
    let png = png_with_orientation(&encode(&DynamicImage::ImageRgb8(rgb), ImageFormat::Png), 6);
    let cost = decode_cost(&png, DecodeLimits::default()).unwrap();
    assert_eq!(cost, 2 * 1000 * 800 * 3, "the output and its turned copy");
    let limits = |max_decode_bytes| DecodeLimits {
        max_decode_bytes,
        ..DecodeLimits::default()
    };
    let decoded = decode(&png, limits(cost)).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (800, 1000));
    let err = decode(&png, limits(cost - 1)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge);
    assert!(
        err.message
            .starts_with("decoding this 1000x800 8-bit RGB image, turned a quarter, needs"),
        "{err}"
    );
}
