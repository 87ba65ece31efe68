# The trainer: torch (CPU build) + transformers, exports ONNX into the shared registry.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY stream_app stream_app
COPY state state
COPY export export
COPY encoders encoders
COPY streamrec streamrec
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[train]"
ENV STREAMREC_REGISTRY__PATH=/var/lib/streamrec/registry \
    HF_HUB_OFFLINE=1
# Base training data (RecBole atomic files or events/items JSONL) is mounted at /data.
# Hourly: re-fine-tune on the events topic since the last promoted run, gate, promote.
CMD ["streamrec", "retrain", "--every", "1h", "--base", "/data", "--work-dir", "/var/lib/streamrec/retrain", "--no-progress", \
     "--from-offsets", "/var/lib/streamrec/retrain/offsets.json"]
