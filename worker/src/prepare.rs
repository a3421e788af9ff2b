//! Decode and preprocess: a pool of OS threads, sized to the cores, turning fetched bytes
//! into model input. CPU-bound work stays off the async runtime.

use std::panic::AssertUnwindSafe;

use async_channel::{Receiver, Sender};
use tagfleet_core::{ErrorKind, ImageError};
use tagfleet_models::{DecodeLimits, Preprocessor, spec::InputSpec};

use crate::task::{Completed, Work};

/// Fetched bytes of one image.
pub struct Fetched {
    pub work: Work,
    pub bytes: Vec<u8>,
}

/// One image ready for the model.
pub struct Prepared {
    pub work: Work,
    /// CHW floats, the model's input size.
    pub tensor: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

/// Starts `threads` workers; they stop when `input` is closed and drained.
pub fn spawn(
    threads: usize,
    input: Receiver<Fetched>,
    output: Sender<Prepared>,
    failed: Sender<Completed>,
    spec: InputSpec,
    limits: DecodeLimits,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads.max(1))
        .map(|i| {
            let (input, output, failed, spec) =
                (input.clone(), output.clone(), failed.clone(), spec.clone());
            std::thread::Builder::new()
                .name(format!("prepare-{i}"))
                .spawn(move || {
                    let mut pre = Preprocessor::new(&spec);
                    while let Ok(Fetched { mut work, bytes }) = input.recv_blocking() {
                        match prepare(&mut pre, &bytes, limits, &mut work) {
                            Ok((tensor, width, height)) => {
                                drop(bytes);
                                if output
                                    .send_blocking(Prepared {
                                        work,
                                        tensor,
                                        width,
                                        height,
                                    })
                                    .is_err()
                                {
                                    break;
                                }
                            }
                            Err(error) => {
                                let line = work.failed(error);
                                if failed.send_blocking(Completed { work, line }).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                })
                .expect("spawning a prepare thread")
        })
        .collect()
}

fn prepare(
    pre: &mut Preprocessor,
    bytes: &[u8],
    limits: DecodeLimits,
    work: &mut Work,
) -> Result<(Vec<f32>, u32, u32), ImageError> {
    // A decoder bug on hostile input must cost one image, not the worker.
    let decoded =
        std::panic::catch_unwind(AssertUnwindSafe(|| tagfleet_models::decode(bytes, limits)))
            .map_err(|_| {
                ImageError::new(ErrorKind::Decode, "the decoder failed on this image")
            })??;
    work.timings.lap("decode");
    let mut tensor = vec![0.0; pre.tensor_len()];
    pre.run(&decoded, &mut tensor);
    work.timings.lap("preprocess");
    Ok((tensor, decoded.width(), decoded.height()))
}
