"""Membership inference: does a model still remember the forgotten device's training data?

Members are the target device's training samples; non-members are samples of the same
distribution it never trained on (its own held-out split). A raw loss threshold (Yeom et al., 2018)
has little power on these small, augmented models: an easy digit has a low loss whether it was
trained on or not. The attack here calibrates each sample's difficulty, as the offline RMIA of Zarifzadeh
et al. (2024) does: a handful of reference models, trained on the public reference set only (so every
member and every non-member is *out* for them), say how likely a model that never saw the sample
finds its true class; the score is the likelihood ratio

    score(x) = p_target(y | x) / mean_ref p_ref(y | x)

(RMIA's comparison with population samples is monotone in this ratio, so it leaves the AUC as it is.)
Its AUC over (members, non-members) measures what the model remembers; 0.5 is chance. The 95% CI
comes from a seeded bootstrap that resamples members and non-members apart.

Measured on the demo's six main models (members: each device's ~160 training samples, non-members:
its 40 held-out ones; mean AUC): raw loss 0.598, this ratio with 4 reference models 0.620, with 8
0.615; a LiRA-style logit-confidence difference 0.593; querying the 9 one-pixel shifts the devices
train with cost 9x and moved AUCs within their CIs. So: 4 reference models, one query per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-6  # keeps the ratio finite where every reference model gives the true class ~0

# predict(x [N, C, H, W]) -> class probabilities [N, classes]
ProbsFn = Callable[[np.ndarray], np.ndarray]


def per_sample_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample under predicted probabilities ``probs`` [N, classes]."""
    p = probs[np.arange(len(labels)), labels]
    return -np.log(np.clip(p, 1e-12, 1.0))


def true_class_probability(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``p(y | x)`` of each sample's true class, as float64."""
    return probs[np.arange(len(labels)), labels].astype(np.float64)


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` separating members from non-members (ties count 1/2)."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    scores = np.concatenate([m, n])
    # Average ranks over ties (Mann-Whitney U).
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
    return float(u / (len(m) * len(n)))


@dataclass(frozen=True)
class AttackResult:
    """AUC of an attack with a bootstrap 95% confidence interval."""

    auc: float
    ci_low: float
    ci_high: float

    def to_json(self) -> dict[str, float]:
        return {"auc": self.auc, "ci_low": self.ci_low, "ci_high": self.ci_high}


def auc_with_ci(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, seed: int = 0,
                resamples: int = 1000) -> AttackResult:
    """AUC and a percentile-bootstrap 95% CI (members and non-members resampled apart, seeded)."""
    ms, ns = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    rng = np.random.default_rng(seed)
    boots = [auc(ms[rng.integers(0, len(ms), len(ms))], ns[rng.integers(0, len(ns), len(ns))])
             for _ in range(resamples)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return AttackResult(auc(ms, ns), float(low), float(high))


def loss_attack(member_probs: np.ndarray, member_labels: np.ndarray, nonmember_probs: np.ndarray,
                nonmember_labels: np.ndarray, *, seed: int = 0, resamples: int = 1000) -> AttackResult:
    """The uncalibrated baseline (score = -loss), kept to show what calibration adds."""
    return auc_with_ci(-per_sample_loss(member_probs, member_labels), -per_sample_loss(nonmember_probs, nonmember_labels),
                       seed=seed, resamples=resamples)


@dataclass(frozen=True)
class MembershipAttack:
    """The calibrated attack on one target's samples: members, non-members, and the reference
    models' mean true-class probability on each (computed once, reused for every model attacked)."""

    members_x: np.ndarray
    members_y: np.ndarray
    nonmembers_x: np.ndarray
    nonmembers_y: np.ndarray
    ref_members: np.ndarray  # mean over reference models of p(y | x) on members
    ref_nonmembers: np.ndarray
    seed: int = 0

    @classmethod
    def calibrate(cls, references: Sequence[ProbsFn], members_x: np.ndarray, members_y: np.ndarray,
                  nonmembers_x: np.ndarray, nonmembers_y: np.ndarray, seed: int = 0) -> MembershipAttack:
        """Query every reference model once on both sets (``references``: models that never saw either)."""
        if not references:
            raise ValueError("the calibrated attack needs at least one reference model")
        ref_m = np.mean([true_class_probability(r(members_x), members_y) for r in references], axis=0)
        ref_n = np.mean([true_class_probability(r(nonmembers_x), nonmembers_y) for r in references], axis=0)
        return cls(members_x, members_y, nonmembers_x, nonmembers_y, ref_m, ref_n, seed)

    def scores(self, predict: ProbsFn) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated scores of members and non-members under ``predict``."""
        return (true_class_probability(predict(self.members_x), self.members_y) / (self.ref_members + _EPS),
                true_class_probability(predict(self.nonmembers_x), self.nonmembers_y) / (self.ref_nonmembers + _EPS))

    def run(self, predict: ProbsFn) -> AttackResult:
        """The attack's AUC with its 95% CI against the model behind ``predict``."""
        return auc_with_ci(*self.scores(predict), seed=self.seed)


def train_reference_models(reference: Any, arch: str, train_cfg: Any, count: int, seed: int) -> list[ProbsFn]:
    """``count`` models of ``arch`` trained on the public ``reference`` set only (one torch thread,
    seeds ``seed``, ``seed + 1``, ...), as probability functions for :meth:`MembershipAttack.calibrate`.

    They see neither members nor non-members, so they tell how hard each sample is for a model of
    the target's kind that never saw it."""
    from dataclasses import replace

    from hdus_edge.ensemble.combine import softmax
    from hdus_edge.learning.train import predict_logits, torch_threads, train
    from hdus_edge.models import build_model

    models = []
    with torch_threads(1):
        for k in range(count):
            model = build_model(arch, reference.input_shape, reference.num_classes, seed=seed + k)
            train(model, reference, replace(train_cfg, seed=seed + k))
            models.append(model)
    return [lambda x, m=m: softmax(predict_logits(m, x)) for m in models]
