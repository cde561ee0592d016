"""The HDUS combination rule (pure numpy)."""

import numpy as np
import pytest

from hdus_edge.ensemble.combine import combine, effective_lam, softmax
from hdus_edge.errors import EnsembleError


def test_no_seeds_forces_lam_zero():
    main = np.array([[1.0, 2.0, 0.5]], dtype=np.float32)
    assert effective_lam(0.7, 0) == 0.0
    np.testing.assert_allclose(combine(main, [], 0.7, "logits"), main)
    np.testing.assert_allclose(combine(main, [], 0.7, "probs"), softmax(main))


@pytest.mark.parametrize("space", ["logits", "probs"])
def test_weights_main_against_mean_of_seeds(space):
    # Prepare
    rng = np.random.default_rng(0)
    main, s1, s2 = (rng.normal(size=(4, 10)).astype(np.float32) for _ in range(3))
    f = softmax if space == "probs" else (lambda a: a)
    # Execute
    out = combine(main, [s1, s2], 0.25, space)
    # Assert
    np.testing.assert_allclose(out, 0.75 * f(main) + 0.25 * (f(s1) + f(s2)) / 2, rtol=1e-6, atol=1e-7)


def test_probs_space_returns_distributions():
    rng = np.random.default_rng(1)
    out = combine(rng.normal(size=(5, 3)), [rng.normal(size=(5, 3))], 0.5, "probs")
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_lam_out_of_range_is_a_clear_error(lam):
    with pytest.raises(EnsembleError, match="lam must lie in"):
        combine(np.zeros((1, 2)), [np.zeros((1, 2))], lam)


def test_seed_shape_mismatch_is_rejected():
    with pytest.raises(EnsembleError, match="shape"):
        combine(np.zeros((2, 10)), [np.zeros((2, 9))], 0.5)


def test_unknown_space_is_rejected():
    with pytest.raises(EnsembleError, match="combine space"):
        combine(np.zeros((1, 2)), [], 0.5, "median")  # type: ignore[arg-type]
