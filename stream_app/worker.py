"""`streamrec worker`: create topics, load the model, run the Faust worker."""

from __future__ import annotations

import asyncio

import faiss
import faust

from stream_app.app import build_app
from stream_app.kafka import ensure_topics
from stream_app.serving import ServingState, load_recommender
from stream_app.settings import Settings


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    faiss.omp_set_num_threads(settings.inference_threads)  # FAISS would take every core (DESIGN.md: one)
    serving = ServingState(load_recommender(settings))
    partitions = asyncio.run(ensure_topics(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs one
    app = build_app(settings, serving, partitions)
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
