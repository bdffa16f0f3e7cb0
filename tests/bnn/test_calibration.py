import numpy as np
import pytest
from scipy import stats

from atomate2_otf.bnn.calibration import GammaCalibration
from atomate2_otf.md.trigger import CalibratedTrigger


def test_update_gives_conjugate_posterior_exactly():
    rng = np.random.default_rng(3)
    errors, sigmas = rng.normal(size=7), rng.uniform(0.1, 2.0, size=7)
    cal = GammaCalibration(a=1.5, b=10.0).update(errors[:3], sigmas[:3]).update(
        errors[3:], sigmas[3:])
    s = np.sum((errors / sigmas) ** 2)
    assert cal.n == 7
    assert cal.shape == 1.5 + 7 / 2
    assert cal.rate == pytest.approx(10.0 + s / 2, rel=0, abs=1e-12)
    assert cal.scale_sq == pytest.approx((10.0 + s / 2) / (1.5 + 7 / 2), rel=1e-14)


@pytest.mark.parametrize("seed", range(5))
def test_prob_within_is_student_t_and_hyp2f1(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 5), rng.uniform(0.5, 20)
    n = int(rng.integers(0, 40))
    cal = GammaCalibration(a=a, b=b).update(rng.normal(size=n) * 2, rng.uniform(0.2, 3, n))
    sigma = rng.uniform(0.01, 3.0, size=50)
    k = rng.uniform(0.01, 2.0)
    nu = 2 * a + n
    scale = sigma * np.sqrt((b + cal.sum_z / 2) / (a + n / 2))
    expected = stats.t.cdf(k, df=nu, scale=scale) - stats.t.cdf(-k, df=nu, scale=scale)
    got = cal.prob_within(sigma, k)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cal.prob_within_hyp2f1(sigma, k), expected, rtol=0, atol=1e-10)
    assert isinstance(cal.prob_within(float(sigma[0]), k), float)


def test_underconfident_prior_and_learning():
    """a/b < 1 inflates the scale; errors smaller than predicted shrink it."""
    cal = GammaCalibration(a=1.5, b=10.0)
    assert cal.scale_sq > 1
    p0 = cal.prob_within(0.1, 0.2)
    cal.update(np.full(50, 0.01), np.full(50, 0.1))
    assert cal.scale_sq == pytest.approx((10 + 0.25) / (1.5 + 25))
    assert cal.scale_sq < 0.5
    assert cal.prob_within(0.1, 0.2) > p0


def test_ema_forgets_old_evidence():
    exact = GammaCalibration(3.0, 10.0)
    ema = GammaCalibration(3.0, 10.0, ema_decay=0.9)
    for cal in (exact, ema):
        cal.update(np.full(100, 0.1), np.ones(100))  # well calibrated small errors
        cal.update(np.full(20, 3.0), np.ones(20))  # then a drift: errors 3x sigma
    assert ema.n < 10.1
    assert ema.scale_sq > 3 * exact.scale_sq


def test_trigger():
    trigger = CalibratedTrigger(0.95)
    assert trigger({"prob_within": 0.9})
    assert not trigger({"prob_within": 0.96})
    assert trigger.last == {"prob_within": 0.96}


def test_trigger_every_nth_ignores_the_uncertainty():
    trigger = CalibratedTrigger(0.95, every=3)
    fired = [trigger({"prob_within": 0.0}) for _ in range(6)]
    assert fired == [False, False, True, False, False, True]


@pytest.mark.parametrize("kwargs, word", [
    ({"a": 0.0, "b": 1.0}, "shape a"), ({"a": 1.0, "b": -1.0}, "rate b"),
    ({"a": 1.0, "b": 1.0, "ema_decay": 1.5}, "ema_decay"),
])
def test_bad_parameters(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GammaCalibration(**kwargs)


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan")])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        GammaCalibration().prob_within(0.1, threshold)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.2, -0.1])
def test_bad_confidence(confidence):
    with pytest.raises(ValueError, match=r"confidence.*between 0 and 1"):
        CalibratedTrigger(confidence)
