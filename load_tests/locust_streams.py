"""The pure parts of the locust load test that the locustfile uses: sequence ids, context statistics, reply sizes,
the edge URL and the stream options. Kept apart from locust, which monkey-patches the interpreter with gevent on
import, so they can be unit-tested without it."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.stats import percentile
from python_backends.context.report import ContextReport

PROTOCOLS = ("grpc", "http")
# Locust's request_type and name of the context-age entry (see ContextStats and the locustfile).
CONTEXT_TYPE = "CONTEXT"
CONTEXT_NAME = "age_ms"
MAX_SEQUENCE_ID = 2**63 - 1


class SequenceIds:
    """Triton sequence ids for locust users: positive, < 2**63, distinct across users, processes and hosts.

    id = (salt << 54) | (pid << 32) | counter, with an 8-bit random salt (two machines can run the same pid), the
    pid's low 22 bits (Linux pid_max is at most 2**22) and a per-process counter from 1. locust's --processes forks its
    workers after importing the locustfile, so the pid is read at each call: a forked child starts its own base and
    counter (and draws its salt from os.urandom, which forked children do not share as they share `random`'s state).
    """

    PID_BITS = 22
    COUNTER_BITS = 32
    SALT_BITS = 8

    def __init__(self, pid: int | None = None, salt: int | None = None) -> None:
        if pid is not None and pid < 0:
            raise ValueError(f"pid must be >= 0, got {pid}")
        if salt is not None and not 0 <= salt < 2**self.SALT_BITS:
            raise ValueError(f"salt must fit {self.SALT_BITS} bits, got {salt}")
        self._fixed_pid = pid
        self._fixed_salt = salt
        self._lock = threading.Lock()
        self._owner: int | None = None
        self.base = 0
        self._counter = itertools.count(1)

    def _rebase(self, pid: int) -> None:
        salt = self._fixed_salt
        if salt is None:
            salt = random.SystemRandom().getrandbits(self.SALT_BITS)
        self.base = ((salt << self.PID_BITS) | (pid & (2**self.PID_BITS - 1))) << self.COUNTER_BITS
        self._counter = itertools.count(1)
        self._owner = pid

    def next(self) -> int:
        pid = self._fixed_pid if self._fixed_pid is not None else os.getpid()
        with self._lock:
            if self._owner != pid:
                self._rebase(pid)
            n = next(self._counter)
        if n >= 2**self.COUNTER_BITS:
            raise OverflowError("more than 2**32 sequence ids in one process")
        return self.base | n


def _percentile(histogram: Mapping[int, int], q: float) -> int | None:
    """The smallest value with at least q of the counts at or below it (nearest rank), as locust computes its own."""
    values = np.repeat(np.fromiter(histogram.keys(), dtype=float), np.fromiter(histogram.values(), dtype=int))
    # q as a percentage, rounded so that 0.9 reaches numpy as 0.9 again (0.9 * 100 is 90.00000000000001)
    value = percentile(values, round(100 * q, 10), method="inverted_cdf")
    return None if value is None else int(value)


@dataclass
class ContextStats:
    """What the cloud context looked like over a run: the share of answered frames that had cloud context and the age
    of that context (this frame's time minus the time of the frame the LVLM answered, in ms).

    Ages are kept as a histogram of whole milliseconds (bounded by the largest age, not by the run's length), so the
    statistics of locust's --processes workers merge exactly.
    """

    frames: int = 0  # answered frames
    with_context: int = 0
    errors: int = 0
    restarts: int = 0
    ages: dict[int, int] = field(default_factory=dict)
    cloud_states: dict[str, int] = field(default_factory=dict)

    def add(self, *, ok: bool, context: ContextReport, restarted: bool = False) -> int | None:
        """Counts one frame; returns its context age in ms when it had cloud context with an age, else None."""
        self.restarts += int(restarted)
        if not ok:
            self.errors += 1
            return None
        self.frames += 1
        state = context.cloud_state
        if state is not None:
            self.cloud_states[state] = self.cloud_states.get(state, 0) + 1
        if not context.has_context:
            return None
        self.with_context += 1
        age = context.context_age_ms  # a number or None (ContextReport reads anything else as None)
        if age is None:
            return None
        age_ms = max(0, round(age))
        self.ages[age_ms] = self.ages.get(age_ms, 0) + 1
        return age_ms

    def to_dict(self) -> dict[str, Any]:
        # JSON object keys are strings; from_dict turns them back.
        return {
            "frames": self.frames,
            "with_context": self.with_context,
            "errors": self.errors,
            "restarts": self.restarts,
            "ages": {str(k): v for k, v in self.ages.items()},
            "cloud_states": dict(self.cloud_states),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContextStats:
        return cls(
            frames=int(data.get("frames", 0)),
            with_context=int(data.get("with_context", 0)),
            errors=int(data.get("errors", 0)),
            restarts=int(data.get("restarts", 0)),
            ages={int(k): int(v) for k, v in dict(data.get("ages", {})).items()},
            cloud_states={str(k): int(v) for k, v in dict(data.get("cloud_states", {})).items()},
        )

    def merge(self, other: ContextStats | Mapping[str, Any] | None) -> None:
        if other is None:
            return
        if not isinstance(other, ContextStats):
            other = ContextStats.from_dict(other)
        self.frames += other.frames
        self.with_context += other.with_context
        self.errors += other.errors
        self.restarts += other.restarts
        for age, count in other.ages.items():
            self.ages[age] = self.ages.get(age, 0) + count
        for state, count in other.cloud_states.items():
            self.cloud_states[state] = self.cloud_states.get(state, 0) + count

    def take(self) -> dict[str, Any]:
        """The counts so far as a dict, and a reset: a locust worker sends its delta to the master with each report."""
        data = self.to_dict()
        self.reset()
        return data

    def reset(self) -> None:
        self.frames = self.with_context = self.errors = self.restarts = 0
        self.ages = {}
        self.cloud_states = {}

    @property
    def context_share(self) -> float | None:
        return self.with_context / self.frames if self.frames else None

    def summary(self) -> dict[str, Any]:
        """The `<csv prefix>_context.json` content."""
        count = sum(self.ages.values())
        mean = sum(age * n for age, n in self.ages.items()) / count if count else None
        share = self.context_share
        return {
            "frames": self.frames,
            "frames_with_context": self.with_context,
            "context_share": round(share, 4) if share is not None else None,
            "context_age_ms": {
                "count": count,
                "mean": round(mean, 1) if mean is not None else None,
                "p50": _percentile(self.ages, 0.50),
                "p90": _percentile(self.ages, 0.90),
                "p99": _percentile(self.ages, 0.99),
                "max": max(self.ages) if self.ages else None,
            },
            "cloud_states": dict(sorted(self.cloud_states.items())),
            "errors": self.errors,
            "restarts": self.restarts,
        }


def format_context_summary(summary: Mapping[str, Any]) -> str:
    """One line for the end of a run."""
    share = summary.get("context_share")
    age = summary.get("context_age_ms") or {}

    def ms(value: Any) -> str:
        return f"{value:.0f}" if isinstance(value, (int, float)) else "-"

    states = ", ".join(f"{k} {v}" for k, v in (summary.get("cloud_states") or {}).items()) or "-"
    return (
        f"cloud context: {summary.get('frames_with_context', 0)}/{summary.get('frames', 0)} answered frames"
        f" ({'-' if share is None else f'{share:.0%}'}), context age p50 {ms(age.get('p50'))} ms,"
        f" p90 {ms(age.get('p90'))} ms, max {ms(age.get('max'))} ms; cloud states: {states};"
        f" restarts {summary.get('restarts', 0)}, errors {summary.get('errors', 0)}"
    )


def response_bytes(outputs: Mapping[str, Any]) -> int:
    """The payload size of a reply's outputs: the bytes of BYTES tensors' items, nbytes of the others."""
    total = 0
    for array in outputs.values():
        if array is None:
            continue
        if getattr(array, "dtype", None) is not None and array.dtype.kind == "O":
            for item in array.reshape(-1):
                total += len(item) if isinstance(item, (bytes, bytearray, str)) else 0
        else:
            total += int(getattr(array, "nbytes", 0))
    return total


def edge_url(host: str | None, protocol: str) -> str:
    """Locust's --host as a tritonclient URL: "HOST:PORT", an optional scheme stripped; the edge's default port for
    the protocol when no host is given."""
    if not host:
        from client.triton_client import default_url

        return default_url("edge", protocol)  # type: ignore[arg-type]
    url = host.strip()
    for scheme in ("grpc://", "http://", "https://"):
        if url.lower().startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_stream_arguments(parser: Any) -> None:
    """The locustfile's own options (locust's init_command_line_parser hands it its parser)."""
    from client.streaming import DEFAULT_PROMPT

    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="Triton protocol (default: grpc)")
    parser.add_argument("--fps", type=positive_float, default=5.0, help="frames per second per user (default: 5)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question asked of every frame")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="answer length (default: the server's)")
    parser.add_argument(
        "--cloud-delay", default=None, metavar="SPEC", help="delay injected on the edge's cloud link: 1500, 2000+-1000"
    )
    parser.add_argument("--images", default=None, metavar="DIR", help="send a folder's images (default: synthetic)")
    parser.add_argument("--request-timeout", type=positive_float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=0.0,
        help="print a one-line progress summary every N seconds (0: off; load_run turns it on)",
    )


def stream_params(max_tokens: int | None, cloud_delay: str | None) -> dict[str, Any]:
    """The request parameters of every frame; None means "the server's default" and is left out."""
    params: dict[str, Any] = {}
    if max_tokens is not None:
        params["max_tokens"] = int(max_tokens)
    if cloud_delay:
        params["cloud_delay"] = str(cloud_delay)
    return params
