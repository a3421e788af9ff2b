//! WebP images through libwebp, the format's reference decoder: a still image whole, an
//! animation's first frame composed on its canvas.
//!
//! The `image` crate's pure-Rust WebP decoder took 66 ms for a corpus WebP (about 7 MP)
//! where libwebp takes 27 on the same core: WebP was the one kind of file the Python
//! baseline decoded faster than tagfleet. libwebp is built from the source `libwebp-sys`
//! vendors and linked statically, so the binary carries it, as it does libjpeg-turbo.
//! The `image` crate still reads the header (size, colour type, EXIF orientation), which
//! the memory budget is reckoned from.
//!
//! Memory beyond the output: a lossy image's rows of macroblocks and alpha planes, a
//! lossless one's ARGB plane (the budget's five bytes a pixel; an animation's canvas and
//! its disposed copy besides), and a lossless bitstream's Huffman
//! tables, about 20 KB for each of up to 65,536 groups the bitstream declares, in one
//! block. Nothing the header shows bounds the group count: a crafted 17 MB file held
//! 1.25 GB in libwebp and 7.3 GB in the `image` crate's decoder. libwebp is built to
//! refuse any block over 320 MiB (`WEBP_MAX_ALLOCABLE_MEMORY`, .cargo/config.toml), so
//! such a file is an error record; up to about 16,000 groups still decode, the most a
//! crafted file can hold beyond the budget (real encoders write at most a few thousand).
//!
//! libwebp is C, reading tenants' bytes: the version linked (1.6.0, from `libwebp-sys`)
//! is past the lossless Huffman-table overflow of 2023 (fixed in 1.3.2), which a test
//! asserts, and the library is fuzzed continuously upstream. A file it rejects is an
//! error record, never retried with the other decoder.

use std::ffi::c_int;
use std::mem::MaybeUninit;

use libwebp_sys::{
    VP8StatusCode, WEBP_CSP_MODE, WebPAnimDecoderDelete, WebPAnimDecoderGetInfo,
    WebPAnimDecoderGetNext, WebPAnimDecoderNew, WebPAnimDecoderOptions, WebPAnimDecoderOptionsInit,
    WebPAnimInfo, WebPData, WebPDecode, WebPDecoderConfig, WebPFreeDecBuffer, WebPGetFeatures,
    WebPInitDecoderConfig, WebPRGBABuffer,
};
use tagfleet_contracts::{ErrorKind, ImageError};

/// Decodes the still WebP `bytes` into `out`: `width` x `height` pixels, RGBA8 when
/// `alpha`, else RGB8, rows packed, as the header read before said.
pub fn decode_into(
    bytes: &[u8],
    width: u32,
    height: u32,
    alpha: bool,
    out: &mut [u8],
) -> Result<(), ImageError> {
    let bpp = if alpha { 4 } else { 3 };
    let stride = width as usize * bpp;
    assert_eq!(
        out.len(),
        stride * height as usize,
        "an output buffer of the header's size"
    );
    let mut config = MaybeUninit::<WebPDecoderConfig>::zeroed();
    // SAFETY: `config` is zeroed memory of the right type, which the call initialises.
    if !unsafe { WebPInitDecoderConfig(config.as_mut_ptr()) } {
        return Err(ImageError::new(
            ErrorKind::Decode,
            "libwebp was built for another decoder interface",
        ));
    }
    // SAFETY: initialised by WebPInitDecoderConfig above.
    let mut config = unsafe { config.assume_init() };
    // SAFETY: libwebp reads `bytes.len()` bytes of `bytes` and writes `config.input`.
    let status = unsafe { WebPGetFeatures(bytes.as_ptr(), bytes.len(), &mut config.input) };
    status_ok(status)?;
    let features = &config.input;
    if features.has_animation != 0 {
        return Err(ImageError::new(
            ErrorKind::Unsupported,
            "an animated WebP here is a caller's bug: animations go to decode_first_frame",
        ));
    }
    same_size((width, height), (features.width, features.height))?;
    config.output.colorspace = if alpha {
        WEBP_CSP_MODE::MODE_RGBA
    } else {
        WEBP_CSP_MODE::MODE_RGB
    };
    // Decode straight into `out`, which libwebp never frees.
    config.output.is_external_memory = 1;
    config.output.u.RGBA = WebPRGBABuffer {
        rgba: out.as_mut_ptr(),
        stride: c_int::try_from(stride)
            .map_err(|_| ImageError::new(ErrorKind::TooLarge, "WebP row too long"))?,
        size: out.len(),
    };
    // SAFETY: libwebp reads `bytes` and writes at most `size` bytes of `out`, rows
    // `stride` apart, as the external buffer above describes.
    let status = unsafe { WebPDecode(bytes.as_ptr(), bytes.len(), &mut config) };
    // SAFETY: the buffer is external, so this frees only what libwebp may hold besides.
    unsafe { WebPFreeDecBuffer(&mut config.output) };
    status_ok(status)
}

/// Decodes the first frame of the animated WebP `bytes` as libwebp's animation decoder
/// composes it on the `width` x `height` canvas (transparent where the frame does not
/// cover it), into `out`: RGBA8, rows packed.
pub fn decode_first_frame(
    bytes: &[u8],
    width: u32,
    height: u32,
    out: &mut [u8],
) -> Result<(), ImageError> {
    assert_eq!(
        out.len(),
        width as usize * height as usize * 4,
        "an output buffer of the canvas's size"
    );
    let broken = || ImageError::new(ErrorKind::Decode, "animated WebP is corrupt or cut short");
    let mut options = MaybeUninit::<WebPAnimDecoderOptions>::zeroed();
    // SAFETY: zeroed memory of the right type, which the call initialises.
    if unsafe { WebPAnimDecoderOptionsInit(options.as_mut_ptr()) } == 0 {
        return Err(ImageError::new(
            ErrorKind::Decode,
            "libwebp was built for another demuxer interface",
        ));
    }
    // SAFETY: initialised above.
    let mut options = unsafe { options.assume_init() };
    options.color_mode = WEBP_CSP_MODE::MODE_RGBA;
    options.use_threads = 0;
    let data = WebPData {
        bytes: bytes.as_ptr(),
        size: bytes.len(),
    };
    // SAFETY: libwebp reads `data` (which outlives the decoder) and returns an owned
    // decoder or null; the guard deletes it on every path.
    let decoder = unsafe { WebPAnimDecoderNew(&data, &options) };
    if decoder.is_null() {
        return Err(broken());
    }
    struct Owned(*mut libwebp_sys::WebPAnimDecoder);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: created by WebPAnimDecoderNew, deleted once.
            unsafe { WebPAnimDecoderDelete(self.0) };
        }
    }
    let decoder = Owned(decoder);
    let mut info = MaybeUninit::<WebPAnimInfo>::zeroed();
    // SAFETY: a live decoder; `info` is written.
    if unsafe { WebPAnimDecoderGetInfo(decoder.0, info.as_mut_ptr()) } == 0 {
        return Err(broken());
    }
    // SAFETY: written by the call above.
    let info = unsafe { info.assume_init() };
    same_size((width, height), (info.canvas_width, info.canvas_height))?;
    let mut frame: *mut u8 = std::ptr::null_mut();
    let mut timestamp = 0;
    // SAFETY: a live decoder; on success `frame` points at its canvas, width*height*4
    // bytes owned by the decoder, valid until the next call or its deletion.
    if unsafe { WebPAnimDecoderGetNext(decoder.0, &mut frame, &mut timestamp) } == 0
        || frame.is_null()
    {
        return Err(broken());
    }
    // SAFETY: as above; copied out before the decoder is deleted.
    out.copy_from_slice(unsafe { std::slice::from_raw_parts(frame, out.len()) });
    Ok(())
}

/// Whether libwebp reads the size the `image` crate's header reader reported, which the
/// output buffer and the budget were made for.
fn same_size(told: (u32, u32), read: (impl Into<i64>, impl Into<i64>)) -> Result<(), ImageError> {
    let read = (read.0.into(), read.1.into());
    if (i64::from(told.0), i64::from(told.1)) == read {
        return Ok(());
    }
    Err(ImageError::new(
        ErrorKind::Decode,
        format!(
            "WebP header disagrees with itself: {}x{} and {}x{}",
            told.0, told.1, read.0, read.1
        ),
    ))
}

/// libwebp's status as an [`ImageError`]: its codes say what is wrong with the data,
/// never anything of the image's name.
fn status_ok(status: VP8StatusCode) -> Result<(), ImageError> {
    let (kind, message) = match status {
        VP8StatusCode::VP8_STATUS_OK => return Ok(()),
        VP8StatusCode::VP8_STATUS_NOT_ENOUGH_DATA => (ErrorKind::Decode, "WebP data is cut short"),
        VP8StatusCode::VP8_STATUS_BITSTREAM_ERROR => (ErrorKind::Decode, "WebP data is corrupt"),
        VP8StatusCode::VP8_STATUS_UNSUPPORTED_FEATURE => (
            ErrorKind::Unsupported,
            "WebP uses a feature libwebp does not decode",
        ),
        // Also what libwebp says when an alpha plane's header is corrupt; the output
        // already fits the budget, so the data is the likelier cause.
        VP8StatusCode::VP8_STATUS_OUT_OF_MEMORY => (
            ErrorKind::Decode,
            "libwebp could not set up a plane of this WebP (corrupt, or out of memory)",
        ),
        VP8StatusCode::VP8_STATUS_INVALID_PARAM
        | VP8StatusCode::VP8_STATUS_SUSPENDED
        | VP8StatusCode::VP8_STATUS_USER_ABORT => {
            (ErrorKind::Decode, "libwebp could not decode this WebP")
        }
    };
    Err(ImageError::new(kind, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageDecoder, RgbImage, RgbaImage};
    use std::io::Cursor;

    /// The sample photos, encoded by libwebp: lossy RGB, lossy with alpha, lossless.
    fn encoded(rgb: &RgbImage, how: &str) -> Vec<u8> {
        let (w, h) = rgb.dimensions();
        let mut rgba = DynamicImage::ImageRgb8(rgb.clone()).to_rgba8();
        // A transparent band across the top, so that alpha means something.
        for (_, y, px) in rgba.enumerate_pixels_mut() {
            if y < h / 4 {
                px.0[3] = (y * 255 / (h / 4).max(1)) as u8;
            }
        }
        let mut out = std::ptr::null_mut();
        // SAFETY: libwebp reads w*h pixels at the given stride and allocates `out`.
        let len = unsafe {
            match how {
                "lossy" => libwebp_sys::WebPEncodeRGB(
                    rgb.as_ptr(),
                    w as c_int,
                    h as c_int,
                    (w * 3) as c_int,
                    80.0,
                    &mut out,
                ),
                "lossy alpha" => libwebp_sys::WebPEncodeRGBA(
                    rgba.as_ptr(),
                    w as c_int,
                    h as c_int,
                    (w * 4) as c_int,
                    80.0,
                    &mut out,
                ),
                "lossless" => libwebp_sys::WebPEncodeLosslessRGB(
                    rgb.as_ptr(),
                    w as c_int,
                    h as c_int,
                    (w * 3) as c_int,
                    &mut out,
                ),
                _ => unreachable!(),
            }
        };
        assert!(len > 0, "{how}: libwebp encodes");
        // SAFETY: `out` holds `len` bytes allocated by libwebp, freed by it after the copy.
        let bytes = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
        unsafe { libwebp_sys::WebPFree(out.cast()) };
        bytes
    }

    fn with_image_crate(bytes: &[u8]) -> (Vec<u8>, bool) {
        let decoder = image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).unwrap();
        let alpha = decoder.color_type().has_alpha();
        let mut buf = vec![0u8; decoder.total_bytes() as usize];
        decoder.read_image(&mut buf).unwrap();
        (buf, alpha)
    }

    /// On real photos, libwebp gives exactly the pixels the `image` crate's decoder
    /// gave, lossy, lossy with alpha and lossless: switching decoders changes no result.
    #[test]
    fn libwebp_gives_the_pixels_of_the_image_crate_on_real_photos() {
        let photos = crate::test_support::photos();
        for (i, photo) in photos.iter().enumerate() {
            let rgb = &photo.pixels;
            let (w, h) = rgb.dimensions();
            for how in ["lossy", "lossy alpha", "lossless"] {
                let bytes = encoded(rgb, how);
                let (expected, alpha) = with_image_crate(&bytes);
                assert_eq!(alpha, how == "lossy alpha", "photo {i} {how}");
                let mut got = vec![0u8; expected.len()];
                decode_into(&bytes, w, h, alpha, &mut got).unwrap();
                let differing = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
                assert_eq!(differing, 0, "photo {i} {how}: {differing} bytes differ");
                if how == "lossy" {
                    // Really decoded, not passed through.
                    assert_ne!(&got[..], &rgb.as_raw()[..], "photo {i} {how}");
                }
            }
        }
    }

    /// A lossless bitstream may declare a Huffman group for every 4x4 block, up to
    /// 65,536, and libwebp allocates the groups' tables in one block before decoding a
    /// pixel: 1.3 GB for this 295 KB file. Built with the cap in .cargo/config.toml,
    /// libwebp refuses the block and the file is an error; the same construction with
    /// fewer groups decodes, so it is the size that is refused, not the bitstream.
    #[test]
    fn a_file_declaring_65536_huffman_groups_is_refused_not_allocated() {
        let bomb = crate::hostile::webp_huffman_groups(1024);
        assert!(bomb.len() < 400_000, "{} bytes", bomb.len());
        let mut out = vec![0u8; 1024 * 1024 * 3];
        let err = decode_into(&bomb, 1024, 1024, false, &mut out).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode, "{err}");
        // Through the public decode too: an error record, not 1.3 GB.
        let err = crate::decode(&bomb, Default::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode, "{err}");
        // 4,096 groups (80 MB of tables) decode, to black.
        let fewer = crate::hostile::webp_huffman_groups(256);
        let decoded = crate::decode(&fewer, Default::default()).unwrap();
        assert_eq!(decoded.pixels.dimensions(), (256, 256));
        assert!(decoded.pixels.as_raw().iter().all(|&v| v == 0));
        // The same as an animation's frame: refused too (the `image` crate's decoder,
        // which animations went to before, held 7.3 GB for such a file), and the smaller
        // one decodes.
        let animated = crate::hostile::webp_animation(&bomb, (1024, 1024), (1024, 1024));
        let err = crate::decode(&animated, Default::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode, "{err}");
        let animated = crate::hostile::webp_animation(&fewer, (256, 256), (256, 256));
        let decoded = crate::decode(&animated, Default::default()).unwrap();
        assert_eq!(decoded.pixels.dimensions(), (256, 256));
    }

    /// An animation's first frame is composed on its canvas: where the frame does not
    /// reach, the canvas is transparent, flattened onto white like any alpha.
    #[test]
    fn an_animation_gives_its_first_frame_on_its_canvas() {
        let red = crate::hostile::webp_animated_canvas(30, 20);
        let decoded = crate::decode(&red, Default::default()).unwrap();
        assert_eq!(decoded.pixels.dimensions(), (30, 20));
        assert_eq!(decoded.pixels.get_pixel(0, 0).0, [200, 10, 10]);
        assert_eq!(decoded.pixels.get_pixel(29, 19).0, [255, 255, 255]);
    }

    #[test]
    fn the_linked_libwebp_has_the_lossless_huffman_fix() {
        // SAFETY: a plain getter.
        let version = unsafe { libwebp_sys::WebPGetDecoderVersion() };
        assert!(
            version >= 0x01_03_02,
            "libwebp {version:#08x} predates 1.3.2"
        );
    }

    #[test]
    fn broken_files_are_errors_that_say_what_is_wrong() {
        let rgb = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let bytes = encoded(&rgb, "lossy");
        let mut out = vec![0u8; 64 * 48 * 3];
        // Cut in the middle of the compressed data.
        let err = decode_into(&bytes[..bytes.len() / 2], 64, 48, false, &mut out).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode);
        assert_eq!(err.message, "WebP data is cut short");
        // The header says another size than the one the caller was told.
        let err = decode_into(&bytes, 48, 64, false, &mut out).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode);
        assert!(err.message.contains("48x64 and 64x48"), "{err}");
        // Not WebP at all.
        let err = decode_into(&[0u8; 64], 64, 48, false, &mut out).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode);
        // An alpha plane with a compression method out of range: libwebp reports it as out
        // of memory; it is the data.
        let mut alpha = encoded(&rgb, "lossy alpha");
        let at = alpha.windows(4).position(|w| w == b"ALPH").unwrap();
        alpha[at + 8] = 0x02;
        let mut rgba = vec![0u8; 64 * 48 * 4];
        let err = decode_into(&alpha, 64, 48, true, &mut rgba).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode, "{err}");
        // An RGBA buffer for an image the caller takes as RGBA: fine, alpha comes along.
        let mut rgba = vec![0u8; 64 * 48 * 4];
        decode_into(&bytes, 64, 48, true, &mut rgba).unwrap();
        assert!(rgba.chunks(4).all(|px| px[3] == 255), "an opaque image");
        let _ = RgbaImage::from_raw(64, 48, rgba).unwrap();
    }
}
