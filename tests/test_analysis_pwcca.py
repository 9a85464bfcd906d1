"""PWCCA against a slow, independent float64 reference (PCA by covariance eigen-decomposition,
CCA by the eigen-decomposition of Sxx^-1/2 Sxy Syy^-1 Syx Sxx^-1/2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mwmae.analysis import pwcca, pwcca_details, pwcca_matrix


def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(s)
    return (vecs / np.sqrt(vals)) @ vecs.T


def reference_pwcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> tuple[float, np.ndarray]:
    """Textbook PWCCA; returns (similarity, canonical correlations)."""

    def pca(a: np.ndarray) -> np.ndarray:
        ac = a - a.mean(0)
        vals, vecs = np.linalg.eigh(ac.T @ ac)
        order = np.argsort(vals)[::-1]
        vals, vecs = vals[order], vecs[:, order]
        frac = np.cumsum(vals) / vals.sum()
        k = next(i + 1 for i, f in enumerate(frac) if f >= keep - 1e-12)
        k = min(k, int(np.sum(vals > vals[0] * 1e-20)))
        return ac @ vecs[:, :k]  # principal component scores

    xr, yr = pca(x), pca(y)
    n = x.shape[0]
    sxx, syy, sxy = xr.T @ xr / (n - 1), yr.T @ yr / (n - 1), xr.T @ yr / (n - 1)
    sxx_is = _inv_sqrt(sxx)
    m_mat = sxx_is @ sxy @ np.linalg.inv(syy) @ sxy.T @ sxx_is
    vals, vecs = np.linalg.eigh((m_mat + m_mat.T) / 2)
    order = np.argsort(vals)[::-1][: min(xr.shape[1], yr.shape[1])]
    rho = np.sqrt(np.clip(vals[order], 0.0, 1.0))
    a = sxx_is @ vecs[:, order]  # canonical weight vectors on the PC scores
    h = xr @ a
    h /= np.linalg.norm(h, axis=0, keepdims=True)
    xc = x - x.mean(0)
    alpha = np.abs(h.T @ xc).sum(axis=1)  # how much of each x column each variate accounts for
    return float((alpha / alpha.sum()) @ rho), rho


def _correlated(rng, n, dx, dy, shared, noise=0.5):
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, dx)) + noise * rng.standard_normal((n, dx))
    y = z @ rng.standard_normal((shared, dy)) + noise * rng.standard_normal((n, dy))
    return x + rng.standard_normal(dx), y - 3.0  # offsets: centring must remove them


def test_identical_inputs_give_one():
    x = np.random.default_rng(0).standard_normal((300, 12))
    assert pwcca(x, x) == pytest.approx(1.0, abs=1e-10)
    res = pwcca_details(x, x)
    np.testing.assert_allclose(res.correlations, 1.0, atol=1e-10)
    assert res.weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "n,dx,dy,shared,keep",
    [(500, 10, 10, 4, 0.99), (400, 16, 6, 3, 0.99), (400, 5, 12, 5, 1.0), (300, 8, 8, 8, 0.9)],
)
def test_matches_reference(n, dx, dy, shared, keep):
    rng = np.random.default_rng(n + dx + dy)
    x, y = _correlated(rng, n, dx, dy, shared)
    # A decaying spectrum so that the 99% pre-reduction really drops directions.
    x = x * np.geomspace(1.0, 0.05, dx)
    ref_sim, ref_rho = reference_pwcca(x, y, keep)
    res = pwcca_details(x, y, keep_variance=keep)
    np.testing.assert_allclose(res.correlations, ref_rho, atol=1e-8)
    assert res.similarity == pytest.approx(ref_sim, abs=1e-8)
    ref_sim_t, _ = reference_pwcca(y, x, keep)
    assert pwcca(y, x, keep_variance=keep) == pytest.approx(ref_sim_t, abs=1e-8)


def test_prereduction_drops_low_variance_directions():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6)) * np.array([10, 10, 10, 10, 0.01, 0.01])
    res = pwcca_details(x, rng.standard_normal((400, 3)))
    assert res.kept_x == 4 and res.kept_y == 3
    assert len(res.correlations) == 3


def test_invariant_to_linear_map_of_second_argument_and_scaling():
    rng = np.random.default_rng(2)
    x, y = _correlated(rng, 600, 8, 8, 3)
    a = rng.standard_normal((8, 8)) + 3 * np.eye(8)  # invertible, condition ~ a few
    base = pwcca(x, y, keep_variance=1.0)
    assert pwcca(x, y @ a, keep_variance=1.0) == pytest.approx(base, abs=1e-9)
    assert pwcca(x, 7.5 * (y @ a) + 2.0, keep_variance=1.0) == pytest.approx(base, abs=1e-9)
    # Scaling either argument never changes the 99% reduction or the weights.
    base99 = pwcca(x, y)
    assert pwcca(0.01 * x, 250.0 * y) == pytest.approx(base99, abs=1e-9)
    # The first argument's coordinates define the weights: permutations and sign flips are fine.
    perm = rng.permutation(8)
    signs = rng.choice([-1.0, 1.0], 8)
    assert pwcca(x[:, perm] * signs, y) == pytest.approx(base99, abs=1e-9)
    # The canonical correlations themselves are invariant to linear maps on both sides.
    r1, r2 = pwcca_details(x, y, 1.0), pwcca_details(x @ a.T, y @ a, 1.0)
    np.testing.assert_allclose(r1.correlations, r2.correlations, atol=1e-9)
    assert pwcca(x @ a, x, keep_variance=1.0) == pytest.approx(1.0, abs=1e-9)


def test_independent_inputs_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5000, 8)), rng.standard_normal((5000, 8))
    assert pwcca(x, y) < 0.05
    assert pwcca(y, x) < 0.05


def test_weighting_follows_first_argument():
    rng = np.random.default_rng(4)
    n = 2000
    shared, own_x, own_y = rng.standard_normal((3, n))
    x = np.stack([5 * shared, own_x], 1)  # x is mostly the shared signal
    y = np.stack([shared, 5 * own_y], 1)  # y is mostly its own signal
    forward, backward = pwcca(x, y), pwcca(y, x)
    assert forward > 0.75  # most of x is found in y
    assert backward < 0.25  # most of y is not found in x
    # Same canonical correlations either way; only the weights differ.
    np.testing.assert_allclose(
        pwcca_details(x, y).correlations, pwcca_details(y, x).correlations, atol=1e-10
    )
    assert forward == pytest.approx(reference_pwcca(x, y)[0], abs=1e-8)


def test_matrix_and_torch_inputs():
    rng = np.random.default_rng(5)
    reps = [rng.standard_normal((200, d)) for d in (4, 6, 3)]
    reps.append(reps[0] @ rng.standard_normal((4, 4)))
    m = pwcca_matrix(reps)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-10)
    for i in range(4):
        for j in range(4):
            assert m[i, j] == pytest.approx(pwcca(reps[i], reps[j]), abs=1e-12)
    assert m[0, 3] == pytest.approx(1.0, abs=1e-9)
    t = torch.from_numpy(reps[1]).float()
    assert pwcca(t, reps[2]) == pytest.approx(pwcca(reps[1], reps[2]), abs=1e-5)


def test_errors():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="sample counts"):
        pwcca(rng.standard_normal((10, 2)), rng.standard_normal((11, 2)))
    with pytest.raises(ValueError, match="constant"):
        pwcca(np.ones((10, 2)), rng.standard_normal((10, 2)))
    with pytest.raises(ValueError, match="n_samples, dims"):
        pwcca(np.ones(10), rng.standard_normal((10, 2)))
    with pytest.raises(ValueError, match="keep_variance"):
        pwcca(rng.standard_normal((10, 2)), rng.standard_normal((10, 2)), keep_variance=0.0)
