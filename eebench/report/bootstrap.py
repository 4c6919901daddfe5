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

