"""Every metric of the suite, computed from operating points, identically for every method.

- accuracy, ``cost`` (mean normalised cumulative Mul-Adds at the exit taken) and mean Mul-Adds;
- per-exit share, accuracy on the samples that exit there, and accuracy of each IM on all
  samples (JEI-DNN, Fig. 3); ECE of each IM on all samples (JEI-DNN, Fig. 4);
- ECE with 15 equal-width bins on the confidence of the answered prediction (Guo et al., ICML
  2017, eq. 3), equal-mass bins as an option;
- failure prediction: how well the answered confidence separates correct from wrong answers, as
  AUROC (scikit-learn's ``roc_auc_score``) and AURC, the area under the risk–coverage curve
  (Geifman & El-Yaniv, NeurIPS 2017), with E-AURC (Geifman et al., ICLR 2019), at the point and
  for each IM on all samples;
- split conformal prediction per exit (JEI-DNN §5.2; ``methods.md``, Metrics): score
  s = 1 − p_y on ``calib``; for exit l, q̂_l is the ⌈(n+1)(1−α)⌉-th smallest score of the calib
  samples that exit at l (all calib samples scored by IM l when fewer than 20 exit there);
  the set is {y : p_y ≥ 1 − q̂_l}. Inefficiency (mean set size) and coverage for
  α ∈ {0.01, …, 0.10}; ``inefficiency_at_95`` is the inefficiency at α = 0.05, the sets built
  for 95 % coverage (an α fixed in advance, not picked by the test coverage it reached).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from eebench.harness.method import OperatingPoint

ALPHAS: list[float] = [round(0.01 * i, 2) for i in range(1, 11)]
MIN_EXIT_CALIB = 20
#: The α of "inefficiency at 95 %": split conformal sets built for 1 − α = 0.95 coverage.
SET_SIZE_ALPHA = 0.05


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, binning: str = "width") -> float:
    """Expected calibration error Σ_m |B_m|/n · |acc(B_m) − conf(B_m)| (Guo et al. 2017, eq. 3).

    Args:
        confidence: ``[N]`` confidence of the answered class, in [0, 1].
        correct: ``[N]`` bool, whether the answered class is the label.
        n_bins: M.
        binning: "width" — bins ((m−1)/M, m/M], confidence 0 in the first; "mass" — M bins of
            (nearly) equal counts in confidence order.

    Returns:
        ECE as a fraction in [0, 1]; 0.0 for an empty input.

    Raises:
        ValueError: unknown ``binning``.
    """
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=float)
    n = conf.size
    if n == 0:
        return 0.0
    if binning == "width":
        bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    elif binning == "mass":
        bins = np.empty(n, dtype=int)
        bins[np.argsort(conf, kind="stable")] = np.arange(n) * n_bins // n
    else:
        raise ValueError(f"binning must be 'width' or 'mass', got {binning!r}")
    total = 0.0
    for m in np.unique(bins):
        sel = bins == m
        total += sel.sum() / n * abs(corr[sel].mean() - conf[sel].mean())
    return float(total)


def auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of ``confidence`` (``[N]``) as a score of ``correct`` (``[N]`` bool): the chance that a
    correct answer is more confident than a wrong one, ties half (scikit-learn's ``roc_auc_score``).
    NaN when every answer is correct or every one wrong."""
    from sklearn.metrics import roc_auc_score

    ok = np.asarray(correct, dtype=bool)
    if ok.all() or not ok.any():
        return math.nan
    return float(roc_auc_score(ok, np.asarray(confidence, dtype=np.float64)))


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve (Geifman & El-Yaniv, NeurIPS 2017): answers taken in
    decreasing confidence; each is charged the risk (error rate) of the covered set once every answer
    as confident as it is in (ties enter together, so the order of tied samples does not matter):
    AURC = (1/N) Σ_g n_g · E_g / N_g over the groups g of tied confidence, N_g and E_g the answers
    and errors covered up to g. A fraction; 0.0 for an empty input."""
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = ~np.asarray(correct, dtype=bool)
    if conf.size == 0:
        return 0.0
    values, group = np.unique(-conf, return_inverse=True)          # most confident group first
    n_g = np.bincount(group, minlength=len(values))
    e_g = np.bincount(group, weights=wrong.astype(np.float64), minlength=len(values))
    return float((n_g * np.cumsum(e_g) / np.cumsum(n_g)).sum() / conf.size)


def e_aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Excess AURC (Geifman et al., ICLR 2019): :func:`aurc` less the AURC of an ideal ranking with
    the same errors (every correct answer before every wrong one), computed exactly:
    (1/N) Σ_{i=N−E+1}^{N} (i − N + E) / i."""
    ok = np.asarray(correct, dtype=bool)
    n, errors = ok.size, int((~ok).sum())
    i = np.arange(n - errors + 1, n + 1, dtype=np.float64)
    return aurc(confidence, ok) - float(((i - n + errors) / i).sum() / max(n, 1))


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """q̂ = the ⌈(n+1)(1−α)⌉-th smallest of ``scores`` (``[n]``); +∞ when that rank exceeds n.

    Guarantees P(s_test ≤ q̂) ≥ 1 − α for exchangeable scores (Angelopoulos & Bates 2021, Thm. 1).
    """
    s = np.sort(np.asarray(scores, dtype=float))
    rank = math.ceil((s.size + 1) * (1 - alpha) - 1e-9)
    return float(s[rank - 1]) if 1 <= rank <= s.size else math.inf


def conformal_exit_quantiles(calib: OperatingPoint, labels: np.ndarray, alpha: float) -> np.ndarray:
    """q̂_l for every exit l, ``[K]``, from the calib split's operating point (see module doc)."""
    probs = calib.exit_probs.numpy()
    n, K, _ = probs.shape
    scores_all = 1.0 - probs[np.arange(n), :, labels]  # [n, K]: score of every sample at every exit
    q = np.empty(K)
    for l in range(K):
        at_l = calib.exit_index == l
        q[l] = conformal_quantile(scores_all[at_l, l] if at_l.sum() >= MIN_EXIT_CALIB else scores_all[:, l], alpha)
    return q


def conformal_sets(test: OperatingPoint, quantiles: np.ndarray) -> np.ndarray:
    """Prediction sets ``[N, C]`` bool: {y : 1 − p_y ≤ q̂_l} at each sample's exit l."""
    p = test.answered_probs.numpy()
    return (1.0 - p) <= quantiles[test.exit_index][:, None]


def conformal_set_sizes(test: OperatingPoint, calib: OperatingPoint, calib_labels: np.ndarray,
                        alpha: float = SET_SIZE_ALPHA) -> np.ndarray:
    """Size of each test sample's conformal set at level α (calibrated on ``calib``), ``[N]`` int."""
    return conformal_sets(test, conformal_exit_quantiles(calib, np.asarray(calib_labels), alpha)).sum(1)


def evaluate(test: OperatingPoint, test_labels: np.ndarray, calib: OperatingPoint | None,
             calib_labels: np.ndarray | None, exit_costs: np.ndarray, exit_muladds: np.ndarray,
             alphas: Sequence[float] = ALPHAS) -> dict[str, Any]:
    """All metrics of one operating point.

    Args:
        test: the point on the split reported (``[N]`` exits, ``[N, K, C]`` probabilities).
        calib: the same point on ``calib`` (None: no conformal figures).
        exit_costs: ``[K]`` normalised cumulative cost c_k of stopping at each exit.
        exit_muladds: ``[K]`` the same in absolute Mul-Adds.

    Returns:
        a JSON-ready dict: ``accuracy``, ``cost``, ``muladds``, ``ece``, ``ece_mass``,
        ``exit_shares`` [K], ``exit_accuracy`` [K] (None where no sample exits),
        ``im_accuracy`` [K], ``im_ece`` [K] (ECE of each IM's own prediction on all samples,
        15 equal-width bins; JEI-DNN Fig. 4), ``auroc``, ``aurc``, ``e_aurc`` of the answered
        confidence and ``im_auroc`` [K], ``im_aurc`` [K] of each IM's, and, with calib, ``conformal`` {alpha,
        inefficiency, coverage} and ``inefficiency_at_95`` (the inefficiency at α = 0.05).
    """
    y = np.asarray(test_labels)
    exits = np.asarray(test.exit_index)
    K = test.exit_probs.shape[1]
    answered = test.answered_probs.numpy()
    pred, conf = answered.argmax(1), answered.max(1)
    correct = pred == y
    shares = np.bincount(exits, minlength=K) / len(y)
    exit_acc = [float(correct[exits == k].mean()) if (exits == k).any() else None for k in range(K)]
    im_probs = test.exit_probs.numpy()                      # [N, K, C]
    im_correct = im_probs.argmax(-1) == y[:, None]          # [N, K]
    im_acc = im_correct.mean(0)
    im_conf = im_probs.max(-1)                              # [N, K]
    im_ece = [ece(im_conf[:, k], im_correct[:, k]) for k in range(K)]
    out: dict[str, Any] = {
        "accuracy": float(correct.mean()),
        "cost": float(np.asarray(exit_costs)[exits].mean()),
        "muladds": float(np.asarray(exit_muladds)[exits].mean()),
        "ece": ece(conf, correct),
        "ece_mass": ece(conf, correct, binning="mass"),
        "exit_shares": shares.tolist(),
        "exit_accuracy": exit_acc,
        "im_accuracy": im_acc.tolist(),
        "im_ece": im_ece,
        "auroc": auroc(conf, correct),
        "aurc": aurc(conf, correct),
        "e_aurc": e_aurc(conf, correct),
        "im_auroc": [auroc(im_conf[:, k], im_correct[:, k]) for k in range(K)],
        "im_aurc": [aurc(im_conf[:, k], im_correct[:, k]) for k in range(K)],
    }
    if calib is not None:
        ineff, cover = [], []
        for a in alphas:
            sets = conformal_sets(test, conformal_exit_quantiles(calib, np.asarray(calib_labels), a))
            ineff.append(float(sets.sum(1).mean()))
            cover.append(float(sets[np.arange(len(y)), y].mean()))
        out["conformal"] = {"alpha": list(alphas), "inefficiency": ineff, "coverage": cover}
        out["inefficiency_at_95"] = float(conformal_set_sizes(test, calib, np.asarray(calib_labels)).mean())
    return out
