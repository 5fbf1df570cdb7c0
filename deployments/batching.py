"""Natural batching for the ingress: a batch leaves when a dispatch slot frees up.

Why not `@serve.batch` here: it forms each batch as soon as its wait timeout ends and only
then queues it for a free slot, so at timeout 0 it sent batches of one under load (93 % of
batches at 32 clients, measured), and any timeout above 0 is added to every lone request.
This batcher takes a slot first and then everything queued by that moment: a lone request
leaves at once, and under load each batch carries what arrived while the last one ran.
The Model deployment still merges concurrent calls with `@serve.batch`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[list[R]]],
        max_batch_size: int,
        max_in_flight: int,
    ) -> None:
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._arrived = asyncio.Event()
        self._in_flight = 0
        self._slot_freed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The handler's answer for this item; cancelling the wait drops it if still queued."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_forever())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._arrived.set()
        return await future

    async def _dispatch_forever(self) -> None:
        while True:
            while self._in_flight >= self.max_in_flight:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch: list[tuple[T, asyncio.Future[R]]] = []
            while self._queue and len(batch) < self.max_batch_size:
                item, future = self._queue.popleft()
                if not future.done():  # a caller that gave up is not computed
                    batch.append((item, future))
            if batch:
                self._in_flight += 1
                asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.handler([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler gave {len(results)} results for {len(batch)}")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except asyncio.CancelledError:  # the replica is shutting down
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._in_flight -= 1
            self._slot_freed.set()
