"""The one percentile helper of the project's clients, benchmarks and reports (numpy's percentile)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float, *, digits: int | None = None, method: str = "linear") -> float | None:
    """The q-th percentile (0..100) of `values` by numpy's `method`, rounded to `digits` when given; None for none.

    "linear" is numpy's default interpolation; "inverted_cdf" is the nearest rank (the smallest value with at least
    q % of the values at or below it), as locust computes its own percentiles.
    """
    if len(values) == 0:
        return None
    value = float(np.percentile(np.asarray(values, dtype=float), q, method=method))
    return round(value, digits) if digits is not None else value
