//! Decode and preprocess: a pool of OS threads, sized to the cores, turning fetched bytes
//! into model input. CPU-bound work stays off the async runtime.
//!
//! Where an executor preprocesses on its GPU, the threads only decode: the image goes on
//! as uint8 pixels with the crop to take, and a [`PixelBudget`] bounds the bytes waiting.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use tagfleet_contracts::{ErrorKind, ImageError};
use tagfleet_models::analysis::{Described, describe};
use tagfleet_models::preprocess::Crop;
use tagfleet_models::{DecodeLimits, Decoded, Preprocessor, spec::InputSpec};

use crate::budget::{PixelBudget, Reservation};
use crate::health::{Health, spawn_thread};
use crate::task::{Completed, Work};

/// Fetched bytes of one image.
pub struct Fetched {
    pub work: Work,
    pub bytes: Vec<u8>,
}

/// Where images are cropped, resized and normalised.
#[derive(Clone)]
pub enum Preprocessing {
    /// Here, in the decode threads.
    Cpu,
    /// By the executors: on their GPU, or on their own thread where they have none.
    Executors(Arc<PixelBudget>),
}

/// An image as the executors receive it.
pub enum ModelInput {
    /// CHW floats of the model's input size.
    Tensor(Vec<f32>),
    /// Decoded pixels and the crop to take, holding their share of the pixel budget.
    Pixels {
        image: Decoded,
        crop: Crop,
        _budget: Reservation,
    },
}

/// One image ready for an executor.
pub struct Prepared {
    pub work: Work,
    pub input: ModelInput,
    pub width: u32,
    pub height: u32,
    /// What the pixel analyses (colors, crops) found, for its result line.
    pub described: Described,
}

/// What the threads make of fetched bytes.
pub struct Recipe {
    pub spec: InputSpec,
    pub limits: DecodeLimits,
    pub preprocessing: Preprocessing,
}

/// Starts `threads` workers; they stop when `input` is closed and drained.
pub fn spawn(
    threads: usize,
    input: Receiver<Fetched>,
    output: Sender<Prepared>,
    failed: Sender<Completed>,
    recipe: Recipe,
    health: &Health,
) -> Vec<std::thread::JoinHandle<()>> {
    let Recipe {
        spec,
        limits,
        preprocessing,
    } = recipe;
    (0..threads.max(1))
        .map(|i| {
            let (input, output, failed, spec, preprocessing) = (
                input.clone(),
                output.clone(),
                failed.clone(),
                spec.clone(),
                preprocessing.clone(),
            );
            spawn_thread(health, format!("prepare-{i}"), move || {
                let mut pre = Preprocessor::new(&spec);
                while let Ok(Fetched { mut work, bytes }) = input.recv_blocking() {
                    let result = prepare(&mut pre, &preprocessing, &bytes, limits, &mut work);
                    drop(bytes);
                    let sent = match result {
                        Ok((input, described, (width, height))) => output
                            .send_blocking(Prepared {
                                work,
                                input,
                                width,
                                height,
                                described,
                            })
                            .is_ok(),
                        Err(error) => {
                            let line = work.failed(error);
                            failed.send_blocking(Completed { work, line }).is_ok()
                        }
                    };
                    if !sent {
                        break;
                    }
                }
            })
        })
        .collect()
}

fn prepare(
    pre: &mut Preprocessor,
    preprocessing: &Preprocessing,
    bytes: &[u8],
    limits: DecodeLimits,
    work: &mut Work,
) -> Result<(ModelInput, Described, (u32, u32)), ImageError> {
    // JPEGs decode at the smallest DCT scale that still covers the model's crop. A
    // decoder bug on hostile input must cost one image, not the worker.
    let fits = |w, h| pre.covers(w, h);
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        tagfleet_models::decode_to_fit(bytes, limits, &fits)
    }))
    .map_err(|_| ImageError::new(ErrorKind::Decode, "the decoder failed on this image"))??;
    work.timings.lap("decode");
    // The pixel analyses read what the decoder made of a tenant's bytes: a bug there
    // too must cost one image, not the worker.
    let task = work.task.clone();
    let described = std::panic::catch_unwind(AssertUnwindSafe(|| {
        describe(
            &decoded,
            &task.msg.analyses,
            &task.msg.options,
            |analysis| work.timings.lap(analysis),
        )
    }))
    .map_err(|_| ImageError::new(ErrorKind::Inference, "an analysis failed on this image"))?;
    let size = decoded.full_size;
    let input = match preprocessing {
        Preprocessing::Cpu => {
            let mut tensor = vec![0.0; pre.tensor_len()];
            pre.run(&decoded, &mut tensor);
            work.timings.lap("preprocess");
            ModelInput::Tensor(tensor)
        }
        // Only the pixels the crop's resize reads travel on, reduced to what the model
        // needs, to wait in the budget and cross to the GPU.
        Preprocessing::Executors(budget) => {
            let crop = pre.crop_box(decoded.width(), decoded.height());
            let (image, crop) = pre.handover(decoded, crop);
            ModelInput::Pixels {
                _budget: budget.reserve(image.pixels.as_raw().len()),
                crop,
                image,
            }
        }
    };
    Ok((input, described, size))
}
