//! ONNX Runtime sessions on real photos: the CPU path, and the CUDA path's fall back to
//! the CPU where the CUDA execution provider cannot be registered (a CPU-only ONNX
//! Runtime, as on machines without a GPU).

use std::path::{Path, PathBuf};

use tagfleet_models::postprocess::top_k_tags;
use tagfleet_models::{Backend, DecodeLimits, Device, ModelSpec, OrtBackend, Preprocessor, decode};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn spec() -> ModelSpec {
    ModelSpec::load(&repo().join("models/efficientnet-lite0"))
        .expect("run `make model` (make test does)")
}

fn top_label(backend: &mut dyn Backend, spec: &ModelSpec, photo: &str) -> String {
    let bytes =
        std::fs::read(repo().join("samples/photos").join(photo)).expect("run `make photos`");
    let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
    let mut pre = Preprocessor::new(&spec.input);
    let mut tensor = vec![0.0; pre.tensor_len()];
    pre.run(&decoded, &mut tensor);
    let out = backend.run(&tensor, 1, true).unwrap();
    assert_eq!((out.classes, out.embedding_dim), (1000, 1280));
    let labels = spec.load_labels().unwrap();
    top_k_tags(out.logits_row(0), &labels, 1, 0.0)[0]
        .label
        .clone()
}

#[test]
fn cpu_session_tags_a_real_photo() {
    let spec = spec();
    let mut cpu = OrtBackend::cpu(&spec, 1, None).unwrap();
    assert_eq!(cpu.device(), Device::Cpu);
    assert_eq!(top_label(&mut cpu, &spec, "coffee.png"), "espresso");
}

#[test]
fn cuda_session_without_a_cuda_runtime_falls_back_to_the_cpu_and_still_works() {
    let spec = spec();
    let mut gpu = OrtBackend::cuda(&spec, 0, Some(1 << 30), true, None).unwrap();
    assert_eq!(gpu.requested_device(), Device::Cuda(0));
    if gpu.device() == Device::Cpu {
        // The fallback: same model, same answer, on the CPU, which takes tensors.
        assert!(
            !gpu.preprocesses(),
            "no GPU preprocessing without the GPU session"
        );
        assert_eq!(top_label(&mut gpu, &spec, "coffee.png"), "espresso");
    } else {
        // A CUDA-enabled ONNX Runtime on a GPU machine: the real thing.
        assert_eq!(gpu.device(), Device::Cuda(0));
        assert_eq!(top_label(&mut gpu, &spec, "coffee.png"), "espresso");
    }
}
