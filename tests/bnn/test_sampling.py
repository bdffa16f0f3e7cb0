import numpy as np
import pytest

from atomate2_otf.bnn.sampling import draw_minibatch, priority_probabilities


def test_weighted_minibatch_mean_is_unbiased_and_newest_once_per_batch():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=37)
    values[-1] = 25.0  # the newest item is unusual: a biased estimator would show it
    n_draws, batch = 10_000, 5
    estimates, newest = np.empty(n_draws), np.empty(n_draws)
    for i in range(n_draws):
        idx, w = draw_minibatch(len(values), batch, rng)
        estimates[i] = np.mean(w * values[idx])
        newest[i] = np.sum(idx == len(values) - 1)
    assert abs(estimates.mean() / values.mean() - 1) < 0.02
    assert newest.mean() == pytest.approx(1.0, abs=0.05)


def test_uniform_draws_would_be_biased_detector():
    """The same check must fail without importance weights (so the test can fail)."""
    rng = np.random.default_rng(0)
    values = np.ones(37)
    values[-1] = 25.0
    est = [np.mean(values[draw_minibatch(37, 5, rng)[0]]) for _ in range(10_000)]
    assert abs(np.mean(est) / values.mean() - 1) > 0.1


def test_small_data_set_is_full_batch():
    idx, w = draw_minibatch(3, 5, np.random.default_rng(0))
    assert list(idx) == [0, 1, 2] and list(w) == [1, 1, 1]


def test_probabilities():
    p = priority_probabilities(10, 5)
    assert p.sum() == pytest.approx(1)
    assert p[-1] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="n_data"):
        priority_probabilities(0, 5)
