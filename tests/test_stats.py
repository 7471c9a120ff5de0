"""Spread and significance on hand-made numbers whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from speechfuse.errors import ConfigError
from speechfuse.experiments.stats import bootstrap_ci, mean_std, paired_bootstrap


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([0.25])
    assert mean == 0.25 and math.isnan(std)
    with pytest.raises(ConfigError, match="no values"):
        mean_std([])


def test_bootstrap_ci_of_a_proportion_matches_the_normal_approximation():
    errors = [0.0, 1.0] * 200  # 400 utterances, accuracy 0.5: normal 95 % half-width 1.96 * sqrt(.25 / 400) = 0.049
    point, low, high = bootstrap_ci(errors, n_resamples=4000, seed=0)
    assert point == 0.5
    assert low == pytest.approx(0.5 - 0.049, abs=0.01) and high == pytest.approx(0.5 + 0.049, abs=0.01)
    assert bootstrap_ci(errors, n_resamples=500, seed=3) == bootstrap_ci(errors, n_resamples=500, seed=3)
    assert bootstrap_ci(errors, n_resamples=500, seed=3) != bootstrap_ci(errors, n_resamples=500, seed=4)


def test_bootstrap_ci_of_a_ratio_metric_and_of_a_constant():
    point, low, high = bootstrap_ci([1, 0, 2], totals=[2, 2, 4])  # WER-like: 3 errors over 8 words
    assert point == pytest.approx(3 / 8) and low <= point <= high
    assert bootstrap_ci([0.2] * 30) == pytest.approx((0.2, 0.2, 0.2))
    with pytest.raises(ConfigError, match="one error and one total per utterance"):
        bootstrap_ci([1, 2], totals=[1])


def test_paired_bootstrap_finds_a_real_difference_and_not_a_spurious_one():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    noise = rng.normal(0, 0.05, 300)
    shifted = paired_bootstrap(base + 0.1 + noise, base, seed=1)
    assert shifted["difference"] == pytest.approx(0.1 + noise.mean())
    assert shifted["p_value"] < 0.01 and shifted["low"] > 0.08 and shifted["high"] < 0.12
    symmetric = np.concatenate([noise, -noise])  # A - B sums to exactly zero
    same = paired_bootstrap(np.concatenate([base, base]) + symmetric, np.concatenate([base, base]), seed=1)
    assert same["difference"] == pytest.approx(0.0, abs=1e-12) and same["p_value"] > 0.5
    assert same["low"] < 0 < same["high"]
    identical = paired_bootstrap(base, base)
    assert identical["p_value"] == 1.0 and identical["low"] == identical["high"] == 0.0


def test_paired_bootstrap_refuses_different_test_sets():
    with pytest.raises(ConfigError, match="same test set"):
        paired_bootstrap([1.0, 0.0], [1.0, 0.0, 1.0])
