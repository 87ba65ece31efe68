"""`streamrec worker`: create topics, load the model, run the Faust worker."""

from __future__ import annotations

import asyncio
import logging
import sys

import faiss
import faust
from threadpoolctl import threadpool_limits

from core.errors import BrokerError, StreamrecError
from core.kafka import check_connection, ensure_topics, with_engine
from core.settings import Settings
from stream_app.app import build_app
from stream_app.metrics import WorkerMetrics
from stream_app.serving import ServingState, load_at_start


def limit_threads(n: int) -> None:
    """Scoring uses `n` threads (onnxruntime gets it per session): FAISS and NumPy's BLAS would
    each take every core. OpenBLAS's idle worker spun after each top-k product, ~9% of a core at
    1,000 events/s taken from the broker and the event loop on a 2-core machine."""
    faiss.omp_set_num_threads(n)
    threadpool_limits(n, user_api="blas")


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Serve the latest model version; if it is refused, the newest older one that passes (listed in
    /health `refused_versions`). Exits 1 with the reasons if no version can be served."""
    try:
        check_connection(settings)  # a wrong password or CA fails here, clearly, instead of a hang
    except BrokerError as e:
        sys.exit(f"error: {e}")
    limit_threads(settings.worker.inference_threads)
    handler = logging.StreamHandler()  # until Faust sets up logging: why a version is refused
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"))
    logging.getLogger("stream_app").addHandler(handler)
    try:
        recommender, refused = load_at_start(settings)
    except StreamrecError as e:
        sys.exit(f"error: the worker cannot start: {e}")
    finally:
        logging.getLogger("stream_app").removeHandler(handler)
    metrics = WorkerMetrics()
    metrics.model_refusals.inc(len(refused))
    serving = ServingState(recommender, refused=refused)
    settings = with_engine(settings)
    partitions = asyncio.run(ensure_topics(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs one
    app = build_app(settings, serving, partitions, metrics)
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
