"""Small statistics shared by the run document, the report and the benchmarks."""

from __future__ import annotations

import math

#: the two-sided 95 % standard-normal quantile
Z95 = 1.959964


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion k / n.

    Unlike the normal approximation it stays inside [0, 1] and is informative at k = 0,
    the case that matters for a miss rate (1 of 150 frames in the paper).
    """
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
