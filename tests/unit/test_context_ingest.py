"""`context_ingest` in process: it checks an LVLM result and forwards it over BLS to the `spotvlm` instance owning the
stream (correlation id = stream id); the INGEST record format both sides share."""

import asyncio
import json

import numpy as np
import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from python_backends.detections import Detection
from python_backends.errors import InputError
from python_backends.serving.context_ingest_step import ContextIngestStep, read_record
from python_backends.serving.ingest import (
    MAX_DETECTIONS,
    MAX_TEXT_BYTES,
    IngestRecord,
    make_record,
    parse_ingest_json,
)
from python_backends.serving.spotvlm_step import SpotVLMStep

DOG = [{"bbox_2d": [40, 30, 80, 70], "label": "dog"}]
NOT_STARTED = "inference request for sequence 5 to model 'spotvlm' must specify the START flag on the first request"


def _args(params: dict) -> dict:
    return {"model_config": json.dumps({"parameters": {k: {"string_value": str(v)} for k, v in params.items()}})}


def result(stream=5, frame_id=3, text="A dog.", detections=DOG, frame_size=(96, 128)) -> fake_pb_utils.FakeRequest:
    raw = detections if isinstance(detections, (str, bytes)) else json.dumps(detections)
    return pb.FakeRequest(
        {
            "STREAM_ID": np.array([[stream]], dtype=np.uint64),
            "FRAME_ID": np.array([[frame_id]], dtype=np.int64),
            "TEXT": np.array([[text.encode() if isinstance(text, str) else text]], dtype=object),
            "DETECTIONS": np.array([[raw.encode() if isinstance(raw, str) else raw]], dtype=object),
            "FRAME_SIZE": np.array([list(frame_size)], dtype=np.int32),
        }
    )


def status(response) -> dict:
    assert response.error is None, response.error.message()
    return json.loads(response.output("STATUS")[0, 0])


async def _stored(call: fake_pb_utils.BlsCall) -> fake_pb_utils.BlsResponse:
    record = json.loads(call.inputs["INGEST"][0, 0])
    return pb.bls_reply(CONTEXT=json.dumps({"stream_id": call.correlation_id, "frame_id": record["frame_id"]}))


@pytest.fixture
def step() -> ContextIngestStep:
    return ContextIngestStep(_args({}), pb_utils=pb)


def run(step, requests: list) -> list:
    responses = asyncio.run(step.execute(requests))
    assert len(responses) == len(requests)
    return responses


def test_a_result_is_forwarded_with_the_stream_as_correlation_id(step):
    calls = pb.set_bls_handler(_stored)
    (response,) = run(step, [result(stream=5, frame_id=3)])
    assert status(response) == {"stream_id": 5, "frame_id": 3}
    (call,) = calls
    assert call.model_name == "spotvlm" and call.correlation_id == 5 and isinstance(call.correlation_id, int)
    assert call.requested_output_names == ["CONTEXT"] and set(call.inputs) == {"INGEST"}
    assert call.inputs["INGEST"].shape == (1, 1)
    record = parse_ingest_json(5, call.inputs["INGEST"][0, 0])
    assert record == IngestRecord(5, 3, "A dog.", (Detection("dog", (40.0, 30.0, 80.0, 70.0)),), (96, 128))


def test_the_target_model_is_a_parameter():
    calls = pb.set_bls_handler(_stored)
    run(ContextIngestStep(_args({"target_model": "spotvlm_b"}), pb_utils=pb), [result()])
    assert calls[0].model_name == "spotvlm_b"


def test_a_stream_triton_does_not_know_is_not_active(step):
    async def refuse(call):
        return pb.bls_error(NOT_STARTED, pb.TritonError.INVALID_ARG)

    pb.set_bls_handler(refuse)
    (response,) = run(step, [result(stream=5)])
    assert response.error.code() == pb.TritonError.INVALID_ARG
    assert response.error.message() == "stream 5 is not active on the edge (never started or ended)"


def test_other_spotvlm_errors_are_passed_on_with_the_model_name(step):
    async def refuse(call):
        return pb.bls_error("stream 5 has no context on this edge", pb.TritonError.INVALID_ARG)

    pb.set_bls_handler(refuse)
    (response,) = run(step, [result(stream=5)])
    assert response.error.message() == "spotvlm: stream 5 has no context on this edge"


def test_a_bls_call_that_raises_fails_only_its_request(step):
    async def handler(call):
        if call.correlation_id == 6:
            raise RuntimeError("stub gone")
        return await _stored(call)

    pb.set_bls_handler(handler)
    good, broken = run(step, [result(stream=5), result(stream=6)])
    assert status(good)["stream_id"] == 5
    assert broken.error.code() == pb.TritonError.INTERNAL and broken.error.message() == "internal error: stub gone"


def _missing(name):
    request = result(stream=7)
    del request.inputs[name]
    return request


BAD_RESULTS = {
    "malformed DETECTIONS": (lambda: result(detections="[{bbox_2d"), "DETECTIONS is not a JSON list"),
    "DETECTIONS not a list": (lambda: result(detections='{"label": "dog"}'), "DETECTIONS is not a JSON list"),
    "a detection without box": (lambda: result(detections=[{"label": "dog"}]), "not a detection"),
    "FRAME_SIZE with 3 values": (lambda: result(frame_size=(96, 128, 3)), "FRAME_SIZE must be [height, width]"),
    "FRAME_SIZE of 0": (lambda: result(frame_size=(0, 128)), "FRAME_SIZE must be [height, width]"),
    "STREAM_ID 0": (lambda: result(stream=0), "STREAM_ID must be the stream's non-zero sequence id"),
    "negative FRAME_ID": (lambda: result(frame_id=-1), "FRAME_ID must be >= 0"),
    "TEXT not UTF-8": (lambda: result(text=b"\xff"), "TEXT is not valid UTF-8"),
    "missing FRAME_SIZE": (lambda: _missing("FRAME_SIZE"), "missing input tensor FRAME_SIZE"),
    "missing TEXT": (lambda: _missing("TEXT"), "missing input tensor TEXT"),
}


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_a_bad_result_fails_alone_without_a_bls_call(step, case):
    make_bad, message = BAD_RESULTS[case]
    calls = pb.set_bls_handler(_stored)
    good, bad, also_good = run(step, [result(stream=5), make_bad(), result(stream=6)])
    assert bad.error.code() == pb.TritonError.INVALID_ARG and message in bad.error.message(), bad.error.message()
    assert status(good)["stream_id"] == 5 and status(also_good)["stream_id"] == 6
    assert [c.correlation_id for c in calls] == [5, 6]


def test_a_batch_of_only_bad_results_answers_each(step):
    calls = pb.set_bls_handler(_stored)
    responses = run(step, [result(stream=0), result(frame_size=(1,))])
    assert all(r.error.code() == pb.TritonError.INVALID_ARG for r in responses) and calls == []


def test_ingest_reaches_the_owning_spotvlm_and_its_next_frame(step, monkeypatch):
    """Both models in one process; the handler plays Triton's sequence batcher, refusing streams not started."""
    monkeypatch.delenv("SPOTVLM_CLOUD_URL", raising=False)
    # The cloud's own words in the history: tracking off (on, a box answer is rewritten as the SVLM's boxes).
    spot = SpotVLMStep({**_args({"cloud_url": "off", "focus_tracking": "false"}), "model_name": "spotvlm"}, pb_utils=pb)
    frame = np.zeros((96, 128, 3), dtype=np.uint8)

    async def triton(call):
        if call.model_name == "svlm" or call.model_name == "svlm_focus":
            return pb.bls_reply(TEXT="edge answer", GENERATE_MS=np.array([[1.0]], dtype=np.float32))
        if not spot.store.has_stream(int(call.correlation_id)):
            return pb.bls_error(NOT_STARTED, pb.TritonError.INVALID_ARG)
        (answer,) = await spot.execute([pb.FakeRequest(call.inputs, correlation=call.correlation_id)])
        if answer.error is not None:
            return pb.BlsResponse(error_=answer.error)
        return pb.BlsResponse(output_tensors=answer.output_tensors)

    calls = pb.set_bls_handler(triton)
    prompt = np.array([[b"Where is the dog?"]], dtype=object)
    asyncio.run(
        spot.execute([pb.FakeRequest({"IMAGE": frame[None], "PROMPT": prompt}, correlation=5, sequence_flags=1)])
    )
    stored, inactive = run(step, [result(stream=5, frame_id=0, text="A brown dog."), result(stream=8)])
    assert status(stored) == {"stream_id": 5, "frame_id": 0, "stored": True}
    assert "stream 8 is not active" in inactive.error.message()
    (answer,) = asyncio.run(spot.execute([pb.FakeRequest({"IMAGE": frame[None], "PROMPT": prompt}, correlation=5)]))
    context = json.loads(answer.output("CONTEXT")[0, 0])
    assert context["context_frame"] == 0 and context["focus_labels"] == ["dog"]
    assert calls[-1].model_name == "svlm_focus" and "A brown dog." in calls[-1].inputs["HISTORY"][0, 0].decode()


# -- the record ----------------------------------------------------------------------------------------------------


def test_read_record_takes_one_value_per_tensor():
    record = read_record(result(stream=5, frame_id=3, text="Ein Hund — braun."))
    assert record == IngestRecord(5, 3, "Ein Hund — braun.", (Detection("dog", (40.0, 30.0, 80.0, 70.0)),), (96, 128))


def test_read_record_rejects_a_batched_value():
    request = result()
    request.inputs["FRAME_ID"] = np.array([[1], [2]], dtype=np.int64)
    with pytest.raises(InputError, match="FRAME_ID must hold exactly one value"):
        read_record(request)


def test_make_record_accepts_bytes_and_str():
    from_bytes = make_record(1, 0, b"text", json.dumps(DOG).encode(), [10, 20])
    from_str = make_record(1, 0, "text", json.dumps(DOG), (10, 20))
    assert from_bytes == from_str and from_str.frame_size == (10, 20) and from_str.frame_timestamp_ms is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stream_id": 0}, "STREAM_ID must be"),
        ({"stream_id": -4}, "STREAM_ID must be"),
        ({"frame_id": -1}, "FRAME_ID must be >= 0, got -1"),
        ({"text": b"x" * (MAX_TEXT_BYTES + 1)}, "TEXT is 65537 bytes, over the limit"),
        ({"detections": "not json"}, "DETECTIONS is not a JSON list"),
        ({"detections": json.dumps(DOG * (MAX_DETECTIONS + 1))}, "DETECTIONS has 257 boxes, over the limit of 256"),
        ({"frame_size": [96]}, "FRAME_SIZE must be [height, width]"),
        ({"frame_size": [96, -1]}, "FRAME_SIZE must be [height, width]"),
    ],
)
def test_make_record_rejects(kwargs, message):
    fields = {"stream_id": 1, "frame_id": 0, "text": "t", "detections": "[]", "frame_size": [96, 128], **kwargs}
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_record(**fields)


def test_the_ingest_json_round_trips():
    record = make_record(9, 4, "Ein Hund — braun.", json.dumps(DOG), [96, 128])
    record = IngestRecord(**{**record.__dict__, "frame_timestamp_ms": 123_456})
    raw = record.to_json()
    assert "—" in raw and "stream_id" not in json.loads(raw), "the stream travels as the correlation id"
    assert parse_ingest_json(9, raw) == record and parse_ingest_json(9, raw.encode()) == record


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "INGEST is not valid JSON"),
        ("[1, 2]", "INGEST must be an object with an integer frame_id"),
        ('{"frame_id": "3", "frame_size": [1, 1]}', "integer frame_id"),
        ('{"text": "no frame"}', "integer frame_id"),
        ('{"frame_id": 0}', "FRAME_SIZE must be"),
        ('{"frame_id": 0, "frame_size": [9, 9], "detections": [{"label": "x"}]}', "DETECTIONS is not"),
        (b"\xff", "INGEST is not valid UTF-8"),
    ],
)
def test_parse_ingest_json_rejects(raw, message):
    with pytest.raises(InputError, match=message):
        parse_ingest_json(1, raw)


def test_parse_ingest_json_ignores_a_non_integer_timestamp():
    raw = json.dumps({"frame_id": 0, "frame_size": [9, 9], "frame_timestamp_ms": "soon"})
    assert parse_ingest_json(1, raw).frame_timestamp_ms is None


# -- the frame's own time ------------------------------------------------------------------------------------------

NOW_MS = 1_700_000_000_000


def timed(timestamp_ms: int, **kwargs) -> fake_pb_utils.FakeRequest:
    request = result(**kwargs)
    request.inputs["FRAME_TIMESTAMP_MS"] = np.array([[timestamp_ms]], dtype=np.int64)
    return request


def test_a_frame_timestamp_travels_with_the_result():
    calls = pb.set_bls_handler(_stored)
    clocked = ContextIngestStep(_args({}), pb_utils=pb, clock_ms=lambda: NOW_MS)
    untimed, late = run(clocked, [result(stream=5), timed(NOW_MS - 9_000, stream=6)])
    assert status(untimed)["stream_id"] == 5 and status(late)["stream_id"] == 6
    records = [parse_ingest_json(c.correlation_id, c.inputs["INGEST"][0, 0]) for c in calls]
    assert [r.frame_timestamp_ms for r in records] == [None, NOW_MS - 9_000]


@pytest.mark.parametrize(
    "timestamp_ms, accepted",
    [(0, True), (NOW_MS, True), (NOW_MS + 5_000, True), (NOW_MS + 5_001, False), (-1, False)],
    ids=["zero", "now", "at the tolerance", "past the tolerance", "negative"],
)
def test_a_frame_timestamp_is_checked_against_the_edge_clock(timestamp_ms, accepted):
    calls = pb.set_bls_handler(_stored)
    clocked = ContextIngestStep(_args({}), pb_utils=pb, clock_ms=lambda: NOW_MS)
    neighbour, checked = run(clocked, [result(stream=5), timed(timestamp_ms, stream=6)])
    assert status(neighbour)["stream_id"] == 5
    if accepted:
        assert status(checked)["stream_id"] == 6
        assert parse_ingest_json(6, calls[-1].inputs["INGEST"][0, 0]).frame_timestamp_ms == timestamp_ms
    else:
        assert checked.error.code() == pb.TritonError.INVALID_ARG and "FRAME_TIMESTAMP_MS" in checked.error.message()
        assert [c.correlation_id for c in calls] == [5]


def test_the_future_tolerance_is_a_parameter():
    pb.set_bls_handler(_stored)
    strict = ContextIngestStep(_args({"future_tolerance_ms": 0}), pb_utils=pb, clock_ms=lambda: NOW_MS)
    (ahead,) = run(strict, [timed(NOW_MS + 1)])
    assert ahead.error.message() == (
        f"FRAME_TIMESTAMP_MS {NOW_MS + 1} is 1 ms in the future of the edge's clock ({NOW_MS}), "
        "over the tolerance of 0 ms"
    )
    with pytest.raises(ValueError, match="future_tolerance_ms must be >= 0"):
        ContextIngestStep(_args({"future_tolerance_ms": -1}), pb_utils=pb)


def test_read_record_checks_a_batched_or_wall_clock_future_timestamp():
    request = timed(1)
    request.inputs["FRAME_TIMESTAMP_MS"] = np.array([[1], [2]], dtype=np.int64)
    with pytest.raises(InputError, match="FRAME_TIMESTAMP_MS must hold exactly one value"):
        read_record(request)
    with pytest.raises(InputError, match="in the future of the edge's clock"):
        read_record(timed(2**62))  # the wall clock by default
    assert read_record(timed(123)).frame_timestamp_ms == 123


def test_spotvlm_refuses_a_negative_timestamp_in_ingest_json():
    raw = json.dumps({"frame_id": 0, "frame_size": [9, 9], "frame_timestamp_ms": -5})
    with pytest.raises(InputError, match="FRAME_TIMESTAMP_MS must be >= 0, got -5"):
        parse_ingest_json(1, raw)
    assert parse_ingest_json(1, raw.replace("-5", "5")).frame_timestamp_ms == 5


def test_spotvlm_dates_a_result_for_a_frame_it_never_saw_by_its_frame_timestamp(monkeypatch):
    """Without a turn for FRAME_ID on the edge, the pushed frame time (not the arrival) is the result's age."""
    monkeypatch.delenv("SPOTVLM_CLOUD_URL", raising=False)
    spot = SpotVLMStep({**_args({"cloud_url": "off"}), "model_name": "spotvlm"}, pb_utils=pb)

    async def triton(call):
        if call.model_name in ("svlm", "svlm_focus"):
            return pb.bls_reply(TEXT="edge answer", GENERATE_MS=np.array([[1.0]], dtype=np.float32))
        (answer,) = await spot.execute([pb.FakeRequest(call.inputs, correlation=call.correlation_id)])
        return pb.BlsResponse(output_tensors=answer.output_tensors, error_=answer.error)

    pb.set_bls_handler(triton)
    first = {"IMAGE": np.zeros((1, 96, 128, 3), dtype=np.uint8), "PROMPT": np.array([[b"Where?"]], dtype=object)}
    asyncio.run(spot.execute([pb.FakeRequest(first, correlation=5, sequence_flags=1)]))
    (stored,) = run(ContextIngestStep(_args({}), pb_utils=pb), [timed(NOW_MS - 9_000, stream=5, frame_id=40)])
    assert status(stored)["stored"] is True
    (kept,) = spot.store.snapshot(5).cloud_results
    assert kept.frame_id == 40 and kept.frame_timestamp_ms == NOW_MS - 9_000
