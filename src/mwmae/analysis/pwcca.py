"""Projection-weighted canonical correlation analysis (PWCCA, Morcos et al. 2018).

Given two representations of the same n samples, X (n, dx) and Y (n, dy):

1. centre every column;
2. SVD pre-reduction: keep the leading singular directions of each matrix that together hold
   `keep_variance` (default 99%) of its variance;
3. CCA: with orthonormal bases Qx, Qy of the reduced column spaces (QR), the canonical
   correlations are the singular values of Qx^T Qy, and the canonical variates of X are
   Hx = Qx U (unit-norm, mutually orthogonal columns);
4. projection weighting: canonical variate i gets alpha_i = sum_j |<Hx_i, x_j>| over the
   (centred) columns x_j of X, normalised to sum to 1; PWCCA = sum_i alpha_i rho_i.

Direction: the weights come from the FIRST argument, so ``pwcca(X, Y)`` answers "how much of
X's representation is found in Y" and in general ``pwcca(X, Y) != pwcca(Y, X)``. (The original
code weights by whichever side has fewer kept directions; fixing the side makes matrices of
head similarities read consistently: row = weighted representation.)

Invariances: the canonical correlations are invariant to invertible linear maps of either side
(up to what the 99% pre-reduction trims), so ``pwcca(X, Y @ A) == pwcca(X, Y)``; the weights
use X's own coordinates, so for X the value is invariant to scaling, to permuting and to flipping
the sign of its columns, but not to an arbitrary linear map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

# Relative size below which a singular value counts as zero (rank deficiency), whatever the
# variance threshold says.
_RANK_RTOL = 1e-10


@dataclass
class ReducedRepresentation:
    """One representation after centring and SVD pre-reduction, ready for many CCA pairings.

    basis: (n, k) orthonormal basis of the kept column space (the left singular vectors, which
    are already the QR "Q" of the reduced data); gram: (k, d) = basis^T X_centred, so the inner
    products of any unit vector basis @ u with X's columns are u^T gram.
    """

    basis: np.ndarray
    gram: np.ndarray
    kept: int
    dims: int
    explained_variance: float


@dataclass
class PWCCAResult:
    """Details of one PWCCA comparison (weighting side = the first argument, X)."""

    similarity: float  # sum(weights * correlations)
    correlations: np.ndarray  # (m,) canonical correlations, descending, m = min(kx, ky)
    weights: np.ndarray  # (m,) projection weights of X's canonical variates, sum to 1
    mean_cca: float  # unweighted mean of the canonical correlations (symmetric in X, Y)
    kept_x: int  # directions kept by the SVD pre-reduction of X
    kept_y: int

    def to_dict(self) -> dict:
        return {
            "similarity": self.similarity,
            "correlations": self.correlations.tolist(),
            "weights": self.weights.tolist(),
            "mean_cca": self.mean_cca,
            "kept_x": self.kept_x,
            "kept_y": self.kept_y,
        }


def _as_matrix(a: ArrayLike, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (n_samples, dims), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or Inf values")
    return a


def reduce_representation(x: ArrayLike, keep_variance: float = 0.99) -> ReducedRepresentation:
    """Centre x (n, d) and keep the fewest singular directions holding `keep_variance` of its
    variance (always at least one, never numerically-zero ones)."""
    if not 0.0 < keep_variance <= 1.0:
        raise ValueError(f"keep_variance must be in (0, 1], got {keep_variance}")
    x = _as_matrix(x, "x")
    xc = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    if s.size == 0 or s[0] <= 0.0:
        raise ValueError("representation is constant: it has no variance to compare")
    var = s**2
    rank = int(np.sum(s > s[0] * _RANK_RTOL))
    cumulative = np.cumsum(var) / var.sum()
    # Fewest directions reaching the threshold (the small tolerance absorbs rounding at 1.0).
    k = int(np.searchsorted(cumulative, keep_variance - 1e-12) + 1)
    k = max(1, min(k, rank))
    basis = u[:, :k]
    return ReducedRepresentation(
        basis=basis,
        gram=basis.T @ xc,
        kept=k,
        dims=x.shape[1],
        explained_variance=float(cumulative[k - 1]),
    )


def pwcca_reduced(rx: ReducedRepresentation, ry: ReducedRepresentation) -> PWCCAResult:
    """PWCCA between two already reduced representations (weights from `rx`)."""
    if rx.basis.shape[0] != ry.basis.shape[0]:
        raise ValueError(
            f"representations have different sample counts: {rx.basis.shape[0]} vs "
            f"{ry.basis.shape[0]}"
        )
    # Both bases are orthonormal, so the SVD of their cross product gives the canonical
    # correlations directly (Bjorck & Golub), without forming covariance matrices.
    u, rho, _ = np.linalg.svd(rx.basis.T @ ry.basis, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)  # rounding can push a perfect correlation a hair above 1
    # |<Hx_i, x_j>| summed over X's columns; Hx = basis @ u, so the products are u^T gram.
    alpha = np.abs(u.T @ rx.gram).sum(axis=1)
    weights = alpha / alpha.sum()
    return PWCCAResult(
        similarity=float(np.sum(weights * rho)),
        correlations=rho,
        weights=weights,
        mean_cca=float(rho.mean()),
        kept_x=rx.kept,
        kept_y=ry.kept,
    )


def pwcca_details(x: ArrayLike, y: ArrayLike, keep_variance: float = 0.99) -> PWCCAResult:
    """PWCCA of x (n, dx) against y (n, dy), weighted by x, with correlations and weights."""
    rx, ry = reduce_representation(x, keep_variance), reduce_representation(y, keep_variance)
    return pwcca_reduced(rx, ry)


def pwcca(x: ArrayLike, y: ArrayLike, keep_variance: float = 0.99) -> float:
    """Projection-weighted CCA similarity in [0, 1] of x (n, dx) and y (n, dy); rows are samples.

    The projection weights come from x: the value says how much of x's representation is
    linearly recoverable from y. 1 for the same space, near 0 for unrelated ones (n >> dims).
    """
    return pwcca_details(x, y, keep_variance).similarity


def pwcca_matrix(representations: list[ArrayLike], keep_variance: float = 0.99) -> np.ndarray:
    """(k, k) matrix M[i, j] = pwcca(reps[i], reps[j]); each reduction is computed once."""
    reduced = [reduce_representation(r, keep_variance) for r in representations]
    k = len(reduced)
    out = np.empty((k, k), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            out[i, j] = pwcca_reduced(reduced[i], reduced[j]).similarity
    return out
