# The streaming worker: Faust + RocksDB + onnxruntime. No torch in this image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY stream_app stream_app
COPY state state
COPY export export
COPY encoders encoders
COPY streamrec streamrec
RUN pip install --no-cache-dir .
ENV STREAMREC_WORKER__DATA_DIR=/var/lib/streamrec/state \
    STREAMREC_REGISTRY__PATH=/var/lib/streamrec/registry \
    STREAMREC_WORKER__WEB_HOST=0.0.0.0
EXPOSE 6066
CMD ["streamrec", "worker"]
