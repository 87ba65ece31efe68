# The trainer: torch (CPU build) + transformers, exports ONNX into the shared registry.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app stream_app
COPY state state
COPY export export
COPY encoders encoders
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[train]"
ENV STREAMREC_REGISTRY=/var/lib/streamrec/registry \
    HF_HUB_OFFLINE=1
# Training data (RecBole atomic files or events/items JSONL) is mounted at /data.
CMD ["streamrec", "train", "--data", "/data"]
