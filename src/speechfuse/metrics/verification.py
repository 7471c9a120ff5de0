"""Speaker verification metrics from trial scores: EER and minDCF, computed exactly from the ROC.

    eer = equal_error_rate(scores, labels)             # labels: 1 = target trial, 0 = non-target
    dcf = min_dcf(scores, labels, p_target=0.01)
    verification_metrics(scores, labels)               # {"eer", "min_dcf_0.01", "min_dcf_0.05"}
    eer_threshold(scores, labels)                      # the score where FAR = FRR (a decision threshold)

A trial is accepted when its score is >= the threshold. The ROC has one point per distinct score (plus
the point "accept nothing"), so tied scores move both error rates at once, as they must: no threshold
can separate them. All rates are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from speechfuse.errors import ConfigError

DCF_TARGET_PRIORS = (0.01, 0.05)


def _as_arrays(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ConfigError(f"verification metrics: {s.size} scores but {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError("verification metrics: labels must be 1 (target) or 0 (non-target)")
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ConfigError(f"verification metrics: score {bad} is {s[bad]}; every trial needs a finite score")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ConfigError(f"verification metrics: need both target and non-target trials, got {int(y.sum())} "
                          f"target and {int((~y).sum())} non-target")
    return s, y


def detection_error_tradeoff(scores: Sequence[float], labels: Sequence[int]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-acceptance rates, false-rejection rates, thresholds), one point per distinct score plus
    (0, 1, +inf); thresholds descend, so FAR rises and FRR falls along the arrays."""
    s, y = _as_arrays(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # accept everything down to the end of each group of equal scores
    accepted_targets = np.cumsum(y)[last_of_tie]
    accepted_nontargets = np.cumsum(~y)[last_of_tie]
    far = np.r_[0.0, accepted_nontargets / (~y).sum()]
    frr = np.r_[1.0, 1.0 - accepted_targets / y.sum()]
    return far, frr, np.r_[np.inf, s[last_of_tie]]


def equal_error_rate(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The rate where FAR = FRR on the ROC, with linear interpolation between the two ROC points that
    straddle the crossing: the point where the piecewise-linear ROC meets the line FAR = FRR. This is
    the same number as the common `brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)` recipe over
    sklearn's roc_curve (s3prl's sv_voxceleb1 scores EER that way), computed in closed form."""
    far, frr, _ = detection_error_tradeoff(scores, labels)
    gap = frr - far  # +1 at the first point, -1 at the last, non-increasing in between
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        return float(far[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])  # where the segment from point i-1 to i meets FAR = FRR
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def eer_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The score threshold at the equal error rate: where the piecewise-linear DET curve meets FAR = FRR
    (`equal_error_rate`'s crossing), with the threshold interpolated between the two ROC points' thresholds
    by the same fraction. When the crossing lies between "accept nothing" and the first point, or on a
    point, it is that point's threshold (a real score: accepting `>=` it gives that point's rates)."""
    far, frr, thresholds = detection_error_tradeoff(scores, labels)
    gap = frr - far
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0 or not np.isfinite(thresholds[i - 1]):
        return float(thresholds[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(thresholds[i - 1] + t * (thresholds[i] - thresholds[i - 1]))


def min_dcf(scores: Sequence[float], labels: Sequence[int], p_target: float, c_miss: float = 1.0,
            c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over all thresholds.

    The formula is NIST's (2016 Speaker Recognition Evaluation Plan, section 3.1; the same normalisation
    is used by Kaldi's sid/compute_min_dcf.py and the VoxSRC challenges, which report p_target 0.05;
    VoxCeleb papers after SRE 2016 report 0.01):
        C_det(t) = C_miss * P_miss(t) * P_target + C_fa * P_fa(t) * (1 - P_target)
        C_def    = min(C_miss * P_target, C_fa * (1 - P_target))   (the cost of always accepting or rejecting)
        minDCF   = min_t C_det(t) / C_def
    so 1.0 is no better than a system that does not listen, and 0 is perfect.
    """
    if not 0 < p_target < 1 or c_miss <= 0 or c_fa <= 0:
        raise ConfigError(f"min_dcf: need 0 < p_target < 1 and positive costs; got p_target={p_target}, "
                          f"c_miss={c_miss}, c_fa={c_fa}")
    far, frr, _ = detection_error_tradeoff(scores, labels)
    cost = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def verification_metrics(scores: Sequence[float], labels: Sequence[int],
                         p_targets: Sequence[float] = DCF_TARGET_PRIORS) -> dict[str, float]:
    """{"eer": ..., "min_dcf_0.01": ..., "min_dcf_0.05": ...} with C_miss = C_fa = 1."""
    out = {"eer": equal_error_rate(scores, labels)}
    for p in p_targets:
        out[f"min_dcf_{p:g}"] = min_dcf(scores, labels, p)
    return out
