"""Priority sampling of minibatches with importance weights (METHOD.md sec. 3).

After a new label arrives the chains must move towards it quickly, so the newest structure
is drawn with probability such that it appears on average once per minibatch. Every drawn
item is weighted by (uniform probability / actual probability), which keeps the minibatch
estimate of the mean log-likelihood unbiased.
"""

from __future__ import annotations

import numpy as np


def priority_probabilities(n_data: int, batch_size: int) -> np.ndarray:
    """Draw probabilities: the last item gets max(1/batch_size, 1/n_data), the rest share."""
    if n_data < 1:
        raise ValueError(f"n_data must be >= 1, got {n_data}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n_data == 1:
        return np.ones(1)
    p_new = max(1.0 / batch_size, 1.0 / n_data)
    probs = np.full(n_data, (1.0 - p_new) / (n_data - 1))
    probs[-1] = p_new
    return probs


def draw_minibatch(
    n_data: int, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and importance weights of one minibatch.

    With ``n_data <= batch_size`` the whole data set is the batch (weights 1): the exact
    gradient is cheaper than a noisy one of the same size. Otherwise ``batch_size`` draws
    with replacement from :func:`priority_probabilities`; the weighted mean
    ``mean(w_i * x_i)`` is an unbiased estimate of the full-data mean of x.
    """
    if n_data <= batch_size:
        return np.arange(n_data), np.ones(n_data)
    probs = priority_probabilities(n_data, batch_size)
    indices = rng.choice(n_data, size=batch_size, replace=True, p=probs)
    weights = (1.0 / n_data) / probs[indices]
    return indices, weights
