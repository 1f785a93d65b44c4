"""Independent reference implementation of every definition in MISSION.md section 3.

Written with the paper's own tools (numpy, scipy, scikit-learn) and nothing from filterdb:
check.py compares filterdb's SQL functions against these functions, computed from the
same stored values (the store's Parquet files read with pyarrow), so f16 rounding of
the weights is not an error source. Everything accumulates in float64.

Conventions shared with the SQL contract:
- a filter is a row of 9 weights in row-major (kh, kw) order; a set of filters is an
  ``(n, 9)`` array;
- PCA ``components`` are rows, sorted by eigenvalue, descending, each flipped so that
  its entry of largest absolute value is positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats
from sklearn.decomposition import PCA

#: float32 machine epsilon, the paper's value for empty histogram bins.
F32_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07

#: Coefficients of the paper's normalisation curve f(n) of the variance entropy.
_F_A, _F_B, _F_C, _F_D = 1.2618047, -0.88767525, 2.30436435, 0.31050834


# --------------------------------------------------------------------------- per filter


def peak_scale(w: np.ndarray) -> np.ndarray:
    """``s(f) = f / max_i |f_i|``, row-wise; an all-zero filter stays zero.

    Returned as float32 (the SQL function's type). The quotient is formed in float64 and
    rounded once to float32; for inputs that are float32 (or float16) values this equals
    an IEEE float32 division, because rounding a float64 quotient to float32 is
    innocuous (53 >= 2 * 24 + 2).
    """
    w = np.asarray(w, dtype=np.float64)
    m = np.max(np.abs(w), axis=-1, keepdims=True)
    out = np.divide(w, m, out=np.zeros_like(w), where=m > 0)
    return out.astype(np.float32)


def l1_norm(w: np.ndarray) -> np.ndarray:
    return np.sum(np.abs(np.asarray(w, dtype=np.float64)), axis=-1)


def l2_norm(w: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(np.square(np.asarray(w, dtype=np.float64)), axis=-1))


def linf_norm(w: np.ndarray) -> np.ndarray:
    return np.max(np.abs(np.asarray(w, dtype=np.float64)), axis=-1)


# --------------------------------------------------------------------------------- PCA


@dataclass
class Basis:
    n: int
    mean: np.ndarray  # (9,)
    components: np.ndarray  # (9, 9), rows
    explained_variance: np.ndarray  # (9,)
    explained_variance_ratio: np.ndarray  # (9,)

    @classmethod
    def from_sql(cls, d: dict) -> "Basis":
        return cls(
            n=int(d["n"]),
            mean=np.asarray(d["mean"], dtype=np.float64),
            components=np.asarray(d["components"], dtype=np.float64).reshape(9, 9),
            explained_variance=np.asarray(d["explained_variance"], dtype=np.float64),
            explained_variance_ratio=np.asarray(d["explained_variance_ratio"], dtype=np.float64),
        )


def apply_sign_rule(components: np.ndarray) -> np.ndarray:
    """Flip each row so that its entry of largest absolute value is positive."""
    c = np.array(components, dtype=np.float64, copy=True)
    idx = np.argmax(np.abs(c), axis=1)
    signs = np.sign(c[np.arange(c.shape[0]), idx])
    signs[signs == 0] = 1.0
    return c * signs[:, None]


def pca_fit(x: np.ndarray) -> Basis:
    """The PCA basis of MISSION.md section 3, computed with scikit-learn.

    sklearn's ``PCA(svd_solver="full")`` centres the data, takes the SVD and reports
    ``explained_variance_ = s**2 / (n - 1)`` (the eigenvalues of the n-1 covariance).
    Its sign convention (``svd_flip``) has changed between releases, so the documented
    rule is applied explicitly here; ``sklearn_sign_rule_agrees`` tells whether
    sklearn's own signs already satisfied it (check.py reports that as information).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    p = PCA(n_components=9, svd_solver="full").fit(x)
    comps = apply_sign_rule(p.components_)
    ev = np.asarray(p.explained_variance_, dtype=np.float64)
    total = ev.sum()
    ratio = ev / total if total > 0 else np.zeros(9)
    return Basis(n=n, mean=np.asarray(p.mean_, dtype=np.float64), components=comps,
                 explained_variance=ev, explained_variance_ratio=ratio)


def sklearn_sign_rule_agrees(x: np.ndarray) -> bool:
    p = PCA(n_components=9, svd_solver="full").fit(np.asarray(x, dtype=np.float64))
    return bool(np.array_equal(apply_sign_rule(p.components_), p.components_))


def pca_fit_eigh(x: np.ndarray) -> Basis:
    """The same basis from the covariance's eigen-decomposition (a cross-check of sklearn)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    mu = x.mean(axis=0)
    c = np.cov(x, rowvar=False, ddof=1)
    vals, vecs = np.linalg.eigh(c)
    order = np.argsort(vals)[::-1]
    vals = vals[order]
    comps = apply_sign_rule(vecs[:, order].T)
    return Basis(n=n, mean=mu, components=comps, explained_variance=vals,
                 explained_variance_ratio=vals / vals.sum())


def pca_project(x: np.ndarray, basis: Basis) -> np.ndarray:
    """Coefficients ``c = (x - mu) . V^T``."""
    return (np.asarray(x, dtype=np.float64) - basis.mean) @ basis.components.T


# ---------------------------------------------------------------- histograms and drift


def coef_range(c: np.ndarray) -> tuple[float, float]:
    """Min and max over all coefficients of all filters (the paper's shared range)."""
    c = np.asarray(c, dtype=np.float64)
    return float(c.min()), float(c.max())


def coef_histogram(c: np.ndarray, lo: float, hi: float, bins: int = 70) -> np.ndarray:
    """Per coefficient, ``np.histogram`` over ``[lo, hi]``: a ``(9, bins)`` int array.

    numpy semantics: equal-width bins, the last one closed on the right, values outside
    dropped.
    """
    c = np.asarray(c, dtype=np.float64)
    return np.stack([np.histogram(c[:, i], bins=bins, range=(lo, hi))[0] for i in range(9)])


def near_edge_counts(c: np.ndarray, lo: float, hi: float, bins: int, tol: float) -> np.ndarray:
    """Per (coefficient, bin): how many values lie within ``tol`` of one of the bin's edges.

    A value that close to an edge may fall on either side in an implementation that
    accumulates in another order; check.py allows a histogram to differ by at most that.
    """
    c = np.asarray(c, dtype=np.float64)
    edges = np.linspace(lo, hi, bins + 1)
    out = np.zeros((9, bins), dtype=np.int64)
    for i in range(9):
        v = c[:, i]
        j = np.clip(np.searchsorted(edges, v), 0, bins)
        d = np.minimum(np.abs(v - edges[np.clip(j - 1, 0, bins)]), np.abs(v - edges[j]))
        near = d <= tol
        b = np.clip(((v[near] - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        for k in (b - 1, b, b + 1):
            k = k[(k >= 0) & (k < bins)]
            np.add.at(out[i], k, 1)
    return out


def hist_probabilities(counts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The paper's rule, per row: density ``count / (total * bin_width)``, empty bins get
    float32 epsilon, then divide by the sum."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    bins = counts.shape[1]
    width = (hi - lo) / bins
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = counts / (total * width)
    d[counts == 0] = F32_EPS
    return d / d.sum(axis=1, keepdims=True)


def kl_drift(counts_a: np.ndarray, counts_b: np.ndarray, lo: float, hi: float,
             weights: np.ndarray | None = None) -> float:
    """``D = sum_i w_i (KL(p_i || q_i) + KL(q_i || p_i))``, natural log (scipy.stats.entropy);
    ``w`` = the explained-variance ratio, or uniform 1/9 when ``None``."""
    p = hist_probabilities(counts_a, lo, hi)
    q = hist_probabilities(counts_b, lo, hi)
    w = np.full(p.shape[0], 1.0 / p.shape[0]) if weights is None else np.asarray(weights, np.float64)
    return float(sum(w[i] * (scipy.stats.entropy(p[i], q[i]) + scipy.stats.entropy(q[i], p[i]))
                     for i in range(p.shape[0])))


def kl_matrix(hists: dict, lo: float, hi: float, weights=None, sort_by_column_mean=True):
    """D for every ordered pair of groups; rows and columns sorted by the column mean
    (ascending, as the paper does for task and visual category) unless told otherwise.
    Returns ``(names, matrix)``."""
    names = list(hists)
    m = np.array([[kl_drift(hists[a], hists[b], lo, hi, weights) for b in names] for a in names])
    if sort_by_column_mean:
        order = np.argsort(m.mean(axis=0), kind="stable")
        names = [names[i] for i in order]
        m = m[np.ix_(order, order)]
    return names, m


def depth_bucket(x: float) -> str:
    """``[0.0, 0.1]``, ``(0.1, 0.2]``, ..., ``(0.9, 1.0]``; the bucket edges are the float64
    values nearest k/10, so ``conv_depth_norm = 3/10`` lies in ``(0.2, 0.3]``."""
    if x is None or not (0.0 <= x <= 1.0):
        return None
    if x <= 0.1:
        return "[0.0, 0.1]"
    for k in range(2, 11):
        if x <= k / 10:
            return f"({(k - 1) / 10:.1f}, {k / 10:.1f}]"
    raise AssertionError(x)


# ------------------------------------------------------------------------- per layer


def layer_sparsity(w: np.ndarray, ratio: float = 0.01) -> float:
    """Share of filters whose 9 ``|w_i| < t``, ``t = ratio * max |w|`` over the layer
    (``t = 1`` for an all-zero layer)."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    m = a.max()
    t = ratio * m if m > 0 else 1.0
    return float(np.mean(np.all(a < t, axis=1)))


def sparse_mask(w: np.ndarray, ratio: float = 0.01) -> np.ndarray:
    a = np.abs(np.asarray(w, dtype=np.float64))
    m = a.max()
    t = ratio * m if m > 0 else 1.0
    return np.all(a < t, axis=1)


def variance_entropy(w: np.ndarray) -> float:
    """SVD of the centred n x 9 layer matrix: ``v = s^2 / (n-1)``, ``r = v / sum v``,
    ``H = -sum r log10 r`` over ``r > 0``; 0 when ``sum v = 0`` (or n < 2)."""
    x = np.asarray(w, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return 0.0
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    v = s ** 2 / (n - 1)
    tot = v.sum()
    if tot == 0:
        return 0.0
    r = v / tot
    r = r[r > 0]
    return float(-np.sum(r * np.log10(r)))


def entropy_norm_curve(n: int) -> float:
    """``f(n) = 1.2618047 / (1 + exp(-0.88767525 (log2 n - 2.30436435))) - 0.31050834``."""
    return _F_A / (1.0 + math.exp(_F_B * (math.log2(n) - _F_C))) - _F_D


def variance_entropy_norm(w: np.ndarray) -> float:
    return variance_entropy(w) / entropy_norm_curve(np.asarray(w).shape[0])


def variance_entropy_clean(w: np.ndarray, ratio: float = 0.01) -> float:
    w = np.asarray(w)
    return variance_entropy(w[~sparse_mask(w, ratio)])


def variance_entropy_clean_norm(w: np.ndarray, ratio: float = 0.01) -> float:
    w = np.asarray(w)
    keep = w[~sparse_mask(w, ratio)]
    return variance_entropy(keep) / entropy_norm_curve(keep.shape[0])


def orthogonality(w: np.ndarray, out_channel: np.ndarray, in_channel: np.ndarray) -> float:
    """Rows = out channels (all in-channel kernels, in_channel-major, length in x 9), each
    L2-normalised (zero rows left as is); ``1 - sum |W W^T - I| / (n (n - 1))``."""
    w = np.asarray(w, dtype=np.float64)
    oc = np.asarray(out_channel, dtype=np.int64)
    ic = np.asarray(in_channel, dtype=np.int64)
    n_out, n_in = oc.max() + 1, ic.max() + 1
    m = np.zeros((n_out, n_in, 9))
    m[oc, ic] = w
    m = m.reshape(n_out, n_in * 9)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    m = np.divide(m, norms, out=m.copy(), where=norms > 0)
    n = n_out
    if n < 2:
        return float("nan")
    return float(1.0 - np.abs(m @ m.T - np.eye(n)).sum() / (n * (n - 1)))


def density_2d(c0: np.ndarray, c1: np.ndarray, bins: int = 512, lim: float = 3.3) -> np.ndarray:
    """2-D density of coefficients c0, c1: bins x bins over [-lim, lim]^2, divided by the max."""
    h, _, _ = np.histogram2d(c0, c1, bins=bins, range=[[-lim, lim], [-lim, lim]])
    mx = h.max()
    return h / mx if mx > 0 else h
