"""`answer_batch`: every request gets exactly one response; a bad one never fails its neighbours."""

import numpy as np
import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from python_backends.errors import InputError
from python_backends.triton_io import answer_batch, first_item, int_parameter, unbatch


def _respond(value):
    return pb.InferenceResponse(output_tensors=[pb.Tensor("OUT", np.array([value]))])


def _parse(request):
    value = request.inputs["X"]
    if value < 0:
        raise InputError(f"X must be >= 0, got {value}")
    return value


def test_bad_request_gets_invalid_arg_and_neighbours_succeed():
    requests = [pb.FakeRequest({"X": v}) for v in (1, -5, 3)]
    calls = []
    responses = answer_batch(requests, _parse, lambda b: calls.append(list(b)) or [v * 10 for v in b], _respond)
    assert calls == [[1, 3]], "valid requests are computed together, once"
    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[1].error.code() == pb.TritonError.INVALID_ARG
    assert "X must be >= 0, got -5" in responses[1].error.message()
    assert responses[0].output("OUT")[0] == 10 and responses[2].output("OUT")[0] == 30


def test_a_request_that_breaks_the_batch_fails_alone():
    def compute(batch):
        if 13 in batch:
            raise RuntimeError("poison")
        return [v + 1 for v in batch]

    responses = answer_batch([pb.FakeRequest({"X": v}) for v in (1, 13, 2)], _parse, compute, _respond)
    assert responses[0].output("OUT")[0] == 2 and responses[2].output("OUT")[0] == 3
    assert responses[1].error.code() == pb.TritonError.INTERNAL and "poison" in responses[1].error.message()


def test_input_error_raised_in_compute_is_invalid_arg():
    def compute(batch):
        raise InputError("too long")

    responses = answer_batch([pb.FakeRequest({"X": 1})], _parse, compute, _respond)
    assert responses[0].error.code() == pb.TritonError.INVALID_ARG


def test_unexpected_parse_failure_is_internal_and_isolated():
    responses = answer_batch([pb.FakeRequest({}), pb.FakeRequest({"X": 2})], _parse, lambda b: b, _respond)
    assert responses[0].error.code() == pb.TritonError.INTERNAL
    assert responses[1].error is None


def test_empty_batch():
    assert answer_batch([], _parse, lambda b: b, _respond) == []


def test_tensor_helpers():
    assert first_item(np.array([[b"x"]], dtype=object), "P") == b"x"
    with pytest.raises(InputError, match="exactly one value"):
        first_item(np.array([[b"x", b"y"]], dtype=object), "P")
    assert unbatch(np.zeros((1, 2, 3)), "T").shape == (2, 3)
    with pytest.raises(InputError, match="batch dimension of 1"):
        unbatch(np.zeros((2, 2)), "T")
    assert int_parameter({"max_tokens": "5"}, "max_tokens", 1) == 5
    assert int_parameter({}, "max_tokens", 7) == 7
    for bad in (True, "five", 1.5):
        with pytest.raises(InputError, match="max_tokens must be an integer"):
            int_parameter({"max_tokens": bad}, "max_tokens", 1)
