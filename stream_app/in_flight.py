"""One micro-batch in flight: an agent sends a batch's records, then takes the next batch while the broker
acknowledges them, so that wait is no longer on every event's path.

A batch in flight completes (its acknowledgements awaited, its windows written) before the next batch is
handed over, and before the next batch reads the window of a user the two share. Faust acks a batch's events
when the agent takes the next batch; each event here holds one more reference until its batch completes, so
no offset is committed before the records answering it are delivered and its user's window is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine, Sequence

import faust


class InFlight:
    def __init__(self) -> None:
        self._users: Collection[str] = ()
        self._done: asyncio.Task | None = None

    async def wait_for(self, users: Collection[str]) -> None:
        """Wait for the batch in flight to complete if it has any of `users` (it writes their windows)."""
        if self._done is not None and any(user in self._users for user in users):
            await self._done

    async def wait(self) -> None:
        """Wait for the batch in flight to complete (re-raises what it raised)."""
        if self._done is not None:
            await self._done

    async def hand_over(self, batch: Sequence[faust.EventT], users: Collection[str], completion: Coroutine) -> None:
        """Once the batch in flight has completed, put `batch` in flight: `completion` (its users' records
        acknowledged, their windows written) runs while the agent goes on, then the batch's events are acked."""
        for event in batch:
            event.message.incref()  # Faust's own ack, when the agent takes the next batch, leaves it unacked
        try:
            await self.wait()
        except BaseException:
            completion.close()  # never started: the batch stays unacked, and is processed again after a restart
            raise
        self._users, self._done = users, asyncio.create_task(self._complete(batch, completion))

    @staticmethod
    async def _complete(batch: Sequence[faust.EventT], completion: Coroutine) -> None:
        await completion
        for event in batch:
            event.ack()
