"""`spotvlm stream` without a server: a fake Triton client that keeps sequences like Triton's sequence batcher."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from spotvlm import cli
from client.frame_sources import ImageDirSource, SyntheticSource
from client.launcher import free_ports
from client.frame_result import FrameResult
from client.stream_report import ProgressBoard, format_summary, summarize
from client.streaming import (
    StreamSession,
    frame_count,
    needs_restart,
    pacing_delay,
    parse_context,
    run_streams,
    scheduled_time,
    stream_offsets,
)
from client.triton_client import ClientError, decode_text, text_tensor
from python_backends.context.report import ContextReport

START_ERROR = (
    "inference request for sequence {sid} to model 'spotvlm' must specify the START flag on the first request of the"
    " sequence"
)


class FakeTriton:
    """Infers like the edge `spotvlm` would, and refuses a frame of a sequence it does not know without START."""

    def __init__(self, fail_frames: set[int] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.live: set[int] = set()
        self.fail_frames = fail_frames or set()  # n-th call (0-based) that fails with a bad-input error
        self.closed = False
        self._lock = threading.Lock()

    def infer(self, model, inputs, outputs, parameters=None, **kwargs) -> dict[str, np.ndarray]:
        sid, start, end = kwargs["sequence_id"], kwargs["sequence_start"], kwargs["sequence_end"]
        with self._lock:
            n = len(self.calls)
            self.calls.append(
                {"model": model, "inputs": inputs, "outputs": outputs, "parameters": parameters, **kwargs}
            )
            if start:
                self.live.add(sid)
            elif sid not in self.live:
                raise ClientError(START_ERROR.format(sid=sid), status="400")
            if n in self.fail_frames:
                raise ClientError("IMAGE: expected UINT8, got FP32", status="StatusCode.INVALID_ARGUMENT")
            if end:
                self.live.discard(sid)
        context = {"frame_id": n, "context_frame": n - 2 if n >= 2 else None, "cloud_state": "ok"}
        if n >= 2:
            context["context_age_ms"] = 1000 + n
        return {
            "TEXT": text_tensor(f"answer {n}"),
            "CONTEXT": np.array([[json.dumps(context).encode()]], dtype=np.object_),
        }

    def drop(self, sid: int) -> None:
        """What Triton does after the sequence idle timeout."""
        self.live.discard(sid)

    def close(self) -> None:
        self.closed = True


def session(fake: FakeTriton, stream_id: int = 1, **kwargs: Any) -> StreamSession:
    return StreamSession("127.0.0.1:1", "grpc", stream_id, "Where is the car?", client=fake, **kwargs)


FRAME = np.zeros((8, 10, 3), dtype=np.uint8)


# -- StreamSession -----------------------------------------------------------------------------------------------------


def test_send_builds_the_contract_request() -> None:
    fake = FakeTriton()
    s = session(fake, stream_id=7, params={"max_tokens": 16, "focus": "auto", "cloud_delay": None})
    result = s.send(FRAME, start=True, end=False)
    call = fake.calls[0]
    assert call["model"] == "spotvlm" and call["outputs"] == ["TEXT", "CONTEXT"]
    assert call["sequence_id"] == 7 and call["sequence_start"] is True and call["sequence_end"] is False
    assert call["parameters"] == {"max_tokens": 16, "focus": "auto"}  # None means "server default": not sent
    inputs = call["inputs"]
    assert inputs["IMAGE"].shape == (1, 8, 10, 3) and inputs["IMAGE"].dtype == np.uint8
    assert decode_text(inputs["PROMPT"]) == "Where is the car?" and inputs["PROMPT"].shape == (1, 1)
    assert inputs["TIMESTAMP_MS"].dtype == np.int64 and inputs["TIMESTAMP_MS"].shape == (1, 1)
    assert int(inputs["TIMESTAMP_MS"][0, 0]) == result.sent_at_ms
    assert result.ok and result.text == "answer 0" and result.context.cloud_state == "ok"
    assert (result.stream_id, result.frame_index, result.restarted) == (7, 0, False)
    assert s.send(FRAME, start=False, end=True).frame_index == 1
    s.close()
    assert fake.closed


def test_send_jpeg_mode() -> None:
    fake = FakeTriton()
    session(fake, send="jpeg").send(FRAME, start=True, end=True)
    inputs = fake.calls[0]["inputs"]
    assert "IMAGE" not in inputs and inputs["IMAGE_BYTES"].shape == (1, 1)
    assert bytes(inputs["IMAGE_BYTES"][0, 0])[:2] == b"\xff\xd8"  # JPEG SOI marker
    assert fake.calls[0]["parameters"] is None


def test_restart_after_idle_drop_resends_the_same_frame_with_start() -> None:
    fake = FakeTriton()
    s = session(fake)
    assert s.send(FRAME, start=True, end=False).ok
    fake.drop(1)  # idle timeout on the server
    frame = np.full((8, 10, 3), 99, dtype=np.uint8)
    result = s.send(frame, start=False, end=False)
    assert result.ok and result.restarted and s.restarts == 1
    assert result.frame_index == 1 and result.text == "answer 2"
    refused, resent = fake.calls[1], fake.calls[2]
    assert refused["sequence_start"] is False and resent["sequence_start"] is True
    np.testing.assert_array_equal(resent["inputs"]["IMAGE"][0], frame)
    assert resent["inputs"]["TIMESTAMP_MS"][0, 0] == refused["inputs"]["TIMESTAMP_MS"][0, 0]
    # The stream goes on normally after the restart.
    assert not s.send(FRAME, start=False, end=True).restarted


def test_restart_keeps_the_end_flag() -> None:
    fake = FakeTriton()
    s = session(fake)
    s.send(FRAME, start=True, end=False)
    fake.drop(1)
    result = s.send(FRAME, start=False, end=True)
    assert result.restarted and fake.calls[-1]["sequence_start"] and fake.calls[-1]["sequence_end"]


def test_other_errors_are_recorded_without_retry() -> None:
    fake = FakeTriton(fail_frames={1})
    s = session(fake)
    s.send(FRAME, start=True, end=False)
    result = s.send(FRAME, start=False, end=False)
    assert not result.ok and not result.restarted and len(fake.calls) == 2
    assert "expected UINT8" in result.error and "INVALID_ARGUMENT" in result.error


def test_a_start_frame_is_not_retried() -> None:
    class Refusing(FakeTriton):
        def infer(self, model, inputs, outputs, parameters=None, **kwargs):
            self.calls.append(kwargs)
            raise ClientError(START_ERROR.format(sid=1), status="400")

    fake = Refusing()
    result = session(fake).send(FRAME, start=True, end=False)
    assert not result.ok and len(fake.calls) == 1


def test_connection_errors_are_recorded() -> None:
    class Broken(FakeTriton):
        def infer(self, *args, **kwargs):
            raise ConnectionRefusedError("connection refused")

    result = session(Broken()).send(FRAME, start=True, end=False)
    assert result.error == "ConnectionRefusedError: connection refused" and result.latency_ms >= 0


@pytest.mark.parametrize(
    ("message", "restart"),
    [
        (START_ERROR.format(sid=3), True),
        ("[StatusCode.INVALID_ARGUMENT] inference request for sequence 3 must specify the START flag", True),
        ("sequence 3 is unknown", True),
        ("sequence id 3 not started", True),
        ("unknown sequence 3", True),
        ("IMAGE: expected UINT8", False),
        ("prompt is too long", False),
        ("", False),
    ],
)
def test_needs_restart(message: str, restart: bool) -> None:
    assert needs_restart(message) is restart


def test_parse_context_is_forgiving() -> None:
    as_tensor = lambda s: np.array([[s.encode()]], dtype=np.object_)  # noqa: E731
    assert parse_context(None) == ContextReport()
    known_and_new = parse_context(as_tensor('{"context_frame": 4, "new_key": 1}'))
    assert known_and_new.context_frame == 4 and known_and_new.extra == {"new_key": 1}
    assert parse_context(as_tensor("not json")).extra == {"raw": "not json"}
    assert parse_context(as_tensor("[1, 2]")).extra == {"raw": [1, 2]}


def test_stream_id_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StreamSession("x", "grpc", 0, "p", client=FakeTriton())


# -- pacing ------------------------------------------------------------------------------------------------------------


def test_stream_offsets_are_staggered_over_one_interval() -> None:
    assert stream_offsets(4, 10.0) == pytest.approx([0.0, 0.025, 0.05, 0.075])
    assert stream_offsets(1, 5.0) == [0.0]
    assert stream_offsets(0, 5.0) == []


def test_schedule_and_lateness() -> None:
    assert scheduled_time(100.0, 0, 10.0) == pytest.approx(100.0)
    assert scheduled_time(100.0, 7, 10.0, offset=0.025) == pytest.approx(100.725)
    assert pacing_delay(due=10.5, now=10.2) == (pytest.approx(0.3), False)
    assert pacing_delay(due=10.5, now=10.5) == (0.0, False)
    assert pacing_delay(due=10.5, now=11.0) == (0.0, True)  # previous reply came late: go at once


def test_frame_count() -> None:
    assert frame_count(10.0, frames=5) == 5
    assert frame_count(10.0, duration_s=2.0) == 20
    assert frame_count(3.0, duration_s=0.5) == 2
    assert frame_count(10.0, duration_s=0.01) == 1
    for bad in (dict(), dict(frames=1, duration_s=1.0), dict(frames=0), dict(duration_s=-1.0)):
        with pytest.raises(ValueError):
            frame_count(10.0, **bad)


# -- run_streams -------------------------------------------------------------------------------------------------------


def _run(fake: FakeTriton, sources, tmp_path: Path | None = None, **kwargs: Any) -> list[FrameResult]:
    return run_streams(
        sources,
        url="127.0.0.1:1",
        protocol="grpc",
        fps=kwargs.pop("fps", 500.0),  # fast: these tests check order and flags, never timing
        prompt="q",
        out_path=tmp_path / "results.jsonl" if tmp_path else None,
        progress=None,
        session_factory=lambda sid: session(fake, sid),
        **kwargs,
    )


def test_run_streams_flags_order_and_jsonl(tmp_path: Path) -> None:
    fake = FakeTriton()
    results = _run(fake, [SyntheticSource(0), SyntheticSource(1)], tmp_path, frames=5)
    assert [(r.stream_id, r.frame_index) for r in results] == [(s, i) for s in (1, 2) for i in range(5)]
    assert all(r.ok for r in results)
    for sid in (1, 2):
        calls = [c for c in fake.calls if c["sequence_id"] == sid]
        assert [c["sequence_start"] for c in calls] == [True, False, False, False, False]
        assert [c["sequence_end"] for c in calls] == [False, False, False, False, True]
    assert fake.closed and not fake.live  # every sequence ended
    # Ground truth of the synthetic scene travels with each frame.
    assert results[0].objects == SyntheticSource(0).objects_at(0)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 10
    rows = [json.loads(line) for line in lines]
    assert {"stream_id", "frame_index", "sent_at_ms", "latency_ms", "text", "context", "restarted", "error"} <= set(
        rows[0]
    )
    assert sorted((r["stream_id"], r["frame_index"]) for r in rows) == [(s, i) for s in (1, 2) for i in range(5)]


def test_run_streams_ends_a_finite_source_with_end(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    fake = FakeTriton()
    results = _run(fake, [ImageDirSource(tmp_path, loop=False)], frames=10)
    assert len(results) == 3
    assert [c["sequence_end"] for c in fake.calls] == [False, False, True]


def test_run_streams_duration_and_stream_ids() -> None:
    fake = FakeTriton()
    results = _run(fake, [SyntheticSource(0)], duration_s=0.01, fps=400.0, stream_ids=[42])
    assert len(results) == 4 and {r.stream_id for r in results} == {42}


def test_run_streams_goes_on_after_an_error() -> None:
    fake = FakeTriton(fail_frames={2})
    results = _run(fake, [SyntheticSource(0)], frames=5)
    assert len(results) == 5
    assert [r.ok for r in results] == [True, True, False, True, True]


def test_run_streams_restarts_a_dropped_sequence() -> None:
    fake = FakeTriton()

    class Dropper(SyntheticSource):
        """Makes the fake server forget the sequence before frame 3 is sent."""

        def __iter__(self):
            for i, frame in enumerate(super().__iter__()):
                if i == 4:  # the worker reads one frame ahead: frame 4 is fetched just before frame 3 goes
                    fake.drop(1)
                yield frame

    results = _run(fake, [Dropper(0)], frames=6)
    assert [r.restarted for r in results] == [False, False, False, True, False, False]
    assert all(r.ok for r in results) and len(results) == 6


def test_run_streams_stop_event_ends_early() -> None:
    fake = FakeTriton()
    stop = threading.Event()
    stop.set()
    assert _run(fake, [SyntheticSource(0)], frames=5, stop=stop) == []


def test_run_streams_validates() -> None:
    with pytest.raises(ValueError):
        _run(FakeTriton(), [], frames=1)
    with pytest.raises(ValueError):
        _run(FakeTriton(), [SyntheticSource(0)] * 2, frames=1, stream_ids=[1, 1])


# -- summary and progress ----------------------------------------------------------------------------------------------


def _result(sid: int, i: int, latency: float, ctx_frame=None, age=None, error=None, **kw) -> FrameResult:
    context = {} if error else {"context_frame": ctx_frame, "context_age_ms": age, "cloud_state": "ok"}
    return FrameResult(sid, i, 0, latency, context=ContextReport.from_dict(context), error=error, **kw)


def test_summarize_numbers() -> None:
    results = [
        _result(1, 0, 10.0),
        _result(1, 1, 20.0, ctx_frame=0, age=1000),
        _result(1, 2, 30.0, ctx_frame=1, age=3000, restarted=True),
        _result(1, 3, 40.0, ctx_frame=None),
        _result(2, 0, 100.0, late=True),
        _result(2, 1, 999.0, error="400: bad"),
        _result(2, 2, 200.0, ctx_frame=0, age=500),
    ]
    rows = summarize(results)
    assert [r["stream"] for r in rows] == ["1", "2", "all"]
    one, two, everything = rows
    assert (one["frames"], one["errors"], one["restarts"], one["late"]) == (4, 0, 1, 0)
    assert one["p50_ms"] == pytest.approx(25.0)
    assert one["p99_ms"] == pytest.approx(np.percentile([10, 20, 30, 40], 99))
    assert one["context_share"] == pytest.approx(0.5)
    assert one["context_age_p50_ms"] == pytest.approx(2000.0)
    # The error frame counts as a frame and an error, but not in latency or context share.
    assert (two["frames"], two["errors"], two["late"]) == (3, 1, 1)
    assert two["p50_ms"] == pytest.approx(150.0)
    assert two["context_share"] == pytest.approx(0.5) and two["context_age_p50_ms"] == pytest.approx(500.0)
    assert (everything["frames"], everything["errors"], everything["restarts"]) == (7, 1, 1)
    assert everything["p50_ms"] == pytest.approx(35.0)  # median of 10, 20, 30, 40, 100, 200
    assert everything["context_share"] == pytest.approx(3 / 6)
    assert everything["context_age_p50_ms"] == pytest.approx(1000.0)


def test_summarize_all_errors_and_table_alignment() -> None:
    rows = summarize([_result(1, 0, 5.0, error="boom"), _result(3, 0, 12.5, ctx_frame=0, age=100)])
    assert rows[0]["p50_ms"] is None and rows[0]["context_share"] is None
    table = format_summary(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and len({len(line) for line in lines}) == 1
    assert lines[0].split()[0] == "stream" and lines[2].split()[0] == "1" and lines[-1].split()[0] == "all"
    assert " - " in lines[2] and "100%" in lines[3]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_board_plain_and_tty() -> None:
    results = [_result(1, 0, 10.0), _result(1, 1, 30.0, ctx_frame=0, age=10), _result(2, 0, 5.0, error="x")]
    plain = io.StringIO()
    board = ProgressBoard([1, 2], 10, plain)
    assert not board.tty and board.interval_s == 2.0
    for r in results:
        board.update(r)
    lines = board.lines()
    assert len(lines) == 2
    assert "2/10 frames" in lines[0] and "last    30 ms" in lines[0] and "context  50%" in lines[0]
    assert "cloud ok" in lines[0] and "errors 1" in lines[1]
    board.stop()  # draws the final state: one tqdm bar per stream
    drawn = plain.getvalue()
    assert "stream   1:     2/10 frames" in drawn and "stream   2:     1/10 frames" in drawn and "errors 1" in drawn

    tty = _Tty()
    board = ProgressBoard([1, 2], 10, tty)
    assert board.tty and board.interval_s == 0.5


def test_frame_result_json_round_trip() -> None:
    context = ContextReport(context_frame=np.int64(1))
    result = FrameResult(1, 2, 3, 4.5, "t", context, True, None, objects=[{"label": "car"}])
    data = json.loads(result.to_json())
    assert (
        data["context"] == ContextReport(context_frame=1).to_dict()
        and data["restarted"] is True
        and data["objects"][0]["label"]
    )


# -- CLI ---------------------------------------------------------------------------------------------------------------


def test_cli_parser_accepts_the_documented_options() -> None:
    args = cli.build_parser().parse_args(
        [
            "stream",
            "--video",
            "clip.mp4",
            "--fps",
            "5",
            "--streams",
            "3",
            "--duration",
            "2.5",
            "--protocol",
            "http",
            "--url",
            "10.0.0.1:8000",
            "--prompt",
            "Where is the car?",
            "--cloud-delay",
            "uniform:1000:3000",
            "--focus",
            "crop_and_frame",
            "--max-tokens",
            "32",
            "--send",
            "jpeg",
            "--out",
            "r.jsonl",
            "--seed",
            "9",
            "--start",
        ]
    )
    assert args.func is cli.cmd_stream
    assert (args.video, args.fps, args.streams, args.duration, args.frames) == ("clip.mp4", 5.0, 3, 2.5, None)
    assert (args.protocol, args.url, args.prompt, args.cloud_delay) == (
        "http",
        "10.0.0.1:8000",
        "Where is the car?",
        "uniform:1000:3000",
    )
    assert (args.focus, args.max_tokens, args.send, args.out, args.seed, args.start) == (
        "crop_and_frame",
        32,
        "jpeg",
        "r.jsonl",
        9,
        True,
    )
    defaults = cli.build_parser().parse_args(["stream", "--synthetic"])
    assert (defaults.fps, defaults.streams, defaults.protocol, defaults.send, defaults.start) == (
        10.0,
        1,
        "grpc",
        "raw",
        False,
    )
    images = cli.build_parser().parse_args(["stream", "--images", "dir", "--frames", "7"])
    assert images.images == "dir" and images.frames == 7


@pytest.mark.parametrize(
    "argv",
    [
        ["stream"],  # a source is required
        ["stream", "--synthetic", "--video", "x.mp4"],  # one source only
        ["stream", "--synthetic", "--frames", "3", "--duration", "1"],
        ["stream", "--synthetic", "--protocol", "udp"],
        ["stream", "--synthetic", "--focus", "everywhere"],
    ],
)
def test_cli_parser_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_exits_2_when_the_edge_is_unreachable(protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)  # released again: nothing listens there
    code = cli.main(["stream", "--synthetic", "--frames", "1", "--protocol", protocol, "--url", f"127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and "spotvlm serve edge" in err and "spotvlm serve cloud" in err
    assert "--start" in err


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stream", "--synthetic", "--streams", "0"]) == 2
    assert cli.main(["stream", "--synthetic", "--start", "--url", "127.0.0.1:1"]) == 2
    assert cli.main(["stream", "--images", "/nonexistent/folder"]) == 2
    assert "no such image folder" in capsys.readouterr().err


def test_cli_stream_end_to_end_with_a_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    fake = FakeTriton(fail_frames=set())
    monkeypatch.setattr(cli, "_edge_problem", lambda url, protocol, model: None)
    monkeypatch.setattr("client.streaming.VLMClient", lambda url, protocol, timeout_s: fake)
    out = tmp_path / "r.jsonl"
    argv = ["stream", "--synthetic", "--frames", "3", "--fps", "200", "--streams", "2", "--out", str(out)]
    assert cli.main(argv + ["--cloud-delay", "1500", "--no-context"]) == 0
    assert len(out.read_text().splitlines()) == 6
    assert fake.calls[0]["parameters"] == {"use_context": False, "cloud_delay": "1500"}
    stdout = capsys.readouterr().out
    assert "with context" in stdout and "all" in stdout
    # An error reply makes the exit status 1.
    fake2 = FakeTriton(fail_frames={0})
    monkeypatch.setattr("client.streaming.VLMClient", lambda url, protocol, timeout_s: fake2)
    assert cli.main(["stream", "--synthetic", "--frames", "2", "--fps", "200"]) == 1
