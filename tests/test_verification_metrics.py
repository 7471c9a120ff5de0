"""EER and minDCF against hand-computed cases and an independent computation (a brute-force ROC and
scipy's brentq on the interpolated ROC, the recipe VoxCeleb scripts use)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq

from speechfuse.errors import ConfigError
from speechfuse.metrics import detection_error_tradeoff, eer_threshold, equal_error_rate, min_dcf, verification_metrics


def brute_force_roc(scores, labels):
    """(FAR, FRR) for 'accept if score >= t' at t = +inf and every distinct score, by counting."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    points = [(0.0, 1.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        accept = scores >= t
        points.append(((accept & ~labels).sum() / (~labels).sum(), (~accept & labels).sum() / labels.sum()))
    return np.array(points).T


def reference_eer(scores, labels):
    far, frr = brute_force_roc(scores, labels)
    tpr = interp1d(far, 1 - frr)
    return brentq(lambda x: 1.0 - x - tpr(x), 0.0, 1.0, xtol=1e-12)


def reference_min_dcf(scores, labels, p):
    far, frr = brute_force_roc(scores, labels)
    return min(frr[i] * p + far[i] * (1 - p) for i in range(len(far))) / min(p, 1 - p)


# -- hand-computed cases -----------------------------------------------------------------------------

def test_perfect_and_inverted_systems():
    labels = [1, 1, 0, 0]
    assert equal_error_rate([0.9, 0.8, 0.1, 0.2], labels) == 0.0
    assert equal_error_rate([0.1, 0.2, 0.9, 0.8], labels) == 1.0
    assert min_dcf([0.9, 0.8, 0.1, 0.2], labels, 0.01) == 0.0


def test_all_equal_scores_are_chance():
    # one threshold accepts all (FAR 1, FRR 0), the other none (FAR 0, FRR 1): the segment crosses at 0.5;
    # the best decision is to always reject (cost P_target), which is exactly C_def: minDCF = 1
    scores, labels = [0.3] * 5, [1, 0, 1, 0, 0]
    assert equal_error_rate(scores, labels) == 0.5
    assert min_dcf(scores, labels, 0.01) == 1.0
    assert min_dcf(scores, labels, 0.05) == 1.0


def test_tied_target_and_nontarget_move_together():
    # targets 0.8, 0.5; non-targets 0.5, 0.2. ROC: (0,1) -> t=0.8 (0,.5) -> t=0.5 (.5,0) -> t=0.2 (1,0).
    # No threshold splits the tie at 0.5; the segment (0,.5)-(.5,0) meets FAR = FRR at 0.25.
    scores, labels = [0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0]
    far, frr, thresholds = detection_error_tradeoff(scores, labels)
    assert far.tolist() == [0, 0, 0.5, 1] and frr.tolist() == [1, 0.5, 0, 0]
    assert thresholds.tolist() == [np.inf, 0.8, 0.5, 0.2]
    assert equal_error_rate(scores, labels) == pytest.approx(0.25)
    # p=0.05: costs 0.05 (reject all), 0.025 (t=.8), 0.475, 0.95 -> 0.025 / 0.05
    assert min_dcf(scores, labels, 0.05) == pytest.approx(0.5)


def test_eer_on_an_roc_point():
    # 3 targets, 3 non-targets, one of each misordered: at t=0.6 FAR = FRR = 1/3 exactly
    scores, labels = [0.9, 0.8, 0.4, 0.6, 0.3, 0.2], [1, 1, 1, 0, 0, 0]
    assert equal_error_rate(scores, labels) == pytest.approx(1 / 3)


def test_dcf_costs_and_normalisation():
    # one target scored below every non-target: at best 1 miss out of 2 (t=0.9) or accept all
    scores, labels = [0.9, 0.1, 0.5, 0.4], [1, 1, 0, 0]
    p = 0.01
    # t=0.9: miss 0.5 -> 0.005; reject all: 0.01; accept all: 0.99 -> min 0.005 / C_def 0.01
    assert min_dcf(scores, labels, p) == pytest.approx(0.5)
    # a larger miss cost makes missing dearer: C_miss=10 -> costs 0.05, 0.1, 0.99; C_def = min(0.1, 0.99)
    assert min_dcf(scores, labels, p, c_miss=10) == pytest.approx(0.5)
    assert verification_metrics(scores, labels) == pytest.approx(
        {"eer": equal_error_rate(scores, labels), "min_dcf_0.01": 0.5, "min_dcf_0.05": min_dcf(scores, labels, .05)})


# -- independent computation -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_and_brentq(seed):
    rng = np.random.default_rng(seed)
    n_tar, n_non = rng.integers(5, 60, size=2)
    labels = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
    scores = np.r_[rng.normal(1.0, 1.0, n_tar), rng.normal(0.0, 1.0, n_non)]
    if seed % 2:  # coarse scores: many ties, inside and across classes
        scores = np.round(scores, 1)
    far, frr, _ = detection_error_tradeoff(scores, labels)
    ref_far, ref_frr = brute_force_roc(scores, labels)
    np.testing.assert_allclose(far, ref_far)
    np.testing.assert_allclose(frr, ref_frr)
    assert equal_error_rate(scores, labels) == pytest.approx(reference_eer(scores, labels), abs=1e-9)
    for p in (0.01, 0.05):
        assert min_dcf(scores, labels, p) == pytest.approx(reference_min_dcf(scores, labels, p))


def test_order_of_trials_does_not_matter():
    rng = np.random.default_rng(0)
    scores, labels = np.round(rng.normal(size=40), 1), rng.integers(0, 2, 40)
    perm = rng.permutation(40)
    assert verification_metrics(scores, labels) == verification_metrics(scores[perm], labels[perm])


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scores, labels, needle", [
    ([0.1, 0.2], [1, 1], "both target and non-target"),
    ([0.1, 0.2], [1, 0, 1], "2 scores but 3 labels"),
    ([0.1, float("nan")], [1, 0], "finite score"),
    ([0.1, 0.2], [1, 2], r"1 \(target\) or 0"),
])
def test_bad_input_is_a_clear_error(scores, labels, needle):
    with pytest.raises(ConfigError, match=needle):
        equal_error_rate(scores, labels)


def test_bad_dcf_parameters():
    with pytest.raises(ConfigError, match="p_target"):
        min_dcf([0.1, 0.2], [1, 0], p_target=1.0)


# -- the EER threshold -----------------------------------------------------------------------------

def test_eer_threshold_separates_separable_scores():
    thr = eer_threshold([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert 0.2 < thr <= 0.8  # every target accepted (score >= thr), every non-target rejected


@pytest.mark.parametrize("seed", range(5))
def test_eer_threshold_accepts_at_rates_that_straddle_the_eer(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.normal(labels * 1.0, 1.0)
    thr = eer_threshold(scores, labels)
    far = float(np.mean(scores[labels == 0] >= thr))
    frr = float(np.mean(scores[labels == 1] < thr))
    eer = equal_error_rate(scores, labels)
    assert min(far, frr) <= eer + 1e-12 and eer <= max(far, frr) + 1e-12
    # one ROC step from the crossing: the rates differ by at most one trial of each kind
    assert abs(far - frr) <= 1 / (labels == 0).sum() + 1 / (labels == 1).sum()
