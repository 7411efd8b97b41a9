"""CloudLink with a fake async client: never blocking, no backlog, routing, error kinds, delay, close, callbacks.

Waits are event-based with generous timeouts and nothing asserts how long a call took: "never blocks" means a call
returned while the fake cloud was still held back, so the tests hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from python_backends.cloud.breaker import CircuitBreaker, CloudState
from python_backends.cloud.delay import ConstantDelay, NoDelay
from python_backends.cloud.link import CloudJob, CloudLink, CloudReply, _default_client_factory, classify_error
from python_backends.cloud.request import RECONNECT_BACKOFF_MS
from python_backends.detections import Detection

WAIT_S = 10.0
DETECTIONS = json.dumps([{"bbox_2d": [1, 2, 30, 40], "label": "car"}])


class FakeResult:
    def __init__(self, outputs: dict[str, Any]) -> None:
        self._outputs = outputs

    def as_numpy(self, name: str):
        value = self._outputs.get(name)
        return None if value is None else np.array([[value]], dtype=np.object_)


class FakeCall:
    def __init__(self, model_name: str, inputs: list, outputs: list | None, client_timeout: float | None) -> None:
        self.model_name = model_name
        self.inputs = {i.name(): i for i in inputs}
        self.outputs = [o.name() for o in outputs or []]
        self.client_timeout = client_timeout
        self.cancelled = False

    def bytes_input(self, name: str) -> bytes:
        return deserialize_bytes_tensor(self.inputs[name]._get_content())[0]

    @property
    def prompt(self) -> str:
        return self.bytes_input("PROMPT").decode()


Behaviour = Callable[[FakeCall], Awaitable[FakeResult]]


async def answer(call: FakeCall) -> FakeResult:
    return FakeResult({"TEXT": f"answer to {call.prompt}".encode(), "DETECTIONS": DETECTIONS.encode()})


class FakeClient:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[FakeCall] = []
        self.closed = False
        self.created_in = threading.current_thread().name

    async def infer(self, model_name, inputs, outputs=None, client_timeout=None):
        call = FakeCall(model_name, inputs, outputs, client_timeout)
        self.calls.append(call)
        try:
            return await self.behaviour(call)
        except asyncio.CancelledError:
            call.cancelled = True
            raise

    async def close(self) -> None:
        self.closed = True


class Factory:
    def __init__(self, behaviour: Behaviour = answer) -> None:
        self.behaviour = behaviour
        self.clients: list[FakeClient] = []

    def __call__(self, url: str) -> FakeClient:
        client = FakeClient(self.behaviour)
        self.clients.append(client)
        return client

    @property
    def calls(self) -> list[FakeCall]:
        return [c for client in self.clients for c in client.calls]


class Recorder:
    """Collects callbacks from the loop thread; tests wait on it instead of sleeping."""

    def __init__(self) -> None:
        self.replies: list[CloudReply] = []
        self.errors: list[tuple[CloudJob, str]] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def on_reply(self, reply: CloudReply) -> None:
        with self._cond:
            self.replies.append(reply)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def on_error(self, job: CloudJob, kind: str) -> None:
        with self._cond:
            self.errors.append((job, kind))
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, replies: int = 0, errors: int = 0, timeout: float = WAIT_S) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.replies) >= replies and len(self.errors) >= errors, timeout=timeout
            )
        assert ok, f"waited for {replies} replies / {errors} errors, got {len(self.replies)} / {len(self.errors)}"


def image(h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def job(stream: int = 1, frame: int = 0, **kwargs) -> CloudJob:
    fields = dict(
        stream_id=stream, frame_id=frame, frame_timestamp_ms=frame * 100, prompt=f"q{stream}-{frame}", max_tokens=16
    )
    fields.update(kwargs)
    if "image" not in fields and "image_bytes" not in fields:
        fields["image"] = image()
    return CloudJob(**fields)


@pytest.fixture
def make_link():
    links: list[CloudLink] = []

    def make(behaviour: Behaviour = answer, **kwargs) -> tuple[CloudLink, Factory, Recorder]:
        factory = Factory(behaviour)
        recorder = Recorder()
        kwargs.setdefault("on_reply", recorder.on_reply)
        kwargs.setdefault("on_error", recorder.on_error)
        link = CloudLink("cloud.invalid:8001", client_factory=factory, **kwargs)
        link.start()
        links.append(link)
        return link, factory, recorder

    yield make
    for link in links:
        link.close()


def test_reply_routed_with_its_job_and_request_built(make_link):
    link, factory, recorder = make_link(jpeg_quality=70)
    jobs = [job(stream=1, frame=3), job(stream=2, frame=5)]
    assert [link.submit(j) for j in jobs] == ["sent", "sent"]
    recorder.wait(replies=2)
    by_job = {id(r.job): r for r in recorder.replies}
    for j in jobs:
        reply = by_job[id(j)]
        assert reply.job is j
        assert reply.text == f"answer to {j.prompt}"
        assert reply.detections == (Detection(label="car", bbox=(1.0, 2.0, 30.0, 40.0)),)
        assert reply.frame_size == (48, 64)
        assert reply.arrived_s >= reply.sent_s and reply.rtt_ms >= 0
    assert recorder.threads == {"spotvlm-cloud"}
    assert factory.clients[0].created_in == "spotvlm-cloud"  # the client is made inside the loop thread
    call = factory.calls[0]
    assert call.model_name == "lvlm"
    assert call.outputs == ["TEXT", "DETECTIONS"]
    assert 0 < call.client_timeout <= 10.0
    assert {n: (i.shape(), i.datatype()) for n, i in call.inputs.items()} == {
        "IMAGE_BYTES": ([1, 1], "BYTES"),
        "PROMPT": ([1, 1], "BYTES"),
        "MAX_TOKENS": ([1, 1], "INT32"),
    }
    with Image.open(io.BytesIO(call.bytes_input("IMAGE_BYTES"))) as sent:
        assert sent.format == "JPEG" and sent.size == (64, 48)
    stats = link.stats()
    assert stats["sent"] == 2 and stats["replies"] == 2 and stats["inflight"] == 0
    assert stats["last_rtt_ms"] is not None
    assert link.state is CloudState.OK


def test_max_side_downscales_and_frame_size_is_what_was_sent(make_link):
    link, factory, recorder = make_link(max_side=32)
    link.submit(job(image=image(100, 200)))
    recorder.wait(replies=1)
    assert recorder.replies[0].frame_size == (16, 32)
    with Image.open(io.BytesIO(factory.calls[0].bytes_input("IMAGE_BYTES"))) as sent:
        assert sent.size == (32, 16)


def test_image_bytes_are_sent_as_is_with_their_size(make_link):
    buffer = io.BytesIO()
    Image.fromarray(image(30, 40)).save(buffer, format="PNG")
    link, factory, recorder = make_link()
    link.submit(job(image_bytes=buffer.getvalue()))
    recorder.wait(replies=1)
    assert recorder.replies[0].frame_size == (30, 40)
    assert factory.calls[0].bytes_input("IMAGE_BYTES") == buffer.getvalue()


def test_submit_never_blocks_and_no_backlog_builds(make_link):
    cloud_may_answer = threading.Event()

    async def held_back(call: FakeCall) -> FakeResult:
        while not cloud_may_answer.is_set():
            await asyncio.sleep(0.01)
        return await answer(call)

    link, factory, recorder = make_link(held_back)
    decisions = [link.submit(job(stream=1, frame=frame)) for frame in range(10)]
    # Every submit returned while the cloud could not answer yet: submit does not wait on the cloud.
    assert decisions == ["sent"] + ["skipped_busy"] * 9
    assert recorder.replies == []
    cloud_may_answer.set()
    recorder.wait(replies=1)
    assert recorder.replies[0].job.frame_id == 0
    # Skipped frames were never queued: one call for one frame sent.
    assert len(factory.calls) == 1
    stats = link.stats()
    assert stats["sent"] == 1 and stats["skipped_busy"] == 9 and stats["replies"] == 1
    assert link.submit(job(stream=1, frame=10)) == "sent"  # the slot is free again: the newest frame goes


def test_streams_do_not_block_each_other(make_link):
    gate_open = threading.Event()

    async def gated(call: FakeCall) -> FakeResult:
        while not gate_open.is_set():
            await asyncio.sleep(0.01)
        return await answer(call)

    link, factory, recorder = make_link(gated, max_inflight=2)
    assert link.submit(job(stream=1, frame=0)) == "sent"
    assert link.submit(job(stream=1, frame=1)) == "sent"
    assert link.submit(job(stream=1, frame=2)) == "skipped_busy"
    assert link.submit(job(stream=2, frame=0)) == "sent"
    assert link.stats()["inflight"] == 3
    gate_open.set()
    recorder.wait(replies=3)
    assert len(factory.calls) == 3


def test_deadline_gives_timeout_and_slow_state(make_link):
    async def hang(call: FakeCall) -> FakeResult:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    link, factory, recorder = make_link(hang, deadline_s=0.3)
    link.submit(job())
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "timeout"
    assert factory.calls[0].client_timeout <= 0.3
    assert factory.calls[0].cancelled
    assert link.stats()["errors_by_kind"]["timeout"] == 1
    assert link.stats()["inflight"] == 0
    assert link.state is CloudState.SLOW


def test_unavailable_opens_breaker_after_three(make_link):
    async def refuse(call: FakeCall) -> FakeResult:
        raise InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")

    breaker = CircuitBreaker(failure_threshold=3, backoff_s=60.0, max_backoff_s=60.0)
    link, factory, recorder = make_link(refuse, breaker=breaker)
    for frame in range(3):
        assert link.state is not CloudState.DOWN
        assert link.submit(job(frame=frame)) == "sent"
        recorder.wait(errors=frame + 1)
    assert [kind for _, kind in recorder.errors] == ["unavailable"] * 3
    assert link.state is CloudState.DOWN
    assert link.submit(job(frame=3)) == "skipped_down"
    assert link.submit(job(stream=2, frame=0)) == "skipped_down"
    stats = link.stats()
    assert stats["errors_by_kind"]["unavailable"] == 3 and stats["skipped_down"] == 2
    assert len(factory.calls) == 3


def test_server_error_kind(make_link):
    async def broken(call: FakeCall) -> FakeResult:
        raise InferenceServerException(msg="model crashed", status="StatusCode.INTERNAL")

    link, _, recorder = make_link(broken)
    link.submit(job())
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "server"


def test_failure_log_names_the_clouds_error(make_link, caplog):
    async def refused(call: FakeCall) -> FakeResult:
        raise InferenceServerException(
            msg="max_tokens 48 is over the limit of 16", status="StatusCode.INVALID_ARGUMENT"
        )

    link, _, recorder = make_link(refused)
    with caplog.at_level("WARNING", logger="spotvlm.cloud"):
        link.submit(job(stream=3, frame=7))
        recorder.wait(errors=1)
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "stream 3 frame 7 failed (server)" in message
    assert "InferenceServerException: [StatusCode.INVALID_ARGUMENT] max_tokens 48 is over the limit of 16" in message


@pytest.mark.parametrize(
    "outputs",
    [
        {"TEXT": b"a car", "DETECTIONS": b"not json"},
        {"TEXT": b"a car", "DETECTIONS": b'{"bbox_2d": [1, 2, 3, 4]}'},
        {"TEXT": b"a car", "DETECTIONS": b'[{"bbox_2d": [1, 2, 3]}]'},
        {"TEXT": b"a car"},
        {"DETECTIONS": b"[]"},
    ],
)
def test_bad_reply(make_link, outputs):
    async def bad(call: FakeCall) -> FakeResult:
        return FakeResult(outputs)

    link, _, recorder = make_link(bad)
    link.submit(job())
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "bad_reply"
    assert link.stats()["errors_by_kind"]["bad_reply"] == 1
    assert recorder.replies == []


def test_text_without_detections_is_a_success(make_link):
    async def plain(call: FakeCall) -> FakeResult:
        return FakeResult({"TEXT": b"nothing to see", "DETECTIONS": b"[]"})

    link, _, recorder = make_link(plain)
    link.submit(job())
    recorder.wait(replies=1)
    assert recorder.replies[0].text == "nothing to see"
    assert recorder.replies[0].detections == ()


def test_injected_delay_is_applied_holds_the_slot_and_counts_against_the_deadline(make_link):
    link, factory, recorder = make_link(delay=ConstantDelay(300.0), deadline_s=5.0)
    assert link.submit(job(frame=0)) == "sent"
    assert link.submit(job(frame=1)) == "skipped_busy"  # held during the simulated network delay
    recorder.wait(replies=1)
    assert recorder.replies[0].rtt_ms >= 300.0
    assert factory.calls[0].client_timeout <= 5.0 - 0.3 + 1e-6


def test_injected_delay_longer_than_deadline_is_a_timeout(make_link):
    link, factory, recorder = make_link(delay=ConstantDelay(5000.0), deadline_s=0.2)
    link.submit(job())
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "timeout"
    assert factory.calls == []  # it never reached the cloud


def test_cancel_stream_cancels_only_that_streams_calls_and_frees_its_slot(make_link):
    link, factory, recorder = make_link(delay=ConstantDelay(30_000.0), max_inflight=2)
    assert [link.submit(job(stream=1, frame=i)) for i in range(2)] == ["sent", "sent"]
    assert link.submit(job(stream=2, frame=0, delay=ConstantDelay(200.0))) == "sent"
    link.cancel_stream(1)
    link.cancel_stream(99)  # a stream with nothing in flight: nothing happens
    recorder.wait(replies=1)  # stream 2's call goes through
    assert [r.job.stream_id for r in recorder.replies] == [2] and recorder.errors == []
    deadline = time.monotonic() + WAIT_S
    while link.stats()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.stats()["inflight"] == 0 and link.stats()["cancelled"] == 2
    assert len(factory.calls) == 1  # the cancelled ones never reached the cloud
    assert link.submit(job(stream=1, frame=2, delay=NoDelay())) == "sent"  # the stream's slots are free again
    recorder.wait(replies=2)


def test_a_call_cancelled_before_it_ever_ran_still_frees_its_slot(make_link):
    link, _, _ = make_link(delay=ConstantDelay(30_000.0), max_inflight=1)
    for frame in range(20):  # cancel queued right behind the call's start, again and again
        assert link.submit(job(stream=1, frame=frame)) == "sent"
        link.cancel_stream(1)
        deadline = time.monotonic() + WAIT_S
        while link.stats()["inflight"] and time.monotonic() < deadline:
            time.sleep(0.001)
        assert link.stats()["inflight"] == 0, f"frame {frame}: the cancelled call kept its slot"


def test_per_job_delay_overrides_the_links(make_link):
    link, _, recorder = make_link(delay=ConstantDelay(30_000.0))
    link.submit(job(delay=NoDelay()))
    recorder.wait(replies=1, timeout=5.0)


def closes(link: CloudLink) -> bool:
    """Whether link.close() returns (in a thread, waited for generously): a close that waited on a call that never
    ends would not."""
    closer = threading.Thread(target=link.close, daemon=True)
    closer.start()
    closer.join(timeout=WAIT_S * 3)
    return not closer.is_alive()


def test_close_cancels_pending_calls_instead_of_waiting_for_them():
    async def hang(call: FakeCall) -> FakeResult:
        await asyncio.get_running_loop().create_future()  # never done: only cancelling ends it
        raise AssertionError("not reached")

    factory = Factory(hang)
    recorder = Recorder()
    link = CloudLink("x:1", on_reply=recorder.on_reply, on_error=recorder.on_error, client_factory=factory)
    link.start()
    for stream in range(4):
        assert link.submit(job(stream=stream)) == "sent"
    deadline = time.monotonic() + WAIT_S
    while len(factory.calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closes(link)
    assert all(call.cancelled for call in factory.calls)
    assert factory.clients[0].closed
    link.close()  # idempotent
    assert link.submit(job(stream=9)) == "skipped_down"
    assert recorder.errors == []  # cancelled calls are not cloud errors


def test_close_without_start_and_submit_before_start():
    link = CloudLink("x:1", on_reply=lambda reply: None, client_factory=Factory())
    assert link.submit(job()) == "skipped_down"
    link.close()
    link.close()
    with pytest.raises(RuntimeError):
        link.start()


def test_raising_callbacks_do_not_kill_the_link(make_link):
    seen: list[CloudReply] = []
    errors: list[str] = []
    done = threading.Semaphore(0)

    def on_reply(reply: CloudReply) -> None:
        seen.append(reply)
        done.release()
        raise RuntimeError("callback bug")

    def on_error(cloud_job: CloudJob, kind: str) -> None:
        errors.append(kind)
        done.release()
        raise RuntimeError("callback bug")

    async def every_other(call: FakeCall) -> FakeResult:
        if call.prompt.endswith("-1"):
            raise InferenceServerException(msg="boom", status="StatusCode.INTERNAL")
        return await answer(call)

    link, _, _ = make_link(every_other, on_reply=on_reply, on_error=on_error)
    for frame in range(3):
        assert link.submit(job(frame=frame)) == "sent"
        # The slot is freed before the callback runs, so the next frame is sent.
        assert done.acquire(timeout=WAIT_S)
    assert [r.job.frame_id for r in seen] == [0, 2]
    assert errors == ["server"]


def test_drain_stats_gives_deltas_and_rtts(make_link):
    link, _, recorder = make_link()
    for stream in (1, 2):
        link.submit(job(stream=stream))
    recorder.wait(replies=2)  # counters are updated before the callback runs
    first = link.drain_stats()
    assert first["sent"] == 2 and first["replies"] == 2 and len(first["rtt_ms"]) == 2
    assert set(first["errors_by_kind"]) >= {"timeout", "unavailable", "server", "bad_reply"}
    assert first["inflight"] == 0 and first["state"] == "ok"
    second = link.drain_stats()
    assert second["sent"] == 0 and second["replies"] == 0 and second["rtt_ms"] == []
    assert all(v == 0 for v in second["errors_by_kind"].values())
    link.submit(job(stream=1, frame=1))
    recorder.wait(replies=3)
    third = link.drain_stats()
    assert third["sent"] == 1 and third["replies"] == 1 and len(third["rtt_ms"]) == 1
    assert link.stats()["replies"] == 3  # totals are not reset by draining


def test_client_recreated_after_a_long_unavailable_streak(make_link):
    async def refuse(call: FakeCall) -> FakeResult:
        raise InferenceServerException(msg="unreachable", status="StatusCode.UNAVAILABLE")

    link, factory, recorder = make_link(refuse, breaker=CircuitBreaker(failure_threshold=100))
    for frame in range(6):
        link.submit(job(frame=frame))
        recorder.wait(errors=frame + 1)
    assert len(factory.clients) == 2
    assert factory.clients[0].closed and not factory.clients[1].closed


@pytest.mark.parametrize(
    "exc, kind",
    [
        (asyncio.TimeoutError(), "timeout"),
        (InferenceServerException("x", status="StatusCode.DEADLINE_EXCEEDED"), "timeout"),
        (InferenceServerException("x", status="StatusCode.UNAVAILABLE"), "unavailable"),
        (ConnectionRefusedError("refused"), "unavailable"),
        (InferenceServerException("failed to connect: Connection refused"), "unavailable"),
        (InferenceServerException("bad input", status="StatusCode.INVALID_ARGUMENT"), "server"),
        (InferenceServerException("no status"), "server"),
        (KeyError("bug"), "client"),
    ],
)
def test_classify_error(exc, kind):
    assert classify_error(exc) == kind


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image": None},
        {"image": image(), "image_bytes": b"x"},
        {"image": np.zeros((4, 4), dtype=np.uint8)},
        {"image": np.zeros((4, 4, 3), dtype=np.float32)},
        {"image": np.zeros((0, 4, 3), dtype=np.uint8)},
        {"image": None, "image_bytes": b""},
    ],
)
def test_bad_jobs_fail_where_made(kwargs):
    with pytest.raises(ValueError):
        job(**kwargs)


def test_default_client_reconnects_soon_on_its_own_subchannel(monkeypatch):
    # gRPC's default reconnect backoff grows to 120 s and is shared by every channel to the same address: a cloud that
    # came back would stay unreachable that long, even through a recreated client.
    import tritonclient.grpc.aio as grpc_aio

    made: list[dict] = []
    monkeypatch.setattr(grpc_aio, "InferenceServerClient", lambda url, **kwargs: made.append({"url": url, **kwargs}))
    _default_client_factory("cloud.invalid:8001")
    assert made[0]["url"] == "cloud.invalid:8001"
    args = dict(made[0]["channel_args"])
    assert args["grpc.use_local_subchannel_pool"] == 1
    assert args["grpc.max_reconnect_backoff_ms"] == RECONNECT_BACKOFF_MS <= 2000
    assert args["grpc.initial_reconnect_backoff_ms"] <= RECONNECT_BACKOFF_MS
    # Passing channel_args replaces tritonclient's defaults: they must be there too.
    assert args["grpc.max_receive_message_length"] == args["grpc.max_send_message_length"] == 2**31 - 1
    assert "grpc.keepalive_time_ms" in args and "grpc.http2.max_pings_without_data" in args


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_grpc_client_on_a_closed_port_is_unavailable():
    recorder = Recorder()
    link = CloudLink(
        f"127.0.0.1:{_closed_port()}", deadline_s=5.0, on_reply=recorder.on_reply, on_error=recorder.on_error
    )
    link.start()
    try:
        assert link.submit(job()) == "sent"
        recorder.wait(errors=1)
        assert recorder.errors[0][1] == "unavailable"
    finally:
        assert closes(link)


# -- several prompts on one frame ----------------------------------------------------------------------------------


class FakeResults(FakeResult):
    """A reply holding one text per prompt: outputs are lists, returned as [1, n]."""

    def as_numpy(self, name: str):
        values = self._outputs.get(name)
        return None if values is None else np.array([values], dtype=np.object_)


async def answer_each(call: FakeCall) -> FakeResults:
    prompts = [p.decode() for p in deserialize_bytes_tensor(call.inputs["PROMPT"]._get_content())]
    detections = [json.dumps([{"bbox_2d": [i, i, 10 + i, 10 + i], "label": f"obj{i}"}]) for i in range(len(prompts))]
    return FakeResults(
        {"TEXT": [f"answer to {p}".encode() for p in prompts], "DETECTIONS": [d.encode() for d in detections]}
    )


def test_a_job_with_several_prompts_is_one_request_answered_per_prompt(make_link):
    link, factory, recorder = make_link(answer_each)
    sent = job(prompt="where is the car?", other_prompts=("what colour is it?", "how many cars?"))
    assert sent.prompts == ("where is the car?", "what colour is it?", "how many cars?")
    assert link.submit(sent) == "sent"
    recorder.wait(replies=1)
    (call,) = factory.calls
    assert (call.inputs["PROMPT"].shape(), call.inputs["PROMPT"].datatype()) == ([1, 3], "BYTES")
    assert [p.decode() for p in deserialize_bytes_tensor(call.inputs["PROMPT"]._get_content())] == list(sent.prompts)
    assert call.inputs["IMAGE_BYTES"].shape() == [1, 1], "one frame for all the prompts"
    (reply,) = recorder.replies
    assert reply.text == "answer to where is the car?"
    assert reply.detections == (Detection("obj0", (0.0, 0.0, 10.0, 10.0)),)
    assert [a.text for a in reply.answers] == [f"answer to {p}" for p in sent.prompts]
    assert [a.detections for a in reply.answers][2] == (Detection("obj2", (2.0, 2.0, 12.0, 12.0)),)
    assert link.stats()["sent"] == 1 and link.stats()["replies"] == 1


def test_one_prompt_is_the_request_as_before(make_link):
    link, factory, recorder = make_link(answer_each)
    link.submit(job())
    recorder.wait(replies=1)
    assert factory.calls[0].inputs["PROMPT"].shape() == [1, 1]
    (reply,) = recorder.replies
    assert reply.other_answers == () and len(reply.answers) == 1


@pytest.mark.parametrize("texts", [[b"one"], [b"one", b"two", b"three"]])
def test_a_reply_with_another_number_of_answers_than_prompts_is_a_bad_reply(make_link, texts):
    async def miscounted(call: FakeCall) -> FakeResults:
        return FakeResults({"TEXT": texts, "DETECTIONS": [b"[]"] * len(texts)})

    link, _, recorder = make_link(miscounted)
    link.submit(job(other_prompts=("second?",)))
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "bad_reply" and recorder.replies == []


@pytest.mark.parametrize("others", [("",), ("ok?", "   "), ["a list?"]])
def test_a_job_refuses_an_empty_prompt_among_several(others):
    with pytest.raises(ValueError, match="CloudJob"):
        job(other_prompts=others)
