"""SGHMC must sample the posterior it targets: checked on Bayesian linear regression."""

import numpy as np
import pytest
import torch

from atomate2_otf.bnn import sghmc
from atomate2_otf.bnn.prior import TransferPrior
from atomate2_otf.bnn.sampling import draw_minibatch

N, D, NOISE, SIGMA_PRIOR = 40, 3, 0.5, 1.0


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + NOISE * rng.normal(size=N)
    w0 = np.array([0.3, 0.0, -0.2])  # prior centre: the "pretrained" weights
    precision = np.eye(D) / SIGMA_PRIOR**2 + x.T @ x / NOISE**2
    cov = np.linalg.inv(precision)
    mean = cov @ (w0 / SIGMA_PRIOR**2 + x.T @ y / NOISE**2)
    return x, y, w0, mean, cov


def make_grad_fn(problem, batch_size, seed=1):
    x, y, w0, _, _ = problem
    xt, yt = torch.tensor(x), torch.tensor(y)
    prior = TransferPrior(torch.tensor(w0), SIGMA_PRIOR)
    rng = np.random.default_rng(seed)

    def grad_fn(theta, t):
        idx, w = draw_minibatch(N, batch_size, rng)
        xb, yb, wt = xt[idx], yt[idx], torch.tensor(w)
        resid = yb[None, :] - theta @ xb.T
        grad_lik = -((wt * resid)[..., None] * xb[None]).mean(1) / NOISE**2
        return prior.grad_neg_log_prob(theta) / N + grad_lik

    return grad_fn


def pooled_samples(problem, batch_size, n_steps=20_000, step_size=1e-2, seed=1,
                   mass_scale=None):
    state = sghmc.init(torch.zeros(8, D, dtype=torch.float64))
    config = sghmc.SGHMCConfig(n_steps=n_steps, burn_in=0, ramp=0, schedule="constant",
                               batch_size=batch_size)
    samples = []

    def keep(t, st):
        if t > n_steps // 5 and t % 10 == 0:
            samples.append(st.theta.clone())

    sghmc.run(state, make_grad_fn(problem, batch_size, seed), config, step_size=step_size,
              n_data=N, generator=torch.Generator().manual_seed(seed), callback=keep,
              mass_scale=mass_scale)
    return torch.cat(samples).numpy()


@pytest.mark.parametrize("batch_size, mass_scale", [
    (N, None), (10, None),
    (N, torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)),  # a per-parameter mass
])
def test_pooled_chains_match_analytic_posterior(problem, batch_size, mass_scale):
    _, _, _, mean, cov = problem
    samples = pooled_samples(problem, batch_size, mass_scale=mass_scale)
    std = np.sqrt(np.diag(cov))
    assert np.all(np.abs(samples.mean(0) - mean) < 0.1 * std), (samples.mean(0) - mean) / std
    ratio = samples.var(0) / np.diag(cov)
    assert np.all(np.abs(ratio - 1) < 0.2), ratio


def test_too_hot_would_fail(problem):
    """A sampler at the wrong temperature must fail the same variance check."""
    _, _, _, _, cov = problem
    grad_fn = make_grad_fn(problem, N)
    state = sghmc.init(torch.zeros(8, D, dtype=torch.float64))
    samples = []
    gen = torch.Generator().manual_seed(0)
    for t in range(8000):
        sghmc.step(state, grad_fn(state.theta, t), step_size=1e-2, temp=2.0, n_data=N,
                   friction=0.1, beta=0.999, eps=1e-4, generator=gen)
        if t > 2000 and t % 10 == 0:
            samples.append(state.theta.clone())
    ratio = torch.cat(samples).numpy().var(0) / np.diag(cov)
    assert np.all(ratio > 1.5)


def test_without_noise_converges_to_map(problem):
    _, _, _, mean, _ = problem
    state = sghmc.init(torch.zeros(4, D, dtype=torch.float64))
    config = sghmc.SGHMCConfig(n_steps=5000, burn_in=5000, batch_size=N, schedule="constant")
    sghmc.run(state, make_grad_fn(problem, N), config, step_size=1e-2, n_data=N)
    np.testing.assert_allclose(state.theta.numpy(), np.broadcast_to(mean, (4, D)), atol=1e-6)


def test_schedules():
    assert sghmc.cosine_step_size(0, 100, 1e-3) == pytest.approx(1e-3 + 1e-8)
    assert sghmc.cosine_step_size(50, 100, 1e-3) == pytest.approx(0.5e-3 + 1e-8)
    assert sghmc.cosine_step_size(100, 100, 1e-3) == pytest.approx(1e-8)
    assert sghmc.temperature(399, 400, 100) == 0.0
    # the preheat ramp is linear in the noise standard deviation: T rises as its square
    assert sghmc.temperature(400, 400, 100) == pytest.approx(0.01**2)
    assert sghmc.temperature(449, 400, 100) == pytest.approx(0.5**2)
    assert sghmc.temperature(499, 400, 100) == 1.0
    assert sghmc.temperature(10_000, 400, 100) == 1.0


def test_ramp_scales_the_noise_standard_deviation_linearly():
    """Halfway through the ramp the momentum noise has half its final std (reference:
    ``T * t / preheat`` multiplies the std), not 1/sqrt(2) of it."""
    def noise_std(t: int) -> float:
        state = sghmc.init(torch.zeros(1, 20_000, dtype=torch.float64))
        state.v_hat.fill_(1.0)
        state.t = 10**6  # bias correction 1: inverse mass 1 / (1 + eps)
        temp = sghmc.temperature(t, burn_in=0, ramp=100)
        sghmc.step(state, torch.zeros_like(state.theta), step_size=1e-2, temp=temp,
                   n_data=10, friction=0.1, beta=0.999, eps=1e-4,
                   generator=torch.Generator().manual_seed(0))
        return float(state.momentum.std())

    assert noise_std(49) / noise_std(99) == pytest.approx(0.5, rel=0.02)


def test_inverse_mass_is_amsgrad_denominator_of_torch_adam():
    """m^-1 at every step equals 1 / denominator of ``torch.optim.Adam(amsgrad=True)``
    (eps outside the square root), on gradients whose first 20 steps are 30x larger than
    the rest, as at the start of an update after a new label. With beta1 = 0 Adam's step is
    lr * g / denominator, which gives the denominator without reading Adam's internals."""
    beta, eps, n_params = 0.999, 1e-4, 16
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(n_params, generator=gen, dtype=torch.float64) * (30.0 if t < 20
                                                                          else 1.0)
             for t in range(300)]
    param = torch.zeros(n_params, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([param], lr=1.0, betas=(0.0, beta), eps=eps, amsgrad=True)
    state = sghmc.init(torch.zeros(1, n_params, dtype=torch.float64))
    worst = 0.0
    for g in grads:
        before = param.detach().clone()
        param.grad = g.clone()
        adam.step()
        denominator = -g / (param.detach() - before)
        sghmc.step(state, g[None], step_size=1e-3, temp=0.0, n_data=10, friction=0.1,
                   beta=beta, eps=eps)
        ours = 1.0 / sghmc.inverse_mass(state, beta, eps)[0]
        worst = max(worst, float(((ours - denominator) / denominator).abs().max()))
    assert worst < 1e-6


def test_reset_for_update():
    state = sghmc.init(torch.zeros(2, 3))
    state.momentum += 1
    state.v += 1
    state.v_hat += 1
    state.t = 7
    sghmc.reset_for_update(state, keep_mass=True)  # a kept mass keeps its age too
    assert state.t == 7 and state.momentum.abs().sum() == 0 and state.v_hat.sum() == 6
    sghmc.reset_for_update(state, keep_mass=False)
    assert state.t == 0 and state.v.sum() == 0 and state.v_hat.sum() == 0


@pytest.mark.parametrize("kwargs, word", [
    ({"n_steps": 0}, "n_steps"), ({"friction": 0.0}, "friction"),
    ({"step_size": -1.0}, "step_size"), ({"batch_size": 0}, "batch_size"),
    ({"schedule": "linear"}, "schedule"),
])
def test_bad_config(kwargs, word):
    with pytest.raises(ValueError, match=word):
        sghmc.SGHMCConfig(**kwargs)
