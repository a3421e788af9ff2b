//! Preprocessing on the GPU: decoded pixels go to the device as uint8 (a quarter of the
//! bytes of the float tensor) and one CUDA kernel, compiled by NVRTC at start-up, does
//! the centre crop, the resize, the normalisation and HWC to CHW.
//!
//! The resize is the same antialiased bilinear convolution as the CPU path (Pillow's
//! resampling, which `fast_image_resize` implements): per output pixel, a window of
//! source pixels around its centre, weighted by a triangle stretched by the downscale
//! factor. [`reference`] computes exactly the kernel's arithmetic on the CPU, in the same
//! order and in f32, so the two can be compared to 1e-5; the kernel is compiled with
//! `--fmad=false` so the GPU does not fuse what the CPU computes in two steps.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::decode::Decoded;
use crate::preprocess::Crop;
use crate::spec::InputSpec;

/// The kernel: one thread per output pixel of one image.
pub const KERNEL_SOURCE: &str = r#"
extern "C" __global__ void crop_resize_normalise(
    const unsigned char* src, int src_w, int src_h,
    float left, float top, float crop_w, float crop_h,
    int out_w, int out_h,
    float mean_r, float mean_g, float mean_b,
    float std_r, float std_g, float std_b,
    float* out)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;

    float scale_x = crop_w / (float)out_w;
    float scale_y = crop_h / (float)out_h;
    float fs_x = scale_x < 1.0f ? 1.0f : scale_x;
    float fs_y = scale_y < 1.0f ? 1.0f : scale_y;
    float inv_x = 1.0f / fs_x;
    float inv_y = 1.0f / fs_y;
    float center_x = left + ((float)x + 0.5f) * scale_x;
    float center_y = top + ((float)y + 0.5f) * scale_y;
    int x0 = (int)(center_x - fs_x + 0.5f); if (x0 < 0) x0 = 0;
    int x1 = (int)(center_x + fs_x + 0.5f); if (x1 > src_w) x1 = src_w;
    int y0 = (int)(center_y - fs_y + 0.5f); if (y0 < 0) y0 = 0;
    int y1 = (int)(center_y + fs_y + 0.5f); if (y1 > src_h) y1 = src_h;

    float sum_x = 0.0f;
    for (int i = x0; i < x1; i++) {
        float d = ((float)i - center_x + 0.5f) * inv_x;
        float w = 1.0f - fabsf(d);
        if (w > 0.0f) sum_x += w;
    }
    float sum_y = 0.0f;
    float r = 0.0f, g = 0.0f, b = 0.0f;
    for (int j = y0; j < y1; j++) {
        float dy = ((float)j - center_y + 0.5f) * inv_y;
        float wy = 1.0f - fabsf(dy);
        if (wy <= 0.0f) continue;
        sum_y += wy;
        float rr = 0.0f, gg = 0.0f, bb = 0.0f;
        const unsigned char* row = src + (size_t)j * (size_t)src_w * 3;
        for (int i = x0; i < x1; i++) {
            float d = ((float)i - center_x + 0.5f) * inv_x;
            float w = 1.0f - fabsf(d);
            if (w <= 0.0f) continue;
            rr += (float)row[i * 3] * w;
            gg += (float)row[i * 3 + 1] * w;
            bb += (float)row[i * 3 + 2] * w;
        }
        r += rr * wy;
        g += gg * wy;
        b += bb * wy;
    }
    float norm = sum_x * sum_y;
    int plane = out_w * out_h;
    int at = y * out_w + x;
    out[at] = (r / norm - mean_r) / std_r;
    out[plane + at] = (g / norm - mean_g) / std_g;
    out[2 * plane + at] = (b / norm - mean_b) / std_b;
}
"#;

/// The kernel's name in [`KERNEL_SOURCE`].
pub const KERNEL_NAME: &str = "crop_resize_normalise";

/// The kernel's arithmetic on the CPU: crop `(left, top, width, height)` of `image`,
/// resize to the model's size, normalise, CHW into `out`.
pub fn reference(image: &Decoded, crop: Crop, input: &InputSpec, out: &mut [f32]) {
    let (src_w, src_h) = (image.width() as i32, image.height() as i32);
    let src = image.pixels.as_raw();
    let (out_w, out_h) = (input.width as i32, input.height as i32);
    let (left, top, crop_w, crop_h) = (crop.0 as f32, crop.1 as f32, crop.2 as f32, crop.3 as f32);
    let plane = (out_w * out_h) as usize;
    assert_eq!(out.len(), plane * 3, "output slot has the model's size");
    let scale_x = crop_w / out_w as f32;
    let scale_y = crop_h / out_h as f32;
    let fs_x = if scale_x < 1.0 { 1.0 } else { scale_x };
    let fs_y = if scale_y < 1.0 { 1.0 } else { scale_y };
    let (inv_x, inv_y) = (1.0 / fs_x, 1.0 / fs_y);
    for y in 0..out_h {
        let center_y = top + (y as f32 + 0.5) * scale_y;
        let y0 = ((center_y - fs_y + 0.5) as i32).max(0);
        let y1 = ((center_y + fs_y + 0.5) as i32).min(src_h);
        for x in 0..out_w {
            let center_x = left + (x as f32 + 0.5) * scale_x;
            let x0 = ((center_x - fs_x + 0.5) as i32).max(0);
            let x1 = ((center_x + fs_x + 0.5) as i32).min(src_w);
            let weight = |i: i32| 1.0 - ((i as f32 - center_x + 0.5) * inv_x).abs();
            let mut sum_x = 0.0f32;
            for i in x0..x1 {
                let w = weight(i);
                if w > 0.0 {
                    sum_x += w;
                }
            }
            let (mut sum_y, mut r, mut g, mut b) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            for j in y0..y1 {
                let wy = 1.0 - ((j as f32 - center_y + 0.5) * inv_y).abs();
                if wy <= 0.0 {
                    continue;
                }
                sum_y += wy;
                let (mut rr, mut gg, mut bb) = (0.0f32, 0.0f32, 0.0f32);
                let row = &src[j as usize * src_w as usize * 3..];
                for i in x0..x1 {
                    let w = weight(i);
                    if w <= 0.0 {
                        continue;
                    }
                    let px = &row[i as usize * 3..i as usize * 3 + 3];
                    rr += px[0] as f32 * w;
                    gg += px[1] as f32 * w;
                    bb += px[2] as f32 * w;
                }
                r += rr * wy;
                g += gg * wy;
                b += bb * wy;
            }
            let norm = sum_x * sum_y;
            let at = (y * out_w + x) as usize;
            out[at] = (r / norm - input.mean[0]) / input.std[0];
            out[plane + at] = (g / norm - input.mean[1]) / input.std[1];
            out[2 * plane + at] = (b / norm - input.mean[2]) / input.std[2];
        }
    }
}

/// Why GPU preprocessing is not available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuError {
    #[error("NVRTC (libnvrtc, CUDA 13) is not available: {0}")]
    NoNvrtc(String),
    #[error("compiling the preprocessing kernel: {0}")]
    Compile(String),
    #[error("CUDA: {0}")]
    Cuda(String),
}

/// Makes `libnvrtc` loadable and says whether it is. A library on the loader's path
/// is used as it is; otherwise the one of the `nvidia-cuda-nvrtc` wheel in a virtualenv
/// (`$VIRTUAL_ENV`, `./.venv`, the checkout's `.venv`) or `$TAGFLEET_NVRTC_DYLIB` is
/// loaded by its full path first, so that cudarc's load by name finds it.
pub fn nvrtc_available() -> Result<(), GpuError> {
    static FOUND: OnceLock<Result<(), GpuError>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            // SAFETY: only asks the loader whether the library can be opened.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok(());
            }
            let candidates = nvrtc_candidates();
            for path in &candidates {
                // SAFETY: loading NVIDIA's NVRTC runs its initialisers, nothing else;
                // the handle is leaked so the library stays for the process's life.
                if let Ok(lib) = unsafe { libloading::Library::new(path) } {
                    std::mem::forget(lib);
                    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                        return Ok(());
                    }
                }
            }
            let searched: Vec<String> =
                candidates.iter().map(|p| p.display().to_string()).collect();
            Err(GpuError::NoNvrtc(format!(
                "not on the loader path; searched {}",
                if searched.is_empty() {
                    "no virtualenv with nvidia-cuda-nvrtc".to_owned()
                } else {
                    searched.join(", ")
                }
            )))
        })
        .clone()
}

fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = std::env::var_os("TAGFLEET_NVRTC_DYLIB") {
        out.push(PathBuf::from(path));
    }
    for venv in crate::runtime::candidate_venvs() {
        for site in crate::runtime::site_packages(&venv) {
            let Ok(dirs) = std::fs::read_dir(site.join("nvidia")) else {
                continue;
            };
            for dir in dirs.flatten() {
                if let Ok(libs) = std::fs::read_dir(dir.path().join("lib")) {
                    out.extend(libs.flatten().map(|e| e.path()).filter(|p| is_nvrtc(p)));
                }
            }
        }
    }
    out
}

fn is_nvrtc(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("libnvrtc.so")
}

/// The kernel as PTX, for the architecture the driver picks at load time. Compiled once
/// per process: every GPU's executor loads the same PTX.
pub fn compile() -> Result<cudarc::nvrtc::Ptx, GpuError> {
    static PTX: OnceLock<Result<cudarc::nvrtc::Ptx, GpuError>> = OnceLock::new();
    PTX.get_or_init(|| {
        nvrtc_available()?;
        let options = cudarc::nvrtc::CompileOptions {
            fmad: Some(false),
            name: Some("crop_resize_normalise.cu".into()),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, options)
            .map_err(|e| GpuError::Compile(format!("{e:?}")))
    })
    .clone()
}

/// Preprocessing on one GPU: the compiled kernel, its stream, and buffers reused from
/// batch to batch (they grow to the largest batch seen and stay).
pub struct GpuPreprocessor {
    input: InputSpec,
    stream: Arc<cudarc::driver::CudaStream>,
    function: cudarc::driver::CudaFunction,
    /// Page-locked host memory the batch's pixels are packed into, so that they cross in
    /// one DMA copy rather than one staged copy per image from pageable memory.
    staging: Option<cudarc::driver::PinnedHostSlice<u8>>,
    /// The batch's decoded images, uint8 RGB, one after another.
    pixels: Option<cudarc::driver::CudaSlice<u8>>,
    /// The model's input, NCHW floats.
    output: Option<cudarc::driver::CudaSlice<f32>>,
}

fn cuda_error(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Cuda(format!("{e:?}"))
}

/// `buffer`, grown to hold at least `len` elements (by powers of two, so that a few
/// batch shapes settle it).
fn ensure<T: cudarc::driver::DeviceRepr>(
    stream: &Arc<cudarc::driver::CudaStream>,
    buffer: &mut Option<cudarc::driver::CudaSlice<T>>,
    len: usize,
) -> Result<(), GpuError> {
    if buffer.as_ref().is_none_or(|b| b.len() < len) {
        *buffer = None; // free the old one first
        // SAFETY: uninitialised device memory; every byte the kernel reads is written
        // by an upload first, and the kernel writes every output value.
        *buffer = Some(unsafe { stream.alloc::<T>(len.next_power_of_two()) }.map_err(cuda_error)?);
    }
    Ok(())
}

/// `buffer`, grown to hold at least `len` bytes of page-locked host memory.
fn ensure_pinned(
    stream: &Arc<cudarc::driver::CudaStream>,
    buffer: &mut Option<cudarc::driver::PinnedHostSlice<u8>>,
    len: usize,
) -> Result<(), GpuError> {
    if buffer.as_ref().is_none_or(|b| b.len() < len) {
        *buffer = None;
        // SAFETY: uninitialised host memory; only the bytes `pack` wrote are copied.
        *buffer = Some(
            unsafe { stream.context().alloc_pinned::<u8>(len.next_power_of_two()) }
                .map_err(cuda_error)?,
        );
    }
    Ok(())
}

/// Lays a batch's pixels out one after another at the start of `staging`, which holds at
/// least their sum; returns where each image's lie.
pub fn pack(images: &[(&Decoded, Crop)], staging: &mut [u8]) -> Vec<std::ops::Range<usize>> {
    let mut offset = 0;
    images
        .iter()
        .map(|(image, _)| {
            let raw = image.pixels.as_raw();
            let range = offset..offset + raw.len();
            staging[range.clone()].copy_from_slice(raw);
            offset = range.end;
            range
        })
        .collect()
}

impl GpuPreprocessor {
    /// Compiles the kernel and loads it on GPU `ordinal`. Needs the driver and NVRTC.
    pub fn new(ordinal: usize, input: &InputSpec) -> Result<Self, GpuError> {
        // SAFETY: only asks the loader whether libcuda can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::Cuda(
                "no CUDA driver (libcuda) on this host".into(),
            ));
        }
        let ptx = compile()?;
        let context = cudarc::driver::CudaContext::new(ordinal).map_err(cuda_error)?;
        let module = context.load_module(ptx).map_err(cuda_error)?;
        let function = module.load_function(KERNEL_NAME).map_err(cuda_error)?;
        // A stream of its own: the legacy default stream would serialise with every other
        // stream of the context, ONNX Runtime's included.
        let stream = context.new_stream().map_err(cuda_error)?;
        Ok(Self {
            input: input.clone(),
            stream,
            function,
            staging: None,
            pixels: None,
            output: None,
        })
    }

    /// The stream the kernel runs on.
    pub fn stream(&self) -> &Arc<cudarc::driver::CudaStream> {
        &self.stream
    }

    /// Uploads a batch's pixels (packed into page-locked memory, one copy) and
    /// preprocesses them into one device buffer, NCHW, ready for the model; returns once
    /// the buffer is complete. The buffers are reused by the next call.
    pub fn run(
        &mut self,
        images: &[(&Decoded, Crop)],
    ) -> Result<cudarc::driver::CudaView<'_, f32>, GpuError> {
        use cudarc::driver::{LaunchConfig, PushKernelArg};
        let (out_w, out_h) = (self.input.width as i32, self.input.height as i32);
        let per_image = 3 * (out_w * out_h) as usize;
        let total_pixels: usize = images.iter().map(|(i, _)| i.pixels.as_raw().len()).sum();
        ensure_pinned(&self.stream, &mut self.staging, total_pixels)?;
        ensure(&self.stream, &mut self.pixels, total_pixels)?;
        ensure(&self.stream, &mut self.output, per_image * images.len())?;
        let (staging, pixels, output) = (
            self.staging.as_mut().expect("ensured"),
            self.pixels.as_mut().expect("ensured"),
            self.output.as_mut().expect("ensured"),
        );
        // The previous batch's copy finished before it returned (it synchronises), so the
        // staging memory is free to overwrite.
        let host = &mut staging.as_mut_slice().map_err(cuda_error)?[..total_pixels];
        let spans = pack(images, host);
        // From page-locked memory the copy is asynchronous: `host` must stay as it is
        // until the stream has run it, which the synchronisation below waits for.
        self.stream
            .memcpy_htod(&*host, &mut pixels.slice_mut(..total_pixels))
            .map_err(cuda_error)?;
        let block = (16u32, 16u32, 1u32);
        let grid = (
            (self.input.width).div_ceil(block.0),
            (self.input.height).div_ceil(block.1),
            1,
        );
        let [mr, mg, mb] = self.input.mean;
        let [sr, sg, sb] = self.input.std;
        for (n, ((image, crop), range)) in images.iter().zip(spans).enumerate() {
            let source = pixels.slice(range);
            let (src_w, src_h) = (image.width() as i32, image.height() as i32);
            let (left, top, cw, ch) = (crop.0 as f32, crop.1 as f32, crop.2 as f32, crop.3 as f32);
            let mut slot = output.slice_mut(n * per_image..(n + 1) * per_image);
            let mut launch = self.stream.launch_builder(&self.function);
            launch
                .arg(&source)
                .arg(&src_w)
                .arg(&src_h)
                .arg(&left)
                .arg(&top)
                .arg(&cw)
                .arg(&ch)
                .arg(&out_w)
                .arg(&out_h)
                .arg(&mr)
                .arg(&mg)
                .arg(&mb)
                .arg(&sr)
                .arg(&sg)
                .arg(&sb)
                .arg(&mut slot);
            // SAFETY: the argument list matches the kernel's signature; `source` holds
            // src_w*src_h*3 bytes and `slot` 3*out_w*out_h floats, as the kernel reads and
            // writes.
            unsafe {
                launch.launch(LaunchConfig {
                    grid_dim: grid,
                    block_dim: block,
                    shared_mem_bytes: 0,
                })
            }
            .map_err(cuda_error)?;
        }
        self.stream.synchronize().map_err(cuda_error)?;
        Ok(output.slice(..per_image * images.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Preprocessor;

    use crate::test_support::photos;

    fn spec() -> InputSpec {
        crate::test_support::model().input
    }

    #[test]
    fn a_batch_is_packed_one_image_after_another() {
        let photos = photos();
        let cpu = Preprocessor::new(&spec());
        let batch: Vec<_> = photos
            .iter()
            .map(|p| (p, cpu.crop_box(p.width(), p.height())))
            .collect();
        let total: usize = photos.iter().map(|p| p.pixels.as_raw().len()).sum();
        let mut staging = vec![0u8; total + 7];
        let spans = pack(&batch, &mut staging);
        assert_eq!(spans.first().map(|r| r.start), Some(0));
        assert_eq!(spans.last().map(|r| r.end), Some(total));
        for (span, photo) in spans.iter().zip(&photos) {
            assert_eq!(&staging[span.clone()], photo.pixels.as_raw().as_slice());
        }
        assert!(spans.windows(2).all(|w| w[0].end == w[1].start));
    }

    /// The kernel's arithmetic (f32 weights, no rounding) against the CPU path
    /// (fast_image_resize: fixed-point weights, a uint8 image between the horizontal and
    /// the vertical pass and after it). The same resampling differs by that rounding only:
    /// at most one uint8 step, about 0.3 on average (another filter would differ by tens).
    #[test]
    fn the_reference_equals_the_cpu_path_on_real_photos() {
        let input = spec();
        let mut cpu = Preprocessor::new(&input);
        let step = 1.0 / input.std[0];
        for image in photos() {
            let crop = cpu.crop_box(image.width(), image.height());
            let mut want = vec![0.0; cpu.tensor_len()];
            let mut got = vec![0.0; cpu.tensor_len()];
            cpu.run(&image, &mut want);
            reference(&image, crop, &input, &mut got);
            let diffs: Vec<f32> = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).collect();
            let max = diffs.iter().copied().fold(0.0, f32::max);
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            eprintln!(
                "{}x{}: max diff {:.2}, mean {:.3} uint8 steps",
                image.width(),
                image.height(),
                max / step,
                mean / step
            );
            assert!(max <= 1.01 * step, "max diff {} uint8 steps", max / step);
            assert!(mean <= 0.35 * step, "mean diff {} uint8 steps", mean / step);
        }
    }

    #[test]
    fn the_reference_resizes_a_flat_image_to_the_same_flat_value() {
        let input = spec();
        let image = Decoded::full(image::RgbImage::from_pixel(
            640,
            480,
            image::Rgb([200, 100, 0]),
        ));
        let cpu = Preprocessor::new(&input);
        let mut out = vec![0.0; cpu.tensor_len()];
        reference(&image, cpu.crop_box(640, 480), &input, &mut out);
        let plane = out.len() / 3;
        for (c, v) in [200.0, 100.0, 0.0].into_iter().enumerate() {
            let want = (v - input.mean[c]) / input.std[c];
            assert!(
                out[c * plane..(c + 1) * plane]
                    .iter()
                    .all(|x| (x - want).abs() < 1e-5),
                "channel {c}"
            );
        }
    }

    /// NVRTC needs no GPU: the kernel compiles to PTX wherever libnvrtc is. `make test`
    /// installs it (the nvidia-cuda-nvrtc wheel) and sets TAGFLEET_REQUIRE_NVRTC, so a
    /// syntax or type error in the kernel fails CI.
    #[test]
    fn the_kernel_compiles_to_ptx() {
        match compile() {
            Ok(ptx) => {
                let text = ptx.to_src();
                assert!(text.contains(".entry crop_resize_normalise"), "{text}");
            }
            Err(GpuError::NoNvrtc(why)) if std::env::var_os("TAGFLEET_REQUIRE_NVRTC").is_none() => {
                eprintln!("not compiled: {why}");
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// GPU 0, for a GPU test. GPU tests are `#[ignore]`d, so where there is no GPU they
    /// are listed as skipped, never as passed; one that is run without a usable GPU
    /// fails, saying why.
    fn gpu(input: &InputSpec) -> GpuPreprocessor {
        GpuPreprocessor::new(0, input).unwrap_or_else(|e| panic!("this GPU test needs a GPU: {e}"))
    }

    /// The guard of the ignored GPU tests: with `TAGFLEET_REQUIRE_GPU=1` (`make test-gpu`,
    /// benches/gpu/run.sh) it fails unless GPU 0 is usable (driver, device, NVRTC), so a
    /// GPU machine whose GPU cannot be used does not pass by skipping. Without it there is
    /// nothing to require, and it says what the GPU tests would find.
    #[test]
    fn a_gpu_is_usable_where_one_is_required() {
        let required = std::env::var("TAGFLEET_REQUIRE_GPU").is_ok_and(|v| v == "1");
        match GpuPreprocessor::new(0, &spec()) {
            Ok(_) => eprintln!("GPU 0 is usable: `make test-gpu` runs the GPU tests"),
            Err(e) if required => panic!("TAGFLEET_REQUIRE_GPU=1, but no usable GPU: {e}"),
            Err(e) => eprintln!("SKIPPED: no GPU ({e}); the GPU tests are ignored"),
        }
    }

    /// The seed of a random test: `$TAGFLEET_TEST_SEED` when set, else a fresh one. Printed
    /// either way, so that a failure can be run again on the same images.
    fn test_seed() -> u64 {
        let seed = match std::env::var("TAGFLEET_TEST_SEED") {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("TAGFLEET_TEST_SEED={text:?} is not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("seed {seed} (TAGFLEET_TEST_SEED={seed} repeats this run)");
        seed
    }

    /// The largest error of the kernel against the reference over `images`, relative to
    /// the value (absolute below 1).
    fn worst_error(gpu: &mut GpuPreprocessor, input: &InputSpec, images: &[Decoded]) -> f32 {
        let cpu = Preprocessor::new(input);
        let batch: Vec<_> = images
            .iter()
            .map(|p| (p, cpu.crop_box(p.width(), p.height())))
            .collect();
        let stream = gpu.stream().clone();
        let out = stream.clone_dtoh(&gpu.run(&batch).unwrap()).unwrap();
        let per = cpu.tensor_len();
        let mut worst = 0.0f32;
        for (n, (image, crop)) in batch.iter().enumerate() {
            let mut want = vec![0.0; per];
            reference(image, *crop, input, &mut want);
            for (a, b) in want.iter().zip(&out[n * per..(n + 1) * per]) {
                worst = worst.max((a - b).abs() / a.abs().max(1.0));
            }
        }
        worst
    }

    /// The kernel against the reference on real photos, to 1e-5.
    #[test]
    #[ignore = "needs a CUDA GPU: make test-gpu, or --run-ignored all"]
    fn the_gpu_kernel_equals_the_reference_on_real_photos() {
        let input = spec();
        let mut gpu = gpu(&input);
        let worst = worst_error(&mut gpu, &input, &photos());
        assert!(worst <= 1e-5, "max rel error {worst}");
    }

    /// The kernel against the reference on fresh random images of random sizes, crops
    /// and scales (up and down), to 1e-5. The seed is printed; `TAGFLEET_TEST_SEED` sets it.
    #[test]
    #[ignore = "needs a CUDA GPU: make test-gpu, or --run-ignored all"]
    fn the_gpu_kernel_equals_the_reference_on_random_images() {
        let input = spec();
        let mut gpu = gpu(&input);
        // xorshift64 must not start at 0.
        let mut seed = test_seed() | 1;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let images: Vec<Decoded> = (0..24)
            .map(|_| {
                let (w, h) = (16 + next() % 2400, 16 + next() % 1800);
                let bytes = (0..w * h * 3).map(|_| next() as u8).collect();
                Decoded::full(image::RgbImage::from_raw(w as u32, h as u32, bytes).unwrap())
            })
            .collect();
        let worst = worst_error(&mut gpu, &input, &images);
        eprintln!("{} images checked, max rel error {worst:e}", images.len());
        assert!(worst <= 1e-5, "max rel error {worst}");
    }
}
