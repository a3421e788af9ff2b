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
