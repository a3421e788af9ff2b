//! Decoding JPEGs at a reduced DCT scale must not change what the model sees: on real
//! camera-sized photos, the tags of the scaled path agree with those of the full-size
//! decode (top-1 on at least 97% of the images, top-5 sets overlapping at least 90%).
//!
//! The corpus is `make corpus`'s (scripts/make_corpus.py: 1-24 MP, JPEG quality 75-95,
//! progressive, EXIF-rotated, restart markers, some PNG and WebP), or `$TAGFLEET_CORPUS`.

use std::path::{Path, PathBuf};

use tagfleet_models::postprocess::top_k_tags;
use tagfleet_models::{
    Backend, DecodeLimits, Decoded, ModelSpec, OrtBackend, Preprocessor, decode, decode_to_fit,
};

/// Images compared: enough that one disagreement moves the share by half a percent.
const IMAGES: usize = 200;
const BATCH: usize = 16;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn corpus() -> Vec<PathBuf> {
    let dir = std::env::var_os("TAGFLEET_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/corpus"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make corpus`; make test does)", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "jpg" || e == "png" || e == "webp")
        })
        .collect();
    files.sort();
    files.truncate(IMAGES);
    assert!(
        files.len() >= 100,
        "{} holds {} photos; `make corpus` makes 300",
        dir.display(),
        files.len()
    );
    files
}

/// The top-5 labels of each image, preprocessed from what `decode` gives.
fn top5(
    backend: &mut dyn Backend,
    spec: &ModelSpec,
    files: &[PathBuf],
    mut decode: impl FnMut(&[u8]) -> Decoded,
) -> Vec<Vec<String>> {
    let labels = spec.load_labels().unwrap();
    let mut pre = Preprocessor::new(&spec.input);
    let len = pre.tensor_len();
    let mut out = Vec::new();
    for chunk in files.chunks(BATCH) {
        let mut tensor = vec![0.0; len * chunk.len()];
        for (file, slot) in chunk.iter().zip(tensor.chunks_mut(len)) {
            pre.run(&decode(&std::fs::read(file).unwrap()), slot);
        }
        let batch = backend.run(&tensor, chunk.len(), false).unwrap();
        out.extend((0..chunk.len()).map(|i| {
            top_k_tags(batch.logits_row(i), &labels, 5, 0.0)
                .into_iter()
                .map(|t| t.label)
                .collect()
        }));
    }
    out
}

#[test]
fn scaled_decoding_keeps_the_tags_of_the_full_size_decode() {
    let spec = ModelSpec::load(&repo().join("models/efficientnet-lite0"))
        .expect("run `make model` (make test does)");
    let files = corpus();
    let mut backend = OrtBackend::cpu(&spec, 2, None).unwrap();
    let limits = DecodeLimits::default();
    let sizer = Preprocessor::new(&spec.input);
    let covers = |w, h| sizer.covers(w, h);

    let mut scaled_images = 0;
    let scaled = top5(&mut backend, &spec, &files, |bytes| {
        let d = decode_to_fit(bytes, limits, &covers).unwrap();
        if d.pixels.dimensions() != d.full_size {
            scaled_images += 1;
        }
        d
    });
    let full = top5(&mut backend, &spec, &files, |bytes| {
        decode(bytes, limits).unwrap()
    });

    let n = files.len();
    let top1 = scaled
        .iter()
        .zip(&full)
        .filter(|(a, b)| a[0] == b[0])
        .count();
    let overlap: usize = scaled
        .iter()
        .zip(&full)
        .map(|(a, b)| a.iter().filter(|l| b.contains(l)).count())
        .sum();
    let top1_share = top1 as f64 / n as f64;
    let top5_share = overlap as f64 / (5 * n) as f64;
    eprintln!(
        "{n} photos, {scaled_images} decoded scaled: top-1 agreement {top1_share:.3}, top-5 overlap {top5_share:.3}"
    );
    // The comparison means something only if most photos were in fact decoded scaled.
    assert!(
        scaled_images * 10 >= n * 8,
        "only {scaled_images} of {n} photos were decoded at a reduced scale"
    );
    assert!(top1_share >= 0.97, "top-1 agreement {top1_share:.3} < 0.97");
    assert!(top5_share >= 0.90, "top-5 overlap {top5_share:.3} < 0.90");
}
