"""2-D projections of steering vectors: PCA (SVD) and exact t-SNE, in numpy.

t-SNE follows van der Maaten & Hinton (2008): Gaussian input affinities whose bandwidth per point
is found by bisection to match the perplexity, symmetrised; Student-t output affinities; gradient
descent with momentum, per-parameter gains and early exaggeration. Exact (O(n²) per iteration) is
enough for the paper's 2,500 vectors and needs no extra dependency.
"""

from __future__ import annotations

import numpy as np


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``x`` [n, d] on the first two principal components.

    Returns (coordinates [n, 2], explained variance ratio [2]). Signs are fixed (the largest-|.|
    loading of each component is positive), so the output is deterministic.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"pca_2d: need a [n >= 2, d] matrix, got shape {x.shape}")
    centered = x - x.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    k = min(2, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    signs[signs == 0] = 1.0
    comps = comps * signs[:, None]
    coords = centered @ comps.T
    var = s ** 2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    if k < 2:  # a single direction (e.g. n == 2): pad with zeros
        coords = np.hstack([coords, np.zeros((len(x), 2 - k))])
        ratio = np.concatenate([ratio, np.zeros(2 - k)])
    return coords, ratio


def _affinities(sq_dist: np.ndarray, perplexity: float, tol: float = 1e-5,
                max_steps: int = 100) -> np.ndarray:
    """Conditional P(j|i) with a per-row precision found by bisection on the entropy."""
    n = sq_dist.shape[0]
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        d = np.delete(sq_dist[i], i)
        beta, lo, hi = 1.0, 0.0, np.inf
        for _ in range(max_steps):
            w = np.exp(-(d - d.min()) * beta)
            total = w.sum()
            probs = w / total
            entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-300)))
            if abs(entropy - target) < tol:
                break
            if entropy > target:  # too flat: sharpen
                lo = beta
                beta = beta * 2.0 if hi == np.inf else (beta + hi) / 2.0
            else:
                hi = beta
                beta = (beta + lo) / 2.0
        p[i, np.arange(n) != i] = probs
    return p


def tsne_2d(x: np.ndarray, perplexity: float = 30.0, n_iter: int = 1000, seed: int = 0,
            early_exaggeration: float = 12.0, exaggeration_iters: int = 250) -> np.ndarray:
    """Exact t-SNE of rows of ``x`` [n, d] to 2-D. Deterministic for a given ``seed``.

    ``perplexity`` is clipped to (n - 1) / 3 for small n. Inputs with more than 50 dimensions
    are first reduced to 50 by PCA, as is customary.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if x.ndim != 2 or n < 3:
        raise ValueError(f"tsne_2d: need a [n >= 3, d] matrix, got shape {x.shape}")
    x = x - x.mean(0, keepdims=True)
    if x.shape[1] > 50:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        x = u[:, :50] * s[:50]
    perplexity = float(min(perplexity, max((n - 1) / 3.0, 1.0)))
    sq = np.square(x).sum(1)
    sq_dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    positive = sq_dist[sq_dist > 0]
    if positive.size:  # scale-free bisection start
        sq_dist = sq_dist / positive.mean()
    p = _affinities(sq_dist, perplexity)
    p = (p + p.T) / (2.0 * n)
    p = np.maximum(p, 1e-12)

    rng = np.random.RandomState(seed)
    y = rng.randn(n, 2) * 1e-4
    update = np.zeros_like(y)
    gains = np.ones_like(y)
    learning_rate = max(n / early_exaggeration / 4.0, 50.0)
    for it in range(n_iter):
        exaggeration = early_exaggeration if it < exaggeration_iters else 1.0
        momentum = 0.5 if it < exaggeration_iters else 0.8
        sq_y = np.square(y).sum(1)
        num = 1.0 / (1.0 + sq_y[:, None] + sq_y[None, :] - 2.0 * y @ y.T)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        w = (exaggeration * p - q) * num  # [n, n]
        grad = 4.0 * (w.sum(1)[:, None] * y - w @ y)
        same_sign = np.sign(grad) == np.sign(update)
        gains = np.where(same_sign, gains * 0.8, gains + 0.2)
        gains = np.maximum(gains, 0.01)
        update = momentum * update - learning_rate * gains * grad
        y = y + update
        y = y - y.mean(0, keepdims=True)
    return y


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities of rows of ``x`` (zero rows give 0)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return unit @ unit.T


def block_means(sim: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list]:
    """Average a pairwise matrix over label blocks: entry (a, b) = mean of sim[i, j] with
    label i = a, label j = b, i != j. Returns (matrix [k, k], the k labels in first-seen order)."""
    labels = np.asarray(labels)
    order = list(dict.fromkeys(labels.tolist()))
    out = np.full((len(order), len(order)), np.nan)
    off_diag = ~np.eye(len(labels), dtype=bool)
    for a, la in enumerate(order):
        rows = labels == la
        for b, lb in enumerate(order):
            mask = rows[:, None] & (labels == lb)[None, :] & off_diag
            if mask.any():
                out[a, b] = sim[mask].mean()
    return out, order
