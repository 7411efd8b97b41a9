"""ContextStore: bounds (LRU, TTL, K turns, caps), stream lifecycle, memory estimate and thread safety."""

import dataclasses
import threading
import time

import pytest

from python_backends.context.store import (
    CloudResult,
    ContextStore,
    StoreLimits,
    StreamSnapshot,
    TurnRecord,
)
from python_backends.detections import Detection
from python_backends.errors import InputError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def turn(frame_id: int, question: str = "q", answer: str = "a") -> TurnRecord:
    return TurnRecord(frame_id=frame_id, timestamp_ms=frame_id * 100, question=question, answer=answer)


def result(frame_id: int, text: str = "cloud", n_detections: int = 1, arrived_s: float = 2.0) -> CloudResult:
    detections = tuple(Detection(label=f"obj{i}", bbox=(i, i, i + 10.0, i + 10.0)) for i in range(n_detections))
    return CloudResult(
        frame_id=frame_id,
        frame_timestamp_ms=frame_id * 100,
        sent_s=1.0,
        arrived_s=arrived_s,
        text=text,
        detections=detections,
        frame_size=(224, 224),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_store(clock: FakeClock, **limits) -> ContextStore:
    return ContextStore(StoreLimits(**limits), clock=clock)


# -- records ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent, arrived, expected", [(1.0, 1.25, 250.0), (5.0, 5.0, 0.0), (0.0, 10.0, 10000.0)])
def test_rtt_ms(sent, arrived, expected):
    r = CloudResult(1, 100, sent, arrived, "t", (), (10, 10))
    assert r.rtt_ms == pytest.approx(expected)


@pytest.mark.parametrize(
    "frame_ids, expected",
    [
        ([], None),
        ([3], 3),
        ([1, 2, 3], 3),
        ([5, 2, 3], 5),  # out-of-order arrival: the highest frame wins, not the last arrival
        ([2, 9, 4], 9),
    ],
)
def test_latest_cloud_is_highest_frame(frame_ids, expected):
    snap = StreamSnapshot(stream_id=1, turns=(), cloud_results=tuple(result(f) for f in frame_ids))
    latest = snap.latest_cloud
    assert (latest.frame_id if latest else None) == expected


def test_latest_cloud_same_frame_prefers_later_arrival():
    first, second = result(4, text="first"), result(4, text="second")
    snap = StreamSnapshot(stream_id=1, turns=(), cloud_results=(first, second))
    assert snap.latest_cloud.text == "second"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_streams": 0},
        {"ttl_s": 0},
        {"ttl_s": -1.0},
        {"max_turns": -1},
        {"max_cloud_results": -1},
        {"max_text_chars": -1},
        {"max_detections": -1},
    ],
)
def test_limits_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        StoreLimits(**kwargs)


# -- lifecycle ------------------------------------------------------------------------------------------------------


def test_unknown_stream_has_no_snapshot(clock):
    store = make_store(clock)
    assert store.snapshot(7) is None
    assert not store.has_stream(7)
    assert len(store) == 0


def test_start_stream_creates_empty_state(clock):
    store = make_store(clock)
    store.start_stream(7)
    snap = store.snapshot(7)
    assert snap == StreamSnapshot(stream_id=7, turns=(), cloud_results=())
    assert store.has_stream(7) and len(store) == 1 and store.stream_ids() == [7]


def test_start_stream_resets_existing_state(clock):
    store = make_store(clock)
    store.add_turn(7, turn(1))
    assert store.add_cloud_result(7, result(1))
    store.start_stream(7)
    snap = store.snapshot(7)
    assert snap.turns == () and snap.cloud_results == ()


def test_add_turn_creates_unknown_stream(clock):
    store = make_store(clock)
    store.add_turn(3, turn(1))
    assert store.snapshot(3).turns == (turn(1),)


def test_end_stream_drops_state(clock):
    store = make_store(clock)
    store.add_turn(3, turn(1))
    assert store.end_stream(3) is True
    assert store.snapshot(3) is None
    assert store.end_stream(3) is False
    assert len(store) == 0


def test_end_stream_unknown_returns_false(clock):
    assert make_store(clock).end_stream(42) is False


def test_cloud_result_for_unknown_stream_is_dropped(clock):
    store = make_store(clock)
    assert store.add_cloud_result(5, result(1)) is False
    assert not store.has_stream(5)  # a late answer never brings a stream into existence
    assert len(store) == 0


def test_cloud_result_for_ended_stream_is_dropped(clock):
    store = make_store(clock)
    store.start_stream(5)
    store.end_stream(5)
    assert store.add_cloud_result(5, result(1)) is False
    assert store.snapshot(5) is None


def test_cloud_result_for_live_stream_is_stored(clock):
    store = make_store(clock)
    store.start_stream(5)
    assert store.add_cloud_result(5, result(2, text="a car"))
    assert [r.text for r in store.snapshot(5).cloud_results] == ["a car"]


def test_streams_are_independent(clock):
    store = make_store(clock)
    store.add_turn(1, turn(10, answer="one"))
    store.add_turn(2, turn(20, answer="two"))
    assert store.add_cloud_result(2, result(20))
    assert [t.answer for t in store.snapshot(1).turns] == ["one"]
    assert store.snapshot(1).cloud_results == ()
    assert len(store.snapshot(2).cloud_results) == 1


@pytest.mark.parametrize("bad", ["1", 1.5, None, True])
def test_bad_stream_id_is_input_error(clock, bad):
    store = make_store(clock)
    with pytest.raises(InputError):
        store.add_turn(bad, turn(1))


def test_snapshot_is_immutable_copy(clock):
    store = make_store(clock)
    store.add_turn(1, turn(1))
    snap = store.snapshot(1)
    store.add_turn(1, turn(2))
    assert snap.turns == (turn(1),)
    assert isinstance(snap.turns, tuple) and isinstance(snap.cloud_results, tuple)


# -- bounds: K turns, cloud results, truncation -----------------------------------------------------------------------


@pytest.mark.parametrize("max_turns, added", [(1, 5), (3, 3), (3, 10), (8, 2), (0, 4)])
def test_keeps_last_k_turns(clock, max_turns, added):
    store = make_store(clock, max_turns=max_turns)
    for frame in range(added):
        store.add_turn(1, turn(frame))
    kept = [t.frame_id for t in store.snapshot(1).turns]
    assert kept == list(range(max(0, added - max_turns), added))


@pytest.mark.parametrize("max_results, added", [(1, 3), (2, 2), (4, 10)])
def test_keeps_last_cloud_results(clock, max_results, added):
    store = make_store(clock, max_cloud_results=max_results)
    store.start_stream(1)
    for frame in range(added):
        assert store.add_cloud_result(1, result(frame))
    assert [r.frame_id for r in store.snapshot(1).cloud_results] == list(range(added))[-max_results:]


@pytest.mark.parametrize("limit, length", [(4, 10), (10, 10), (10, 3), (0, 5)])
def test_turn_texts_are_truncated(clock, limit, length):
    store = make_store(clock, max_text_chars=limit)
    store.add_turn(1, turn(1, question="q" * length, answer="a" * length))
    stored = store.snapshot(1).turns[0]
    assert stored.question == "q" * min(limit, length)
    assert stored.answer == "a" * min(limit, length)
    assert stored.frame_id == 1 and stored.timestamp_ms == 100


@pytest.mark.parametrize("limit, length", [(4, 10), (10, 10), (10, 3)])
def test_cloud_text_is_truncated(clock, limit, length):
    store = make_store(clock, max_text_chars=limit)
    store.start_stream(1)
    store.add_cloud_result(1, result(1, text="x" * length))
    assert store.snapshot(1).cloud_results[0].text == "x" * min(limit, length)


@pytest.mark.parametrize("limit, length", [(4, 10), (10, 10), (10, 3)])
def test_the_question_a_cloud_answer_answered_is_truncated_too(clock, limit, length):
    store = make_store(clock, max_text_chars=limit)
    store.start_stream(1)
    store.add_cloud_result(1, dataclasses.replace(result(1), question="q" * length))
    store.add_cloud_result(1, result(2))
    first, second = store.snapshot(1).cloud_results
    assert first.question == "q" * min(limit, length) and second.question is None


@pytest.mark.parametrize("limit, count", [(2, 5), (5, 5), (5, 1), (0, 3)])
def test_detections_are_cut(clock, limit, count):
    store = make_store(clock, max_detections=limit)
    store.start_stream(1)
    original = result(1, n_detections=count)
    store.add_cloud_result(1, original)
    stored = store.snapshot(1).cloud_results[0]
    assert stored.detections == original.detections[:limit]
    assert isinstance(stored.detections, tuple)


def test_detections_given_as_list_are_stored_as_tuple(clock):
    store = make_store(clock)
    store.start_stream(1)
    r = CloudResult(1, 100, 0.0, 1.0, "t", [Detection("car", (0, 0, 1, 1))], (10, 10))  # type: ignore[arg-type]
    store.add_cloud_result(1, r)
    assert store.snapshot(1).cloud_results[0].detections == (Detection("car", (0, 0, 1, 1)),)


# -- bounds: LRU ----------------------------------------------------------------------------------------------------


def test_lru_evicts_oldest_when_full(clock):
    store = make_store(clock, max_streams=3)
    for sid in (1, 2, 3, 4):
        store.start_stream(sid)
    assert store.stream_ids() == [2, 3, 4]
    assert store.evicted == 1


def test_snapshot_refreshes_lru(clock):
    store = make_store(clock, max_streams=3)
    for sid in (1, 2, 3):
        store.start_stream(sid)
    assert store.snapshot(1) is not None  # 1 becomes the most recent; 2 is now the oldest
    store.start_stream(4)
    assert store.stream_ids() == [3, 1, 4]


def test_add_turn_refreshes_lru(clock):
    store = make_store(clock, max_streams=2)
    store.add_turn(1, turn(1))
    store.add_turn(2, turn(1))
    store.add_turn(1, turn(2))
    store.add_turn(3, turn(1))
    assert store.stream_ids() == [1, 3]


def test_cloud_result_does_not_refresh_lru(clock):
    store = make_store(clock, max_streams=2)
    store.start_stream(1)
    store.start_stream(2)
    store.add_cloud_result(1, result(1))
    store.start_stream(3)
    assert store.stream_ids() == [2, 3]


def test_restart_of_known_stream_does_not_evict(clock):
    store = make_store(clock, max_streams=2)
    store.start_stream(1)
    store.start_stream(2)
    store.start_stream(1)
    assert sorted(store.stream_ids()) == [1, 2] and store.evicted == 0


@pytest.mark.parametrize("max_streams, added", [(1, 5), (4, 10), (16, 16)])
def test_stream_count_bounded(clock, max_streams, added):
    store = make_store(clock, max_streams=max_streams)
    for sid in range(added):
        store.add_turn(sid, turn(0))
    assert len(store) == min(max_streams, added)
    assert store.evicted == max(0, added - max_streams)
    assert store.stream_ids() == list(range(added))[-max_streams:]


# -- bounds: TTL ----------------------------------------------------------------------------------------------------


def test_ttl_purges_idle_streams(clock):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(5)
    store.start_stream(2)
    clock.advance(6)  # 1 idle for 11 s, 2 for 6 s
    assert store.purge_expired() == [1]
    assert store.stream_ids() == [2]
    assert store.expired == 1


def test_ttl_boundary_is_inclusive(clock):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(10.0)
    assert store.purge_expired() == []
    clock.advance(0.001)
    assert store.purge_expired() == [1]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.snapshot(1),
        lambda s: s.has_stream(1),
        lambda s: len(s),
        lambda s: s.stream_ids(),
        lambda s: s.add_turn(2, turn(1)),
        lambda s: s.start_stream(2),
        lambda s: s.end_stream(2),
        lambda s: s.add_cloud_result(2, result(1)),
    ],
)
def test_ttl_purge_is_lazy_on_every_call(clock, call):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(11)
    call(store)
    assert store.expired == 1
    assert 1 not in store.stream_ids()


def test_snapshot_refreshes_ttl(clock):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(8)
    assert store.snapshot(1) is not None
    clock.advance(8)
    assert store.snapshot(1) is not None  # idle 8 s since the last snapshot, not 16 s
    clock.advance(11)
    assert store.snapshot(1) is None


def test_add_turn_refreshes_ttl(clock):
    store = make_store(clock, ttl_s=10.0)
    store.add_turn(1, turn(1))
    clock.advance(8)
    store.add_turn(1, turn(2))
    clock.advance(8)
    assert store.has_stream(1)


def test_cloud_result_does_not_refresh_ttl(clock):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(8)
    assert store.add_cloud_result(1, result(1))
    clock.advance(3)  # 11 s since the stream was last used by its client
    assert not store.has_stream(1)


def test_cloud_result_for_expired_stream_is_dropped(clock):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(11)
    assert store.add_cloud_result(1, result(1)) is False
    assert store.snapshot(1) is None


def test_purge_expired_returns_ids_oldest_first(clock):
    store = make_store(clock, ttl_s=10.0)
    for sid in (5, 3, 9):
        store.start_stream(sid)
        clock.advance(1)
    store.start_stream(1)
    clock.advance(10.5)  # 5, 3, 9 idle > 10 s; 1 idle 10.5 s too
    assert store.purge_expired() == [5, 3, 9, 1]
    assert len(store) == 0 and store.expired == 4


def test_clock_going_backwards_does_not_break_order(clock):
    store = make_store(clock, ttl_s=10.0)
    store.start_stream(1)
    clock.advance(-5)  # a clock read in another thread can come in late
    store.start_stream(2)
    clock.advance(5 + 10.5)
    assert store.purge_expired() == [1, 2]


# -- memory ---------------------------------------------------------------------------------------------------------


def fill(store: ContextStore, sid: int, turns: int, results: int = 0, chars: int = 40) -> None:
    for frame in range(turns):
        q, a = f"question {frame} " + "q" * chars, f"answer {frame} " + "a" * chars
        store.add_turn(sid, turn(frame, question=q, answer=a))
    for frame in range(results):
        store.add_cloud_result(sid, result(frame, text=f"cloud {frame} " + "c" * chars, n_detections=3))


def test_memory_grows_with_content(clock):
    store = make_store(clock)
    empty = store.memory_bytes()
    store.start_stream(1)
    one_stream = store.memory_bytes()
    fill(store, 1, turns=4)
    with_turns = store.memory_bytes()
    fill(store, 1, turns=0, results=2)
    with_results = store.memory_bytes()
    assert empty < one_stream < with_turns < with_results


def test_memory_grows_with_text_length(clock):
    short, long = make_store(clock), make_store(clock)
    fill(short, 1, turns=4, chars=10)
    fill(long, 1, turns=4, chars=500)
    assert long.memory_bytes() > short.memory_bytes() + 4 * 2 * 400


def test_memory_bounded_by_k_turns(clock):
    k = 8
    store = make_store(clock, max_turns=k, max_cloud_results=4)
    fill(store, 1, turns=k, results=4)
    at_k = store.memory_bytes()
    fill(store, 1, turns=10 * k, results=40)
    after = store.memory_bytes()
    assert after <= at_k * 1.1  # only digit counts in the texts differ


def test_memory_bounded_by_text_limit(clock):
    store = make_store(clock, max_text_chars=64)
    fill(store, 1, turns=8, chars=60)
    capped = store.memory_bytes()
    big = make_store(clock, max_text_chars=64)
    fill(big, 1, turns=8, chars=100_000)
    assert big.memory_bytes() <= capped * 1.1


def test_memory_drops_when_stream_ends(clock):
    store = make_store(clock)
    fill(store, 1, turns=8, results=4)
    filled = store.memory_bytes()
    store.end_stream(1)
    assert store.memory_bytes() < filled / 4  # only the OrderedDict's (possibly grown) table is left


def test_memory_scales_with_streams(clock):
    store = make_store(clock)
    fill(store, 1, turns=8, results=4)
    one = store.memory_bytes()
    for sid in range(2, 11):
        fill(store, sid, turns=8, results=4)
    ten = store.memory_bytes()
    assert 8 * one < ten < 12 * one


# -- threads --------------------------------------------------------------------------------------------------------

THREAD_WAIT_S = 60.0


def run_until(done, errors: list[BaseException], stop: threading.Event) -> None:
    """Lets the threads work until `done()` (or one of them failed), then stops them; a generous deadline keeps a
    hung thread from hanging the test."""
    deadline = time.monotonic() + THREAD_WAIT_S
    while not done() and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()


def test_concurrent_writer_and_reader():
    k, max_results = 4, 3
    store = ContextStore(StoreLimits(max_turns=k, max_cloud_results=max_results, max_streams=8))
    stream_ids = list(range(4))
    for sid in stream_ids:
        store.start_stream(sid)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"writes": 0, "reads": 0}

    def writer() -> None:
        frame = 0
        try:
            while not stop.is_set():
                frame += 1
                for sid in stream_ids:
                    store.add_turn(sid, turn(frame, answer=f"{sid}:{frame}"))
                    store.add_cloud_result(sid, result(frame, text=f"{sid}:{frame}"))
                counts["writes"] += 1
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for sid in stream_ids:
                    snap = store.snapshot(sid)
                    assert snap is not None and snap.stream_id == sid
                    assert len(snap.turns) <= k and len(snap.cloud_results) <= max_results
                    frames = [t.frame_id for t in snap.turns]
                    assert frames == sorted(frames) and len(set(frames)) == len(frames)
                    assert all(t.answer == f"{sid}:{t.frame_id}" for t in snap.turns)
                    assert all(r.text == f"{sid}:{r.frame_id}" for r in snap.cloud_results)
                    result_frames = [r.frame_id for r in snap.cloud_results]
                    assert result_frames == sorted(result_frames)
                    # consecutive frames: no lost or duplicated append
                    assert frames == list(range(frames[0], frames[0] + len(frames))) if frames else True
                store.memory_bytes()
                counts["reads"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    run_until(lambda: counts["writes"] >= 200 and counts["reads"] >= 200, errors, stop)
    for t in threads:
        t.join(timeout=THREAD_WAIT_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert counts["writes"] >= 200 and counts["reads"] >= 200
    assert len(store) == len(stream_ids)
    for sid in stream_ids:
        assert len(store.snapshot(sid).turns) == k


def test_concurrent_lifecycle_and_cloud_results():
    """Streams started and ended while the cloud thread writes: results land only in live streams, nothing raises."""
    store = ContextStore(StoreLimits(max_streams=4))
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"lifecycle": 0, "cloud": 0}

    def lifecycle() -> None:
        try:
            n = 0
            while not stop.is_set():
                sid = n % 8
                store.start_stream(sid)
                store.add_turn(sid, turn(n))
                store.snapshot(sid)
                if n % 3 == 0:
                    store.end_stream(sid)
                n += 1
                counts["lifecycle"] = n
        except BaseException as exc:
            errors.append(exc)

    def cloud() -> None:
        try:
            n = 0
            while not stop.is_set():
                store.add_cloud_result(n % 8, result(n))
                n += 1
                counts["cloud"] = n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lifecycle), threading.Thread(target=cloud)]
    for t in threads:
        t.start()
    run_until(lambda: counts["lifecycle"] >= 500 and counts["cloud"] >= 500, errors, stop)
    for t in threads:
        t.join(timeout=THREAD_WAIT_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert counts["lifecycle"] >= 500 and counts["cloud"] >= 500
    assert len(store) <= 4
