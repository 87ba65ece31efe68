"""The console's background reading: the topics it shows, the group's lag and every worker's /health and
/metrics, handed to a `ConsoleState`. Read-only: no consumer group, no commits, nothing produced."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from console.samples import WorkerPoll, parse_metrics
from console.state import ConsoleState
from core.kafka import client_security, read_whole_topic
from core.settings import Settings

log = logging.getLogger(__name__)

RETRY_S = 2.0  # after a broker error, or while a topic does not exist yet
EXPERIMENTS_RETRY_S = 30.0  # the experiments topic may never exist (issue #18)
WORKER_TIMEOUT_S = 2.0
LAG_TIMEOUT_S = 5.0  # a broker that accepts connections but does not answer must not stop the polls


def worker_urls(settings: Settings) -> list[str]:
    """`console.workers`, else the local worker."""
    return [u.rstrip("/") for u in settings.console.workers] or [f"http://127.0.0.1:{settings.worker.web_port}"]


async def follow(
    settings: Settings,
    topic: str,
    handle: Callable,
    readers: dict[str, str],
    keep: int | None = None,
    retry_s: float = RETRY_S,
) -> None:
    """Hand every new record of `topic` to `handle`, starting `keep` records before the end of each
    partition (None: from the start). Waits for a topic that does not exist yet; after a broker error it
    reconnects and goes on where it stopped. `readers[topic]` says how it goes."""
    next_offsets: dict[int, int] = {}
    while True:
        try:
            async with read_whole_topic(settings, topic) as consumer:
                assigned = consumer.assignment()
                if not assigned:
                    readers[topic] = "no such topic (yet)"
                    await asyncio.sleep(retry_s)
                    continue
                ends = await consumer.end_offsets(list(assigned))
                for tp in assigned:
                    if tp.partition in next_offsets:
                        consumer.seek(tp, next_offsets[tp.partition])
                    elif keep is not None:
                        consumer.seek(tp, max(0, ends[tp] - keep))  # before the log start: earliest
                readers[topic] = "reading"
                while True:
                    for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                        for message in messages:
                            handle(message)
                        next_offsets[tp.partition] = messages[-1].offset + 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the broker gone or refusing: say so, and try again
            readers[topic] = f"error: {type(e).__name__}: {e}"
            log.warning("console: reading %s failed (%s); retrying", topic, readers[topic])
            await asyncio.sleep(retry_s)


async def poll_worker(session: aiohttp.ClientSession, url: str) -> WorkerPoll:
    try:
        async with session.get(f"{url}/health") as response:
            health = await response.json(content_type=None)  # 503 bodies say why too
        async with session.get(f"{url}/metrics") as response:
            metrics = parse_metrics(await response.text())
        return WorkerPoll(url, health if isinstance(health, dict) else {"status": "?"}, metrics)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
        return WorkerPoll(url, error=type(e).__name__ if not str(e) else f"{type(e).__name__}: {e}")


class GroupLag:
    """Consumer lag per events partition, as the group committed it (so it shows while every worker is down),
    and the broker's state. One admin client and one offsets-only consumer (never fetches), made again after
    an error."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def poll(self) -> tuple[list[dict], dict]:
        try:
            return await asyncio.wait_for(self._poll(), LAG_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # unreachable, refusing, or no answer in time: new clients next time
            error = f"{type(e).__name__}: {e}".rstrip(": ")
            log.warning("console: the group's lag could not be read (%s)", error)
            await self.close()
            return [], {"status": "unreachable", "error": error}

    async def _poll(self) -> tuple[list[dict], dict]:
        kafka = self.settings.kafka
        if self.admin is None:
            options = {"bootstrap_servers": kafka.bootstrap_servers, **client_security(kafka.security)}
            self.admin, self.consumer = AIOKafkaAdminClient(**options), AIOKafkaConsumer(**options)
            await self.admin.start()
            await self.consumer.start()
        cluster = await self.admin.describe_cluster()
        broker = {
            "status": "up",
            "brokers": len(cluster.get("brokers", [])),
            "controller": cluster.get("controller_id"),
        }
        events = self.settings.topics.events
        # Listed before described: a metadata request naming a missing topic would have the broker create it
        # (auto.create.topics.enable), with its default partition count, before the worker creates it right.
        if events not in await self.admin.list_topics():
            return [], broker | {"note": f"no topic {events!r} yet"}
        (described,) = await self.admin.describe_topics([events])
        tps = [
            TopicPartition(events, p["partition"])
            for p in sorted(described["partitions"], key=lambda p: p["partition"])
        ]
        if set(tps) != self.consumer.assignment():
            self.consumer.assign(tps)
            self.consumer.pause(*tps)  # offsets only: never fetch the events themselves
        # As the broker reports them, on Tansu too: its correction (core.kafka.tansu_end_offsets) reads on until
        # nothing new arrives for 200 ms, which a partition being written never gives (10 s timeouts at 150
        # events/s). Tansu reports the last batch's base offset + 1, so its lag may read up to a batch low.
        ends = await self.consumer.end_offsets(tps)
        committed = await self.admin.list_consumer_group_offsets(self.settings.worker.app_id, partitions=tps)
        rows = []
        for tp in tps:
            done = committed.get(tp)
            at = done.offset if done is not None and done.offset >= 0 else 0
            rows.append({"partition": tp.partition, "end": ends[tp], "committed": at, "lag": max(0, ends[tp] - at)})
        return rows, broker

    async def close(self) -> None:
        for client in (self.consumer, self.admin):
            if client is not None:
                try:
                    await (client.stop() if client is self.consumer else client.close())
                except Exception:  # already broken: nothing to release
                    pass
        self.admin = self.consumer = None


async def poll_forever(settings: Settings, state: ConsoleState, session: aiohttp.ClientSession) -> None:
    """Every `console.poll_interval_s`: each worker's /health and /metrics, and the group's lag."""
    lag = GroupLag(settings)
    urls = worker_urls(settings)
    try:
        while True:
            started = time.monotonic()
            *polls, (partitions, broker) = await asyncio.gather(
                *(poll_worker(session, url) for url in urls), lag.poll()
            )
            state.add_polls({poll.url: poll for poll in polls}, time.time(), partitions, broker)
            await asyncio.sleep(max(0.0, settings.console.poll_interval_s - (time.monotonic() - started)))
    finally:
        await lag.close()


def background_tasks(settings: Settings, state: ConsoleState, session: aiohttp.ClientSession) -> list[asyncio.Task]:
    topics, console = settings.topics, settings.console
    readers = state.readers
    return [
        asyncio.create_task(poll_forever(settings, state, session)),
        asyncio.create_task(
            follow(settings, topics.recommendations, state.add_recommendation, readers, console.recent_recommendations)
        ),
        asyncio.create_task(follow(settings, topics.dlq, state.add_dead_letter, readers, console.dead_letters)),
        asyncio.create_task(follow(settings, topics.model_updates, state.add_model_update, readers, keep=100)),
        asyncio.create_task(follow(settings, topics.items, state.add_item, readers)),
        asyncio.create_task(
            follow(settings, topics.experiments, state.add_experiment, readers, 1, EXPERIMENTS_RETRY_S)
        ),
    ]
