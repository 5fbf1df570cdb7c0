"""Deadline-aware admission: what it learns from batches and when it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.admission import Admission
from handai.errors import HandaiError


def busy_graph(per_read_s: float, batches: int = 40, size: int = 8) -> Admission:
    """An admission that watched a saturated graph answer a read every `per_read_s`."""
    adm = Admission(max_wait_s=0.15, deadline_s=5.0, max_pending=256)
    now = 0.0
    for _ in range(batches):
        # Batches overlap: each was sent long before the one before it came back.
        adm.batch_done(size, began=now - 1.0, now=now + size * per_read_s)
        now += size * per_read_s
    return adm


def test_a_busy_graph_is_timed_by_the_gap_between_answers() -> None:
    adm = busy_graph(0.005)
    assert adm.per_read_s == pytest.approx(0.005, rel=0.01)


def test_lone_reads_after_idle_spells_do_not_set_the_cost_of_a_read_under_load() -> None:
    """A batch of one takes 20 ms; 32 reads at once go through in batches at ~5 ms each.
    Learning 20 ms from idle batches refused most of the next burst."""
    adm = busy_graph(0.005)
    for k in range(40):
        adm.batch_done(1, began=100.0 + 10.0 * k, now=100.0 + 10.0 * k + 0.02)
    assert adm.per_read_s == pytest.approx(0.005, rel=0.01)
    assert adm.batch_s == pytest.approx(0.02, rel=0.01)


def test_reads_are_admitted_until_the_expected_wait_passes_the_budget() -> None:
    adm = busy_graph(0.005)
    adm.per_read_s = 0.004  # 150 ms of budget: 37 reads ahead still fit, 38 do not
    for _ in range(38):
        adm.admit()
    with pytest.raises(HandaiError) as refused:
        adm.admit()
    assert refused.value.code == "overloaded" and refused.value.retry_after_s == 1
    adm.release()  # one answered: room for exactly one more
    adm.admit()
    assert adm.pending == 38


def test_a_read_that_would_miss_its_deadline_is_refused() -> None:
    adm = Admission(max_wait_s=10.0, deadline_s=0.45, max_pending=256)
    adm.batch_done(4, began=0.0, now=0.4)  # slow batches: 0.4 s each
    adm.per_read_s, adm.batch_s = 0.1, 0.4
    adm.admit()  # alone: it can only wait for its own batch
    with pytest.raises(HandaiError):
        adm.admit()  # 0.1 s behind the first plus its own 0.4 s batch > 0.45 s


def test_the_hard_cap_holds_whatever_the_estimate() -> None:
    adm = Admission(max_wait_s=100.0, deadline_s=100.0, max_pending=3)
    adm.per_read_s = 0.0
    for _ in range(3):
        adm.admit()
    with pytest.raises(HandaiError):
        adm.check()


def test_retry_after_says_when_the_queue_will_have_drained() -> None:
    adm = Admission(max_wait_s=0.1, deadline_s=60.0, max_pending=1000)
    adm.per_read_s = 0.05
    adm.pending = 100  # 5 s of reads ahead
    with pytest.raises(HandaiError) as refused:
        adm.check()
    assert refused.value.retry_after_s == 5


@given(
    batches=st.lists(
        st.tuples(st.integers(1, 64), st.floats(0.0, 2.0), st.floats(1e-4, 1.0)), max_size=50
    )
)
@settings(max_examples=100, deadline=None)
def test_estimates_stay_positive_and_finite(batches: list[tuple[int, float, float]]) -> None:
    adm = Admission(max_wait_s=0.15, deadline_s=5.0, max_pending=256)
    now = 0.0
    for size, gap, took in batches:
        now += gap
        adm.batch_done(size, began=now, now=now + took)
        now += took
        assert 0.0 <= adm.per_read_s < 10.0 and 0.0 <= adm.batch_s < 10.0


def test_a_refusal_survives_the_trip_between_processes() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(HandaiError("overloaded", "busy", retry_after_s=3)))
    assert (error.code, error.message, error.retry_after_s) == ("overloaded", "busy", 3)


def test_with_no_live_replica_one_read_probes_and_the_rest_are_told_to_retry() -> None:
    adm = Admission(max_wait_s=0.15, deadline_s=5.0, max_pending=256)
    adm.down = True
    adm.admit()  # the probe
    with pytest.raises(HandaiError) as refused:
        adm.admit()
    assert refused.value.code == "service_not_ready" and refused.value.retry_after_s == 1
    adm.batch_done(1, began=0.0, now=0.02)  # the probe was answered: a replica is back
    adm.release()
    assert not adm.down
    adm.admit()
    adm.admit()


def test_a_batch_worth_of_reads_is_admitted_whatever_the_estimate() -> None:
    """A model swap stalls the graph for a moment: four clients must not be turned away."""
    adm = Admission(max_wait_s=0.2, deadline_s=5.0, max_pending=256, always=32)
    adm.per_read_s = 1.0  # a stall: every read looks like a second's work
    for _ in range(32):
        adm.admit()
    with pytest.raises(HandaiError):
        adm.admit()


def test_a_read_that_outlives_a_replica_death_is_told_to_retry_not_timed_out() -> None:
    """Reads queued when a replica died, or probing while none is back, used to run out
    their deadline and answer 504; the graph is being mended, so they answer 503."""
    adm = Admission(max_wait_s=0.2, deadline_s=5.0, max_pending=256)
    first = adm.admit()
    adm.batch_done(8, began=first.admitted_at, now=first.admitted_at + 0.1)
    late = adm.admit()  # the graph answers others while it waits
    for k in range(10):
        at = late.admitted_at + 0.5 * k
        adm.batch_done(8, began=at, now=at + 0.1)
    assert adm.timed_out(late, now=late.admitted_at + 5.0).code == "timeout"
    caught = adm.admit()
    adm.replica_failed()  # its batch lost the replica; the retry is under way
    adm.batch_done(8, began=caught.admitted_at, now=caught.admitted_at + 0.1)
    refused = adm.timed_out(caught, now=caught.admitted_at + 0.2)
    assert (refused.code, refused.retry_after_s) == ("service_not_ready", 1)
    assert not adm.down  # one death with a survivor does not turn new reads away
    adm.replica_failed(none_left=True)
    for _ in (first, late, caught):
        adm.release()
    probe = adm.admit()  # a probe while none is live
    assert adm.timed_out(probe, now=probe.admitted_at + 0.1).code == "service_not_ready"


def test_a_graph_that_answers_nothing_for_seconds_is_down() -> None:
    """Serve holds a call to a killed replica until its successor starts: nothing fails,
    nothing is answered. A read timing out then is told to retry, and so are new reads."""
    adm = Admission(max_wait_s=0.2, deadline_s=5.0, max_pending=256)
    early = adm.admit()
    adm.batch_done(8, began=early.admitted_at, now=early.admitted_at + 0.05)  # just before
    held = [adm.admit() for _ in range(3)]
    assert adm.timed_out(held[0], now=held[0].admitted_at + 5.0).code == "service_not_ready"
    assert adm.down
    with pytest.raises(HandaiError) as refused:
        adm.admit()
    assert refused.value.code == "service_not_ready"
    adm.batch_done(3, began=held[0].admitted_at, now=held[0].admitted_at + 9.0)
    assert not adm.down


def test_a_deadline_tighter_than_a_batch_is_a_timeout_not_an_outage() -> None:
    adm = Admission(max_wait_s=0.2, deadline_s=0.01, max_pending=256)
    read = adm.admit()  # nothing answered yet, ever: but it waited only 10 ms
    assert adm.timed_out(read, now=read.admitted_at + 0.01).code == "timeout"
    assert not adm.down


def test_a_read_held_through_a_silence_is_told_to_retry_even_once_it_ends() -> None:
    """Reads held while a killed replica restarts can time out just after its successor
    answers a first batch: they too waited on a graph being mended, not a slow one."""
    adm = Admission(max_wait_s=0.2, deadline_s=5.0, max_pending=256)
    held = adm.admit()  # the replica dies; nothing is answered for 9 s
    back = held.admitted_at + 9.0
    adm.batch_done(1, began=held.admitted_at, now=back)  # a probe answered by the successor
    adm.release()
    assert not adm.down
    assert adm.timed_out(held, now=back + 0.1).code == "service_not_ready"
    later = adm.admit(now=back + 1.0)  # after the silence: a slow read is a timeout again
    for k in range(10):
        at = later.admitted_at + 0.5 * k
        adm.batch_done(8, began=at, now=at + 0.1)
    assert adm.timed_out(later, now=later.admitted_at + 5.0).code == "timeout"
