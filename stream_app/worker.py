"""`streamrec worker`: create topics, load the model, run the Faust worker."""

from __future__ import annotations

import asyncio

import faust

from export.registry import Registry
from export.runtime import load_runtime
from stream_app.app import build_app
from stream_app.kafka import ensure_topics
from stream_app.recommender import Recommender
from stream_app.settings import Settings


def load_recommender(settings: Settings) -> Recommender:
    runtime = load_runtime(Registry(settings.registry).load(), intra_op_threads=settings.inference_threads)
    return Recommender.create(runtime, settings.event_weights, settings.top_k, settings.trending_half_life_s)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    recommender = load_recommender(settings)
    partitions = asyncio.run(ensure_topics(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs one
    app = build_app(settings, recommender, partitions)
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
