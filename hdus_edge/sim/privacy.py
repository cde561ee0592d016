"""Membership inference: does an ensemble still remember the forgotten device's training data?

A loss-threshold attack (Yeom et al., 2018): a sample with lower loss under the model is guessed to
be a training member. Its AUC over (the forgotten device's training samples, held-out samples)
measures how much the model remembers; 0.5 is chance. We report it for each former neighbour's
ensemble before forgetting, after, and in the fleet that never had the device, with a bootstrap CI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def per_sample_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample under predicted probabilities ``probs`` [N, classes]."""
    p = probs[np.arange(len(labels)), labels]
    return -np.log(np.clip(p, _EPS, 1.0))


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` separating members from non-members (ties count 1/2)."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    scores = np.concatenate([m, n])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average ranks over ties (Mann-Whitney U).
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
    return float(u / (len(m) * len(n)))


@dataclass(frozen=True)
class AttackResult:
    """AUC of the loss-threshold attack with a bootstrap 95% confidence interval."""

    auc: float
    ci_low: float
    ci_high: float

    def to_json(self) -> dict[str, float]:
        return {"auc": self.auc, "ci_low": self.ci_low, "ci_high": self.ci_high}


def loss_attack(
    member_probs: np.ndarray,
    member_labels: np.ndarray,
    nonmember_probs: np.ndarray,
    nonmember_labels: np.ndarray,
    *,
    seed: int = 0,
    resamples: int = 200,
) -> AttackResult:
    """Run the attack (score = -loss) and bootstrap its AUC (seeded)."""
    ms = -per_sample_loss(member_probs, member_labels)
    ns = -per_sample_loss(nonmember_probs, nonmember_labels)
    rng = np.random.default_rng(seed)
    boots = [auc(rng.choice(ms, len(ms)), rng.choice(ns, len(ns))) for _ in range(resamples)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return AttackResult(auc(ms, ns), float(low), float(high))
