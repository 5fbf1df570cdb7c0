"""Deadline-aware admission: a read that would wait too long is refused before it queues.

Counting reads in flight is not enough: 256 admitted reads at ~180 reads/s wait 1.4 s
each, and under a flood the answered ones took 14.8 s (p99) while others timed out. This
estimates how long a new read would wait behind those already admitted, from the rate at
which the graph has recently been answering, and refuses it at once (503 overloaded with
Retry-After) when that wait exceeds the wait budget or would run past the read's deadline.
It also tells a graph being mended (a replica lost, or nothing answered for seconds) from a
slow one, so such reads answer 503 service_not_ready, to retry, rather than 504.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import NamedTuple

from handai.errors import HandaiError

SMOOTHING = 0.2  # weight of the newest batch in the running batch time
WINDOW = 32  # busy answers the cost of a read is measured over
# Seconds per read under load until a busy graph has been timed: ~2.9 ms measured here at
# 32 clients, so a burst of a batch and more fits `max_wait_ms` before any timing.
FIRST_GUESS_S = 0.003
STALL_S = 2.0  # no batch takes this long here: a graph silent this long is being mended


def _mending() -> HandaiError:
    return HandaiError(
        "service_not_ready", "a replica is restarting; retry shortly", retry_after_s=1
    )


class Ticket(NamedTuple):
    admitted_at: float  # perf_counter()
    failures: int  # replica failures seen before it was admitted


class Admission:
    def __init__(
        self, max_wait_s: float, deadline_s: float, max_pending: int, always: int = 0
    ) -> None:
        self.max_wait_s = max_wait_s
        self.deadline_s = deadline_s
        self.max_pending = max_pending
        # Up to this many reads (a batch's worth) are always admitted: they ride the next
        # batch whatever the estimate says, and a stall (a model swap, a slow batch) must not
        # turn a handful of clients away.
        self.always = always
        self.pending = 0  # admitted and not yet answered
        self.per_read_s = FIRST_GUESS_S  # graph time per read at the current load
        self.batch_s = 0.0  # how long one batch takes through the graph
        self._last_done = -math.inf  # when the last batch was answered
        self._busy: deque[tuple[float, int]] = deque(maxlen=WINDOW)  # (gap, reads answered)
        self.down = False  # no live replica, or a silent graph; cleared by the next answer
        self.failures = 0  # batches that lost a replica, ever: a read compares counts
        self._busy_since = -math.inf  # when the graph last went from idle to busy
        self._outage_end = -math.inf  # when the last silence of STALL_S or more ended

    def expected_wait_s(self) -> float:
        """Time for the graph to answer everything admitted before a new read."""
        return self.pending * self.per_read_s

    def check(self) -> None:
        """Raise 503 overloaded when a read arriving now would wait too long.

        Called before a read's body is read, and again by `admit` once it has been: an
        upload still arriving is not counted, so slow clients cannot crowd out fast ones.
        """
        if self.down and self.pending:
            # One read at a time finds out whether a replica is back; the rest are told to
            # retry instead of waiting out their deadline for a replica still starting.
            raise _mending()
        if self.pending < min(self.always, self.max_pending):
            return
        wait = self.expected_wait_s()
        if (
            self.pending >= self.max_pending
            or wait > self.max_wait_s
            or (self.pending and wait + self.batch_s > self.deadline_s)
        ):
            raise HandaiError(
                "overloaded",
                f"about {wait * 1000:.0f} ms of reads are queued; retry shortly",
                retry_after_s=max(1, math.ceil(wait)),
            )

    def admit(self, now: float | None = None) -> Ticket:
        """Check, then count the read in; pair with `release` when it is answered."""
        self.check()
        now = time.perf_counter() if now is None else now
        if self.pending == 0:
            self._busy_since = now
        self.pending += 1
        return Ticket(now, self.failures)

    def release(self) -> None:
        self.pending -= 1

    def replica_failed(self, none_left: bool = False) -> None:
        """A batch lost its replica; with `none_left` (its retry found no live one either) new
        reads are told so at once until a batch is answered again."""
        self.failures += 1
        self.down = self.down or none_left

    def _quiet_since(self) -> float:
        """Since when the graph has had reads in flight and answered none."""
        return max(self._last_done, self._busy_since)

    def timed_out(self, ticket: Ticket, now: float | None = None) -> HandaiError:
        """What a read that ran out its deadline answers. When a replica died while it waited,
        or the graph answered nothing for STALL_S or more of its wait (Serve holds calls to a
        killed replica until its successor is up, ~10 s), the graph is being mended: 503, to
        retry; while that silence lasts, new reads are told so at once. A 504 is left for a
        read that was slow while others were answered, or whose deadline is tighter than a
        batch takes."""
        now = time.perf_counter() if now is None else now
        if min(now - ticket.admitted_at, now - self._quiet_since()) >= STALL_S:
            self.down = True  # silent still: cleared by the next answered batch
        mended = self._outage_end > ticket.admitted_at  # it waited through a silence
        if self.down or mended or self.failures != ticket.failures:
            return _mending()
        return HandaiError("timeout", f"no answer within {self.deadline_s:g} s")

    def batch_done(self, size: int, began: float, now: float | None = None) -> None:
        """Learn from a batch of `size` reads sent at `began` (perf_counter) and answered now.

        Only a busy graph says what a read costs under load: there, the gap between answers
        over the reads answered is the cost of one (batches overlap, so a batch's own time
        overstates it). A batch after an idle spell is small and slow per read; learning from
        it would refuse the next burst that larger batches would have absorbed.
        """
        now = time.perf_counter() if now is None else now
        if now - self._quiet_since() >= STALL_S:
            self._outage_end = now  # reads that waited through it were not merely slow
        last = self._last_done
        if last > began:
            # A ratio over a window, not a running mean of ratios: batches the Model merged
            # come back together, one gap near zero and the next twice as long.
            self._busy.append((now - last, size))
            self.per_read_s = sum(g for g, _ in self._busy) / sum(n for _, n in self._busy)
        self.batch_s += SMOOTHING * (max(now - began, 0.0) - self.batch_s)
        self._last_done = now
        self.down = False
