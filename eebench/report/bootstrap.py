"""The uncertainty of test estimates: the bootstrap over test samples.

Every method of a setting is evaluated on the same test samples, so one set of resamples serves
all of them and pairs them: replicate r draws N test samples with replacement (counts
``W[r, n]``), and each figure is recomputed on it. A figure pooled over seeds (the mean over a
method's seeds) is recomputed as that mean on the same resample. The standard error is the
standard deviation (ddof = 1) of the R replicates (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993, §6.2); two methods are *tied* at a budget when the 95 % percentile interval of
the replicates of their difference contains 0 (a paired bootstrap test, ibid. §16).

Figures that are means over test samples (accuracy, cost, set size, and the area under the
val-selected curve, whose per-sample score is the budget-weighted correctness) are replicated as
``W @ x / N``; ECE, ``Σ_m |Σ_{n∈m} (correct_n − conf_n)| / N`` over 15 confidence bins, as the same
matrix product per bin.
"""
from __future__ import annotations

import zlib

import numpy as np

from eebench.errors import UsageError

#: Replicates unless the caller asks for another count.
DEFAULT_REPLICATES = 1000
MIN_REPLICATES = 100
ECE_BINS = 15


def check_replicates(count: int) -> int:
    """``count`` if it is ≥ :data:`MIN_REPLICATES`.

    Raises:
        UsageError: fewer.
    """
    if int(count) < MIN_REPLICATES:
        raise UsageError(f"bootstrap count {count}: use at least {MIN_REPLICATES} replicates (default "
                         f"{DEFAULT_REPLICATES})")
    return int(count)


def resample_weights(n: int, replicates: int, key: str) -> np.ndarray:
    """``[R, N]`` float32 resampling weights: multinomial counts of N draws with replacement, over N.

    Deterministic for ``key`` (e.g. the setting's name), so a report is reproducible byte for byte.
    """
    rng = np.random.default_rng([0, zlib.crc32(key.encode())])
    return (rng.multinomial(n, np.full(n, 1.0 / n), size=replicates) / n).astype(np.float32)


def replicate_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Replicates of the mean of a per-sample quantity: ``[R, N]`` weights, ``[N]`` → ``[R]``."""
    return weights @ np.asarray(values, dtype=np.float32)


def replicate_ece(weights: np.ndarray, correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Replicates of the ECE (equal-width bins ((m−1)/M, m/M], as :func:`eebench.harness.metrics.ece`).

    Args:
        weights: ``[R, N]``.
        correct: ``[N]`` bool; confidence: ``[N]`` in [0, 1].

    Returns:
        ``[R]`` ECE as fractions.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    bin_of = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    gap = np.zeros((conf.size, bins), dtype=np.float32)
    gap[np.arange(conf.size), bin_of] = np.asarray(correct, dtype=np.float64) - conf
    return np.abs(weights @ gap).sum(1)


def standard_error(replicates: np.ndarray) -> float:
    """The bootstrap standard error: std (ddof = 1) of the replicates; NaN if any is NaN."""
    r = np.asarray(replicates, dtype=np.float64)
    return float(np.std(r, ddof=1)) if r.size > 1 and np.isfinite(r).all() else float("nan")


def tied(best: np.ndarray, other: np.ndarray, level: float = 0.95) -> bool:
    """Whether the paired replicates of ``best`` − ``other`` leave 0 inside their two-sided
    ``level`` percentile interval (i.e. the bootstrap cannot separate the two)."""
    diff = np.asarray(best, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    lo, hi = np.quantile(diff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return bool(lo <= 0 <= hi)


def _level_mass(weights: np.ndarray, correct: np.ndarray, levels: np.ndarray, n_levels: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resampled weight of the correct and of the wrong samples at each confidence level: ``[R, L+1]`` each."""
    lv = np.asarray(levels, dtype=np.int64)
    ok = np.asarray(correct, dtype=bool)
    onehot = np.zeros((lv.size, n_levels + 1), dtype=np.float32)
    onehot[np.arange(lv.size), lv] = 1.0
    w = np.asarray(weights, dtype=np.float32)
    return w @ (onehot * ok[:, None]), w @ (onehot * ~ok[:, None])


def replicate_auroc(weights: np.ndarray, correct: np.ndarray, levels: np.ndarray, n_levels: int) -> np.ndarray:
    """Replicates of the AUROC of the confidence as a score of correctness: the chance that a correct
    answer is more confident than a wrong one, ties counted half (Mann–Whitney), on quantised
    confidence ``levels`` (0..``n_levels``) as the samples table stores them.

    Args:
        weights: ``[R, N]``; correct: ``[N]`` bool; levels: ``[N]`` int.

    Returns:
        ``[R]`` AUROC as fractions (NaN in a replicate with no correct or no wrong sample).
    """
    good, bad = _level_mass(weights, correct, levels, n_levels)
    below = np.cumsum(bad, axis=1) - bad
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((good * (below + 0.5 * bad)).sum(1) / (good.sum(1) * bad.sum(1))).astype(np.float64)


def replicate_aurc(weights: np.ndarray, correct: np.ndarray, levels: np.ndarray, n_levels: int) -> np.ndarray:
    """Replicates of the area under the risk–coverage curve (Geifman & El-Yaniv, NeurIPS 2017):
    samples taken in decreasing confidence, a group of tied levels at once, each sample charged the
    risk (error rate) of the covered set once its group is in (:func:`eebench.harness.metrics.aurc`).

    Returns:
        ``[R]`` AURC as fractions.
    """
    good, bad = _level_mass(weights, correct, levels, n_levels)
    good, bad = good[:, ::-1], bad[:, ::-1]                      # most confident level first
    covered, errors = np.cumsum(good + bad, axis=1), np.cumsum(bad, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        risk = np.where(covered > 0, errors / covered, 0.0)
    return ((good + bad) * risk).sum(1).astype(np.float64) / (good + bad).sum(1)
