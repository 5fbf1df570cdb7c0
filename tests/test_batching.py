"""The ingress batcher: natural batches, every caller gets its own answer, errors reach all."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.batching import Batcher


class Recorder:
    """A batch handler that records batch sizes and can hold a batch until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        return [item * 10 for item in items]


@given(
    items=st.lists(st.integers(-1000, 1000), min_size=1, max_size=80),
    max_batch=st.integers(1, 16),
    in_flight=st.integers(1, 4),
)
@settings(max_examples=60, deadline=None)
def test_every_caller_gets_its_own_answer(items: list[int], max_batch: int, in_flight: int) -> None:
    async def scenario() -> tuple[list[int], Recorder]:
        handler = Recorder()
        batcher = Batcher(handler, max_batch, in_flight)
        return await asyncio.gather(*(batcher.submit(i) for i in items)), handler

    answers, handler = asyncio.run(scenario())
    assert answers == [i * 10 for i in items]
    assert all(1 <= len(b) <= max_batch for b in handler.batches)
    assert sorted(i for b in handler.batches for i in b) == sorted(items)


def test_a_lone_item_leaves_at_once_and_later_ones_batch_while_it_runs() -> None:
    async def scenario() -> list[list[int]]:
        handler = Recorder(hold=True)
        batcher = Batcher(handler, max_batch_size=32, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        assert handler.batches == [[0]]  # dispatched without waiting for company
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        assert len(handler.batches) == 1  # the only slot is busy: the others queue
        handler.release.set()
        await asyncio.gather(first, *rest)
        return handler.batches

    assert asyncio.run(scenario()) == [[0], [1, 2, 3, 4, 5]]


def test_batches_are_capped() -> None:
    async def scenario() -> list[list[int]]:
        handler = Recorder(hold=True)
        batcher = Batcher(handler, max_batch_size=2, max_in_flight=1)
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        handler.release.set()
        await asyncio.gather(*calls)
        return handler.batches

    assert asyncio.run(scenario()) == [[0, 1], [2, 3], [4]]


def test_a_caller_that_gave_up_is_not_computed() -> None:
    async def scenario() -> list[list[int]]:
        handler = Recorder(hold=True)
        batcher = Batcher(handler, max_batch_size=8, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(1), timeout=0.01)
        kept = asyncio.ensure_future(batcher.submit(2))
        handler.release.set()
        await asyncio.gather(first, kept)
        return handler.batches

    assert asyncio.run(scenario()) == [[0], [2]]


def test_a_failing_batch_fails_each_of_its_callers_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple[list[BaseException | int], int]:
        calls = 0

        async def handler(items: list[int]) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("boom")
            return items

        batcher = Batcher(handler, max_batch_size=8, max_in_flight=1)
        failed = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
        return [*failed, await batcher.submit(7)], calls

    results, calls = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in results[:-1])
    assert results[-1] == 7
    assert calls == 2  # all three failed together, in one batch


def test_a_handler_answering_the_wrong_count_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def scenario() -> None:
        await Batcher(short, 4, 1).submit(1)

    with pytest.raises(RuntimeError, match="0 results for 1"):
        asyncio.run(scenario())
