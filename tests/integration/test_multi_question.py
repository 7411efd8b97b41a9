"""The cloud answers what the stream asks, over real servers: a frame sent to the cloud asks every standing question
of its stream, and `lvlm` answers several prompts about one frame in one request."""

from __future__ import annotations

import time

import numpy as np
import pytest

from client.frame_sources import SyntheticSource
from client.streaming import StreamSession
from python_backends.image_processing import encode_jpeg
from tests.integration.conftest import ServeProcess, _require_built

FRAME_SIZE = (240, 320)
CAR_Q, COLOUR_Q = "Where is the car?", "What colour is the car?"
LOCATE_CAR_Q = "Locate the car and give its bbox_2d in JSON."  # region_grounding_prompt for CAR_Q's object
WATCHED = "tree"  # the edge's cloud_watch
LOCATE_TREE_Q = "Locate the tree and give its bbox_2d in JSON."
# Frames keep coming until the cloud has answered a frame that asked both questions; generous for a loaded machine.
WAIT_S = 180.0


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    _require_built()
    server = ServeProcess("cloud", tmp_path_factory.mktemp("multi_question_cloud_logs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, cloud):
    server = ServeProcess(
        "edge",
        tmp_path_factory.mktemp("multi_question_edge_logs"),
        env={"SPOTVLM_CLOUD_URL": cloud.grpc_url, "SPOTVLM_CLOUD_WATCH": WATCHED},
    ).start()
    yield server
    server.stop()


def test_lvlm_answers_three_prompts_about_one_frame(cloud):
    import tritonclient.grpc as grpcclient

    frame = np.ascontiguousarray(next(iter(SyntheticSource(seed=3, size=FRAME_SIZE))))
    prompts = [CAR_Q, COLOUR_Q, "How many cars are there?"]
    image = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[encode_jpeg(frame)]], dtype=np.object_))
    prompt = grpcclient.InferInput("PROMPT", [1, 3], "BYTES")
    prompt.set_data_from_numpy(np.array([[p.encode() for p in prompts]], dtype=np.object_))
    client = grpcclient.InferenceServerClient(cloud.grpc_url)
    try:
        result = client.infer("lvlm", [image, prompt])
        texts, detections = result.as_numpy("TEXT"), result.as_numpy("DETECTIONS")
        assert texts.shape == detections.shape == (1, 3)
        assert all(isinstance(t, bytes) for t in texts[0])

        empty = grpcclient.InferInput("PROMPT", [1, 2], "BYTES")
        empty.set_data_from_numpy(np.array([[CAR_Q.encode(), b" "]], dtype=np.object_))
        with pytest.raises(Exception, match="prompt 1 of 2: PROMPT is empty"):
            client.infer("lvlm", [image, empty])
    finally:
        client.close()


def test_a_stream_alternating_two_questions_holds_the_clouds_answer_to_both(edge):
    """Both questions, and the grounding question the link asks beside the region question ("Where is the car?"),
    for its object's box: three answers on the cloud's newest frames."""
    frames = iter(SyntheticSource(seed=4, size=FRAME_SIZE))
    session = StreamSession(edge.grpc_url, "grpc", 811, CAR_Q)
    results = []
    try:
        results.append(session.send(next(frames), start=True, end=False))
        deadline = time.monotonic() + WAIT_S
        while results[-1].ok and (results[-1].context.cloud_questions or 0) < 3 and time.monotonic() < deadline:
            session.prompt = COLOUR_Q if session.prompt == CAR_Q else CAR_Q
            results.append(session.send(next(frames), start=False, end=False))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert results[-1].context.cloud_questions == 3, [r.context for r in results[-5:]]
        # Each question now finds the cloud's answer to itself (CONTEXT names the frame it came from), the car's
        # grounding question too, though the stream never asked it.
        for question in (CAR_Q, COLOUR_Q, LOCATE_CAR_Q):
            session.prompt = question
            answered = session.send(next(frames), start=False, end=False)
            assert answered.ok, answered.error
            assert answered.context.context_frame is not None, question
            assert answered.context.cloud_questions >= 3, question
    finally:
        session.send(next(frames), start=False, end=True)
        session.close()


def test_a_watched_object_is_located_by_the_cloud_before_any_question_names_it(edge):
    """The edge watches the tree: its first frame sent to the cloud also asks where the tree is. Once the cloud has
    answered, a grounding question about the tree, never asked before, is answered with the cloud's answer carried
    to the frame (whatever the random-weight cloud drew), not by the SVLM."""
    frames = iter(SyntheticSource(seed=5, size=FRAME_SIZE))
    session = StreamSession(edge.grpc_url, "grpc", 812, COLOUR_Q)
    try:
        results = [session.send(next(frames), start=True, end=False)]
        deadline = time.monotonic() + WAIT_S
        while results[-1].ok and not results[-1].context.cloud_questions and time.monotonic() < deadline:
            results.append(session.send(next(frames), start=False, end=False))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert results[-1].context.cloud_questions, "the cloud answered no frame in time"
        session.prompt = LOCATE_TREE_Q
        answered = session.send(next(frames), start=False, end=False)
        assert answered.ok, answered.error
        assert answered.context.cloud_answer is not None, "the link received the cloud's answer about the tree"
        assert answered.context.answer_source in ("cloud", "cloud_tracked"), answered.context
    finally:
        session.send(next(frames), start=False, end=True)
        session.close()
