//! The throughput bounds: decode and preprocess on one thread, the engine on ready
//! tensors (and from pixels, with GPU preprocessing), the kernel alone, and what they
//! allow together.

use std::time::{Duration, Instant};

use anyhow::Context;
use tagfleet_contracts::schema::{Analysis, TaskOptions};
use tagfleet_models::analysis::describe;
use tagfleet_models::gpu_preprocess::GpuPreprocessor;
use tagfleet_models::preprocess::Crop;
use tagfleet_models::{
    Backend, DecodeLimits, Decoded, Device, Preprocessor, decode, decode_to_fit,
};

use super::cpu::{process_cpu, thread_cpu};
use crate::engine::{self, EngineArgs, Model};

/// What the bounds measurement found.
pub struct Bounds {
    pub device: Device,
    /// Whether the executor preprocesses on its GPU.
    pub on_gpu: bool,
    pub engine_rate: f64,
    pub pixels_rate: Option<f64>,
    pub kernel_rate: Option<f64>,
    pub decode_rate: f64,
    /// Images/s the host allows at most.
    pub bound: f64,
}

/// Measures each bound for about `budget`, printing as it goes.
pub fn measure(
    engine_args: &EngineArgs,
    model: &Model,
    photos: &[(std::path::PathBuf, Vec<u8>)],
    max_batch: usize,
    budget: Duration,
    has_gpu: bool,
) -> anyhow::Result<Bounds> {
    let cores = engine::cores();
    let bytes: Vec<&[u8]> = photos.iter().map(|(_, b)| b.as_slice()).collect();
    // What each DCT scale costs on the JPEGs, then decode as the worker does it: each
    // image at the smallest scale that still covers the model's crop.
    let sizer = Preprocessor::new(&model.spec.input);
    let covers = |w, h| sizer.covers(w, h);
    report_scales(&bytes, budget);
    let (decode_cpu, _) = measure_prepare(&bytes, &covers, None, budget);
    let mut pre = Preprocessor::new(&model.spec.input);
    let (prepare_cpu, tensors) = measure_prepare(&bytes, &covers, Some(&mut pre), budget);
    println!(
        "decode              {:8.2} ms CPU per image (one thread, JPEGs scaled to fit the crop)",
        decode_cpu * 1e3
    );
    println!(
        "decode+preprocess   {:8.2} ms CPU per image (one thread)",
        prepare_cpu * 1e3
    );

    // The engine alone on ready tensors, at the chosen batch size; with GPU preprocessing
    // also on decoded pixels, upload and kernel included.
    let mut backends = engine_args.backends(model)?;
    let (engine_rate, infer_cpu) = measure_engines(&mut backends, &tensors, max_batch, budget)?;
    println!(
        "engine              {engine_rate:8.1} images/s, {:.2} ms CPU per image ({} executor{} x {} thread{}; python benches/python_engine.py for ONNX Runtime from Python)",
        infer_cpu * 1e3,
        backends.len(),
        if backends.len() == 1 { "" } else { "s" },
        engine_args.threads(),
        if engine_args.threads() == 1 { "" } else { "s" },
    );
    let backend = backends.first_mut().expect("at least one backend");
    let device = backend.device();
    let on_gpu = backend.preprocesses();
    let decoded: Vec<Decoded> = bytes
        .iter()
        .map(|b| decode_to_fit(b, DecodeLimits::default(), &covers).expect("photos were checked"))
        .collect();
    report_pixel_analyses(&decoded, budget);
    // What crosses to a GPU: each image's crop window, reduced to what the model needs,
    // as the decode threads hand it over.
    let windows: Vec<(Decoded, Crop)> = decoded
        .iter()
        .map(|d| pre.handover(d.clone(), pre.crop_box(d.width(), d.height())))
        .collect();
    report_upload(&decoded, &windows, pre.tensor_len());
    let pixels_rate = if on_gpu {
        let rate = measure_pixels(backend.as_mut(), &windows, max_batch, budget)?;
        println!("engine from pixels  {rate:8.1} images/s (upload + GPU preprocessing + model)");
        Some(rate)
    } else {
        None
    };
    drop(backends);
    // The kernel alone wherever there is a GPU, even when ONNX Runtime has no CUDA.
    let kernel_rate = has_gpu
        .then(|| measure_kernel(&model.spec.input, &windows, max_batch, budget))
        .flatten();
    if let Some(rate) = kernel_rate {
        println!("GPU preprocessing   {rate:8.1} images/s (upload + kernel on cuda:0)");
    }

    // On the CPU decode and inference share the cores; on a GPU they run side by side and
    // the slower of the two is the bound.
    let (decode_rate, bound) = match pixels_rate {
        _ if matches!(device, Device::Cpu) => {
            let bound = cores as f64 / (prepare_cpu + infer_cpu);
            println!(
                "bound               {bound:8.1} images/s = {cores} cores / (decode+preprocess + inference CPU-s per image)"
            );
            (cores as f64 / prepare_cpu, bound)
        }
        Some(rate) => gpu_bound(&device, rate, cores as f64 / decode_cpu, "decode"),
        None => gpu_bound(
            &device,
            engine_rate,
            cores as f64 / prepare_cpu,
            "decode+preprocess",
        ),
    };
    Ok(Bounds {
        device,
        on_gpu,
        engine_rate,
        pixels_rate,
        kernel_rate,
        decode_rate,
        bound,
    })
}

/// On a GPU decode and the engine run side by side: the slower is the bound. Returns the
/// decode rate and the bound.
fn gpu_bound(device: &Device, gpu_rate: f64, decode_rate: f64, what: &str) -> (f64, f64) {
    let bound = gpu_rate.min(decode_rate);
    println!(
        "bound               {bound:8.1} images/s = min(engine on {device}, {what} on {} cores = {decode_rate:.1})",
        engine::cores()
    );
    (decode_rate, bound)
}

/// Decode CPU per JPEG at each DCT scale (the full size and 1/2, 1/4, 1/8 of each
/// side), one thread, whatever the model needs.
fn report_scales(photos: &[&[u8]], budget: Duration) {
    let jpegs: Vec<(&[u8], (u32, u32))> = photos
        .iter()
        .filter(|b| b.starts_with(&[0xFF, 0xD8]))
        .filter_map(|b| Some((*b, decode(b, DecodeLimits::default()).ok()?.full_size)))
        .collect();
    if jpegs.is_empty() {
        return;
    }
    let mega = jpegs
        .iter()
        .map(|(_, (w, h))| f64::from(*w) * f64::from(*h))
        .sum::<f64>()
        / 1e6;
    let mut costs = Vec::new();
    for denom in [1, 2, 4, 8] {
        let start = Instant::now();
        let cpu0 = thread_cpu();
        let mut n = 0usize;
        while start.elapsed() < budget / 4 || n < jpegs.len() {
            let (bytes, (w, h)) = jpegs[n % jpegs.len()];
            // The smallest scale keeping at least 1/denom of each side is 1/denom.
            let at_least = |sw: u32, sh: u32| {
                sw.max(sh) >= w.max(h).div_ceil(denom) && sw.min(sh) >= w.min(h).div_ceil(denom)
            };
            let decoded = decode_to_fit(bytes, DecodeLimits::default(), &at_least);
            std::hint::black_box(decoded.expect("photos were checked"));
            n += 1;
        }
        costs.push(format!(
            "1/{denom} {:.2} ms",
            (thread_cpu() - cpu0) / n as f64 * 1e3
        ));
    }
    println!(
        "decode by scale     {} CPU per JPEG ({} JPEGs, {:.1} MP mean)",
        costs.join(", "),
        jpegs.len(),
        mega / jpegs.len() as f64
    );
}

/// Decodes the photos round-robin on this thread for about `budget`, each at the
/// smallest scale that `fits`, and preprocesses them when given a preprocessor; returns
/// CPU-seconds per image and, with a preprocessor, one tensor per photo.
/// CPU per image of each pixel analysis on the images as the worker decodes them, with
/// the crops `bench::ALL_ANALYSES_ARGS` asks for.
fn report_pixel_analyses(decoded: &[Decoded], budget: Duration) {
    let options = TaskOptions {
        crops: super::BENCH_CROPS
            .split(',')
            .map(|c| c.parse().expect("the bench's crops parse"))
            .collect(),
        ..TaskOptions::default()
    };
    for analysis in [Analysis::Colors, Analysis::Crops] {
        let start = Instant::now();
        let cpu0 = thread_cpu();
        let mut n = 0usize;
        while start.elapsed() < budget / 4 || n < decoded.len() {
            let image = &decoded[n % decoded.len()];
            std::hint::black_box(describe(image, &[analysis], &options, |_| {}));
            n += 1;
        }
        let ms = (thread_cpu() - cpu0) / n as f64 * 1e3;
        println!(
            "{:<19} {ms:8.2} ms CPU per image (one thread, on the image as decoded)",
            analysis.name()
        );
    }
}

fn measure_prepare(
    photos: &[&[u8]],
    fits: &dyn Fn(u32, u32) -> bool,
    mut pre: Option<&mut Preprocessor>,
    budget: Duration,
) -> (f64, Vec<Vec<f32>>) {
    let mut prepare = |bytes: &[u8]| {
        let decoded: Decoded =
            decode_to_fit(bytes, DecodeLimits::default(), fits).expect("photos were checked");
        pre.as_deref_mut().map(|pre| {
            let mut tensor = vec![0.0; pre.tensor_len()];
            pre.run(&decoded, &mut tensor);
            tensor
        })
    };
    let tensors: Vec<Vec<f32>> = photos.iter().filter_map(|b| prepare(b)).collect();
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut n = 0usize;
    while start.elapsed() < budget || n < photos.len() {
        std::hint::black_box(prepare(photos[n % photos.len()]));
        n += 1;
    }
    ((thread_cpu() - cpu0) / n as f64, tensors)
}

/// Runs `run_batch` once to warm up, then for about `budget`; returns images/s, process
/// CPU-seconds per image and the images run.
fn repeat_batches(
    batch: usize,
    budget: Duration,
    mut run_batch: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64, usize)> {
    run_batch().context("warm-up batch")?;
    let start = Instant::now();
    let cpu0 = process_cpu();
    let mut images = 0usize;
    while start.elapsed() < budget || images == 0 {
        run_batch()?;
        images += batch;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok((
        images as f64 / wall,
        (process_cpu() - cpu0) / images as f64,
        images,
    ))
}

/// `batch` of the decoded photos, round-robin, each with the model's crop.
fn pixel_batch(windows: &[(Decoded, Crop)], batch: usize) -> Vec<(&Decoded, Crop)> {
    windows
        .iter()
        .cycle()
        .take(batch)
        .map(|(d, crop)| (d, *crop))
        .collect()
}

/// Bytes per image a GPU executor uploads (uint8 pixels of the crop window) against the
/// float tensor it becomes, and what the whole decoded frame would have been.
fn report_upload(decoded: &[Decoded], windows: &[(Decoded, Crop)], tensor_floats: usize) {
    let mean = |bytes: &mut dyn Iterator<Item = usize>| {
        bytes.sum::<usize>() as f64 / decoded.len().max(1) as f64
    };
    let frame = mean(&mut decoded.iter().map(|d| d.pixels.as_raw().len()));
    let window = mean(&mut windows.iter().map(|(w, _)| w.pixels.as_raw().len()));
    let worst = windows
        .iter()
        .map(|(w, _)| w.pixels.as_raw().len())
        .max()
        .unwrap_or(0);
    let tensor = (tensor_floats * std::mem::size_of::<f32>()) as f64;
    println!(
        "GPU upload          {:8.0} KiB per image, {:.2} x its float tensor (largest {:.2} x; the whole decoded frame would be {:.2} x)",
        window / 1024.0,
        window / tensor,
        worst as f64 / tensor,
        frame / tensor
    );
}

/// The engine alone on full batches of ready tensors, every executor at once as in a
/// run: images/s in all, and process CPU-seconds per image.
fn measure_engines(
    backends: &mut [Box<dyn Backend>],
    tensors: &[Vec<f32>],
    batch: usize,
    budget: Duration,
) -> anyhow::Result<(f64, f64)> {
    let input: Vec<f32> = tensors
        .iter()
        .cycle()
        .take(batch)
        .flatten()
        .copied()
        .collect();
    let cpu0 = process_cpu();
    let rates = std::thread::scope(|scope| {
        let runs: Vec<_> = backends
            .iter_mut()
            .map(|backend| {
                let input = &input;
                scope.spawn(move || {
                    repeat_batches(batch, budget, || {
                        backend.run(input, batch, false).context("engine batch")?;
                        Ok(())
                    })
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("an engine thread panicked"))
            .collect::<anyhow::Result<Vec<(f64, f64, usize)>>>()
    })?;
    let rate = rates.iter().map(|r| r.0).sum();
    let images: usize = rates.iter().map(|r| r.2).sum();
    Ok((rate, (process_cpu() - cpu0) / images.max(1) as f64))
}

/// Full batches of decoded pixels through GPU preprocessing and the model: images/s.
fn measure_pixels(
    backend: &mut dyn Backend,
    windows: &[(Decoded, Crop)],
    batch: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    let images = pixel_batch(windows, batch);
    let (rate, ..) = repeat_batches(batch, budget, || {
        backend
            .run_pixels(&images, false)
            .context("engine batch from pixels")?;
        Ok(())
    })?;
    Ok(rate)
}

/// Full batches through the GPU preprocessing kernel alone on GPU 0, upload included:
/// images/s, or `None` (said on stderr) where the kernel cannot run.
fn measure_kernel(
    input: &tagfleet_models::spec::InputSpec,
    windows: &[(Decoded, Crop)],
    batch: usize,
    budget: Duration,
) -> Option<f64> {
    let mut gpu = GpuPreprocessor::new(0, input)
        .inspect_err(|e| eprintln!("GPU preprocessing not measured: {e}"))
        .ok()?;
    let images = pixel_batch(windows, batch);
    repeat_batches(batch, budget, || {
        gpu.run(&images)?;
        Ok(())
    })
    .inspect_err(|e| eprintln!("GPU preprocessing failed: {e:#}"))
    .ok()
    .map(|(rate, ..)| rate)
}
