//! Pixels to the model's input tensor: centre crop, resize (SIMD, via fast_image_resize),
//! normalise, HWC to CHW.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::decode::Decoded;
use crate::spec::InputSpec;

/// A crop of an image: (left, top, width, height) in source pixels, as
/// [`Preprocessor::crop_box`] gives it.
pub type Crop = (f64, f64, f64, f64);

/// How much the resize must still reduce a crop decoded at a reduced DCT scale. The
/// IDCT's scaling filters differently from the full-size path's antialiased resize (at
/// 1/8 each pixel is the mean of an 8x8 block); leaving the resize at least a 1.5x
/// reduction keeps the model's view close to the full-size one. Measured on the bench
/// corpus (models/tests/scaled_accuracy.rs): top-1 agreement with the full-size decode
/// 91.0% when the crop only has to cover the input size, 95.5% at 1.25, 98.0% at 1.5
/// and 2.
pub const MIN_REDUCTION: f64 = 1.5;

/// Prepares images for one model. Holds the resizer's scratch buffers and the
/// normalisation table, so one per thread.
pub struct Preprocessor {
    input: InputSpec,
    resizer: Resizer,
    /// `lut[c][v]` = (v - mean[c]) / std[c]: normalising is one lookup a value.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    pub fn new(input: &InputSpec) -> Self {
        let mut lut = [[0.0; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 - input.mean[c]) / input.std[c];
            }
        }
        Self {
            input: input.clone(),
            resizer: Resizer::new(),
            lut,
        }
    }

    /// Floats one image takes in the tensor.
    pub fn tensor_len(&self) -> usize {
        3 * self.input.width as usize * self.input.height as usize
    }

    /// Whether a `width`x`height` image holds enough pixels for the model: its crop is at
    /// least [`MIN_REDUCTION`] times the model's input size on both sides. What a scaled
    /// decode ([`crate::decode_to_fit`]) must keep.
    pub fn covers(&self, width: u32, height: u32) -> bool {
        let (_, _, cw, ch) = self.crop_box(width, height);
        cw >= MIN_REDUCTION * f64::from(self.input.width)
            && ch >= MIN_REDUCTION * f64::from(self.input.height)
    }

    /// The crop taken from a `width`x`height` image: the largest centred rectangle of the
    /// model's aspect ratio, scaled by `crop_fraction`. Returns (left, top, width, height).
    pub fn crop_box(&self, width: u32, height: u32) -> Crop {
        let (w, h) = (f64::from(width), f64::from(height));
        let target_aspect = f64::from(self.input.width) / f64::from(self.input.height);
        let (mut cw, mut ch) = if w / h > target_aspect {
            (h * target_aspect, h)
        } else {
            (w, w / target_aspect)
        };
        let fraction = f64::from(self.input.crop_fraction);
        cw *= fraction;
        ch *= fraction;
        ((w - cw) / 2.0, (h - ch) / 2.0, cw, ch)
    }

    /// The part of `image` that resizing `crop` reads, and the crop within it: the crop
    /// and its filter's support (a source pixel within one downscale factor of the crop's
    /// edge weighs in), plus a pixel of margin. The pixels that cross to a GPU, or wait in
    /// the pixel budget, are then the crop's rather than the whole frame's: a 4:3 photo
    /// decoded at 1/4 keeps a little over half its bytes. An image that is all window is
    /// returned as it is, without a copy.
    pub fn window(&self, image: Decoded, crop: Crop) -> (Decoded, Crop) {
        let (left, top, cw, ch) = crop;
        let support = |extent: f64, out: u32| (extent / f64::from(out)).max(1.0) + 1.0;
        let (sx, sy) = (
            support(cw, self.input.width),
            support(ch, self.input.height),
        );
        let span = |start: f64, extent: f64, support: f64, size: u32| {
            let first = (start - support).floor().max(0.0) as u32;
            let end = ((start + extent + support).ceil() as u32).min(size);
            (first, end.max(first))
        };
        let (x0, x1) = span(left, cw, sx, image.width());
        let (y0, y1) = span(top, ch, sy, image.height());
        if (x0, y0, x1, y1) == (0, 0, image.width(), image.height()) {
            return (image, crop);
        }
        // Row by row: whole rows of the window are contiguous in the frame.
        let stride = image.width() as usize * 3;
        let (from, to) = (x0 as usize * 3, x1 as usize * 3);
        let mut rows = Vec::with_capacity((to - from) * (y1 - y0) as usize);
        for row in image
            .pixels
            .as_raw()
            .chunks_exact(stride)
            .take(y1 as usize)
            .skip(y0 as usize)
        {
            rows.extend_from_slice(&row[from..to]);
        }
        let pixels =
            image::RgbImage::from_raw(x1 - x0, y1 - y0, rows).expect("three bytes a pixel");
        let window = Decoded {
            pixels,
            full_size: image.full_size,
        };
        let crop = (left - f64::from(x0), top - f64::from(y0), cw, ch);
        (window, crop)
    }

    /// What the decode threads hand to an executor that preprocesses (on its GPU): the
    /// crop's [`window`](Self::window), box-reduced by the largest whole factor after
    /// which the crop still covers [`MIN_REDUCTION`] times the input. A JPEG's DCT
    /// scaling already leaves its crop under twice that; this does the same for what
    /// the IDCT cannot scale (PNG, WebP, a JPEG past 1/8), so that no image crosses to a
    /// GPU at more than about 2.3 times its float tensor's bytes (a full-size 12 MP
    /// PNG's window is 9 times). An image with nothing to spare is only windowed.
    pub fn handover(&mut self, image: Decoded, crop: Crop) -> (Decoded, Crop) {
        let (window, crop) = self.window(image, crop);
        let (left, top, cw, ch) = crop;
        let spare = (cw / f64::from(self.input.width)).min(ch / f64::from(self.input.height))
            / MIN_REDUCTION;
        let factor = spare.floor() as u32;
        if factor < 2 {
            return (window, crop);
        }
        let (w, h) = (window.width(), window.height());
        let (rw, rh) = ((w / factor).max(1), (h / factor).max(1));
        let src = ImageRef::new(w, h, window.pixels.as_raw(), PixelType::U8x3)
            .expect("an RgbImage buffer holds width*height*3 bytes");
        let mut dst = Image::new(rw, rh, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
        self.resizer
            .resize(&src, &mut dst, &options)
            .expect("pixel types match");
        let pixels =
            image::RgbImage::from_raw(rw, rh, dst.into_vec()).expect("three bytes a pixel");
        let (sx, sy) = (f64::from(rw) / f64::from(w), f64::from(rh) / f64::from(h));
        let reduced = Decoded {
            pixels,
            full_size: window.full_size,
        };
        (reduced, (left * sx, top * sy, cw * sx, ch * sy))
    }

    /// Resizes `crop` of `image` to the model's size: RGB8, HWC.
    pub fn resize(&mut self, image: &Decoded, crop: Crop) -> Vec<u8> {
        let (w, h) = (image.width(), image.height());
        let src = ImageRef::new(w, h, image.pixels.as_raw(), PixelType::U8x3)
            .expect("an RgbImage buffer holds width*height*3 bytes");
        let mut dst = Image::new(self.input.width, self.input.height, PixelType::U8x3);
        let (left, top, cw, ch) = crop;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(left, top, cw, ch);
        self.resizer
            .resize(&src, &mut dst, &options)
            .expect("pixel types match and the crop is inside the image");
        dst.into_vec()
    }

    /// Normalises resized RGB8 HWC pixels into `out` (CHW floats, [`Self::len`] long).
    pub fn normalise(&self, rgb: &[u8], out: &mut [f32]) {
        let plane = self.input.width as usize * self.input.height as usize;
        assert_eq!(rgb.len(), plane * 3, "resized image has the model's size");
        assert_eq!(out.len(), plane * 3, "output slot has the model's size");
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            r[i] = self.lut[0][px[0] as usize];
            g[i] = self.lut[1][px[1] as usize];
            b[i] = self.lut[2][px[2] as usize];
        }
    }

    /// Crop ([`Self::crop_box`]), resize and normalise one image into `out`.
    pub fn run(&mut self, image: &Decoded, out: &mut [f32]) {
        let crop = self.crop_box(image.width(), image.height());
        self.run_crop(image, crop, out);
    }

    /// Resize `crop` of one image and normalise it into `out`.
    pub fn run_crop(&mut self, image: &Decoded, crop: Crop, out: &mut [f32]) {
        let rgb = self.resize(image, crop);
        self.normalise(&rgb, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn spec(w: u32, h: u32, crop: f32) -> InputSpec {
        InputSpec {
            name: "input".into(),
            width: w,
            height: h,
            crop_fraction: crop,
            mean: [127.0; 3],
            std: [128.0; 3],
        }
    }

    #[test]
    fn crop_box_is_centred_and_keeps_the_aspect() {
        let p = Preprocessor::new(&spec(224, 224, 0.875));
        let (l, t, w, h) = p.crop_box(400, 200);
        assert_eq!((w, h), (175.0, 175.0));
        assert_eq!((l, t), (112.5, 12.5));
        let wide = Preprocessor::new(&spec(200, 100, 1.0));
        assert_eq!(wide.crop_box(100, 100), (0.0, 25.0, 100.0, 50.0));
    }

    #[test]
    fn normalisation_and_channel_planes() {
        let mut p = Preprocessor::new(&spec(4, 4, 1.0));
        let img = Decoded::full(RgbImage::from_pixel(8, 8, image::Rgb([255, 127, 0])));
        let mut out = vec![0.0; p.tensor_len()];
        p.run(&img, &mut out);
        assert!(
            out[..16].iter().all(|v| (*v - 1.0).abs() < 1e-6),
            "R plane: {:?}",
            &out[..16]
        );
        assert!(out[16..32].iter().all(|v| v.abs() < 1e-6), "G plane");
        assert!(
            out[32..].iter().all(|v| (*v + 127.0 / 128.0).abs() < 1e-6),
            "B plane"
        );
    }

    /// The window holds every pixel the resize reads: the tensor is the same from it as
    /// from the whole frame, on the real photos and on thin and tall frames, while it
    /// holds no more than the crop and its filter's margin.
    #[test]
    fn the_window_gives_the_tensor_of_the_whole_frame() {
        let model = crate::test_support::model().input;
        let mut p = Preprocessor::new(&model);
        let mut frames = crate::test_support::photos();
        frames.push(Decoded::full(RgbImage::from_fn(3000, 400, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
        })));
        frames.push(Decoded::full(RgbImage::from_fn(300, 2000, |x, y| {
            image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 90])
        })));
        for frame in frames {
            let crop = p.crop_box(frame.width(), frame.height());
            let mut whole = vec![0.0; p.tensor_len()];
            p.run_crop(&frame, crop, &mut whole);
            let (w, h) = (frame.width(), frame.height());
            let (window, inner) = p.window(frame.clone(), crop);
            let mut cut = vec![0.0; p.tensor_len()];
            p.run_crop(&window, inner, &mut cut);
            assert_eq!(whole, cut, "{w}x{h}: the CPU resize differs");
            let mut reference_whole = vec![0.0; p.tensor_len()];
            let mut reference_cut = vec![0.0; p.tensor_len()];
            crate::gpu_preprocess::reference(&frame, crop, &model, &mut reference_whole);
            crate::gpu_preprocess::reference(&window, inner, &model, &mut reference_cut);
            let worst = reference_whole
                .iter()
                .zip(&reference_cut)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{w}x{h}: the kernel's arithmetic moves by {worst}"
            );
            let margin = |extent: f64, out: u32| 2.0 * ((extent / f64::from(out)).max(1.0) + 2.0);
            let (_, _, cw, ch) = crop;
            assert!(
                f64::from(window.width()) <= cw + margin(cw, model.width),
                "{w}x{h}"
            );
            assert!(
                f64::from(window.height()) <= ch + margin(ch, model.height),
                "{w}x{h}"
            );
            assert_eq!(window.full_size, frame.full_size);
        }
    }

    /// What crosses to a GPU stays near the tensor's size however large the frame, and
    /// the model sees about what it would from the whole frame: on the sample photos
    /// blown up to camera sizes (as full-size PNGs arrive), within the kind of difference
    /// DCT scaling makes, which models/tests/scaled_accuracy.rs bounds on real tags.
    #[test]
    fn the_handover_of_a_large_frame_is_reduced_and_sees_the_same() {
        let model = crate::test_support::model().input;
        let mut p = Preprocessor::new(&model);
        let tensor_bytes = (p.tensor_len() * std::mem::size_of::<f32>()) as f64;
        for (i, photo) in crate::test_support::photos().into_iter().enumerate() {
            for scale in [1u32, 6] {
                let (w, h) = (photo.width() * scale, photo.height() * scale);
                // Blown up in fast_image_resize (optimised even in test builds).
                let src = ImageRef::new(
                    photo.width(),
                    photo.height(),
                    photo.pixels.as_raw(),
                    PixelType::U8x3,
                )
                .unwrap();
                let mut dst = Image::new(w, h, PixelType::U8x3);
                let nearest = ResizeOptions::new().resize_alg(ResizeAlg::Nearest);
                Resizer::new().resize(&src, &mut dst, &nearest).unwrap();
                let frame = Decoded::full(RgbImage::from_raw(w, h, dst.into_vec()).unwrap());
                let crop = p.crop_box(w, h);
                let mut whole = vec![0.0; p.tensor_len()];
                p.run_crop(&frame, crop, &mut whole);
                let (window, _) = p.window(frame.clone(), crop);
                let (handed, inner) = p.handover(frame.clone(), crop);
                let bytes = handed.pixels.as_raw().len() as f64;
                let (_, _, cw, ch) = crop;
                let coverage = (cw / f64::from(model.width)).min(ch / f64::from(model.height));
                if coverage < 2.0 * MIN_REDUCTION {
                    assert_eq!(
                        handed.pixels.dimensions(),
                        window.pixels.dimensions(),
                        "photo {i} x{scale}: nothing to spare, only windowed"
                    );
                } else {
                    assert!(
                        bytes <= 2.4 * tensor_bytes,
                        "photo {i} x{scale}: {:.2} x the tensor",
                        bytes / tensor_bytes
                    );
                }
                assert_eq!(handed.full_size, frame.full_size);
                let mut seen = vec![0.0; p.tensor_len()];
                p.run_crop(&handed, inner, &mut seen);
                let n = seen.len() as f32;
                let mean = whole
                    .iter()
                    .zip(&seen)
                    .map(|(a, b)| (a - b).abs())
                    .sum::<f32>()
                    / n;
                // Normalised values span about 4: 0.015 is under 0.4% of it (the sample
                // photos move by 0.002 to 0.008).
                assert!(mean < 0.015, "photo {i} x{scale}: mean difference {mean}");
            }
        }
    }

    #[test]
    fn resize_keeps_the_crop_not_the_border() {
        // A white frame around a black centre: the 50% centre crop sees only black.
        let img = RgbImage::from_fn(100, 100, |x, y| {
            let inside = (20..80).contains(&x) && (20..80).contains(&y);
            image::Rgb(if inside { [0, 0, 0] } else { [255, 255, 255] })
        });
        let mut p = Preprocessor::new(&spec(10, 10, 0.5));
        let rgb = p.resize(&Decoded::full(img), p.crop_box(100, 100));
        assert!(rgb.iter().all(|v| *v == 0), "{rgb:?}");
    }
}
