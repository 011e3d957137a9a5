"""Paired comparisons with confidence intervals: moving-block bootstrap over cycles, verdicts.

A comparison of methods A and B on one score takes per-cycle values of both on the
same cycles, shaped (seed, cycle): the same observations (paired by seed) and the
same truth. The statistic is the score's aggregate over seeds and cycles
(`verify.over_cycles`: sqrt of the mean MSE for RMSEs, the mean otherwise), and
the difference is agg(A) − agg(B). Cycles are serially correlated (the error
decorrelation time of the tiny OSSE is ~2 days), so the confidence interval
comes from a moving-block bootstrap (Künsch 1989): blocks of `block` consecutive
cycles drawn with replacement, the same blocks for A, B and every seed.

Verdicts ("better", "worse", "not distinguishable") read the 95 % interval of the
difference with the score's direction: lower is better for errors, higher for ACC.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from align_da_ops import verify

HIGHER_IS_BETTER_PREFIXES = ("acc_",)
NO_VERDICT_PREFIXES = ("bias_", "spread_", "imbalance_", "n_members", "oma_rms_", "rankhist_")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """agg(A) − agg(B) with its 95 % moving-block-bootstrap interval and a verdict for A against B."""

    a: float
    b: float
    difference: float
    low: float
    high: float
    relative: float  # difference / |b|
    verdict: str


def block_indices(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """One moving-block resample of range(n): ceil(n/block) blocks of `block` consecutive indices, cut to n."""
    block = max(1, min(int(block), n))
    starts = rng.integers(0, n - block + 1, size=-(-n // block))
    return (starts[:, None] + np.arange(block)[None, :]).ravel()[:n]


def aggregate(values: np.ndarray, score: str) -> float:
    """A score over (seed, cycle) values: `verify.over_cycles` on all of them."""
    return float(verify.over_cycles(np.asarray(values, dtype=np.float64).ravel(), score))


@functools.lru_cache(maxsize=32)
def _resample_indices(n: int, block: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) cycle indices; cached (read-only): every score of a suite reuses the same resamples."""
    rng = np.random.default_rng(seed)
    out = np.stack([block_indices(n, block, rng) for _ in range(resamples)])
    out.flags.writeable = False
    return out


def _resampled_aggregates(values: np.ndarray, idx: np.ndarray, score: str) -> np.ndarray:
    """(R,) aggregates of (seed, cycle) values over the R resamples of cycle indices idx (R, n)."""
    v = values[:, idx]  # (seed, R, n)
    return verify.over_cycles(v.transpose(1, 0, 2).reshape(idx.shape[0], -1), score, axis=1)


def bootstrap_interval(
    values: np.ndarray, score: str, block: int, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Moving-block bootstrap interval of one method's aggregate score; `values` is (seed, cycle)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    stats = _resampled_aggregates(values, _resample_indices(values.shape[1], block, resamples, seed), score)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def compare(
    a: np.ndarray, b: np.ndarray, score: str, block: int, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Comparison:
    """Paired difference of one score between A and B, both (seed, cycle) on the same cycles."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{score}: A has {a.shape[1]} cycles, B {b.shape[1]}; a paired comparison needs the same cycles")
    idx = _resample_indices(a.shape[1], block, resamples, seed)
    diffs = _resampled_aggregates(a, idx, score) - _resampled_aggregates(b, idx, score)
    alpha = (1 - level) / 2
    low, high = float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))
    agg_a, agg_b = aggregate(a, score), aggregate(b, score)
    diff = agg_a - agg_b
    return Comparison(agg_a, agg_b, diff, low, high, diff / abs(agg_b) if agg_b else float("nan"),
                      verdict(score, low, high))


def verdict(score: str, low: float, high: float) -> str:
    """'better' / 'worse' for A against B when the interval of agg(A) − agg(B) excludes 0, else
    'not distinguishable'; '' for scores without a direction (bias, spread, imbalance)."""
    if score.startswith(NO_VERDICT_PREFIXES):
        return ""
    if low <= 0 <= high or not (np.isfinite(low) and np.isfinite(high)):
        return "not distinguishable"
    lower = high < 0
    return "better" if lower != score.startswith(HIGHER_IS_BETTER_PREFIXES) else "worse"
