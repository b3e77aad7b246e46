"""The 8-bit quantizer: per-dim affine on quantiles with rounding, and the global baseline."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.codes import quantize
from engine.codes.quantize import Quantizer, QuantizerError


def _data(seed=0, n=5000, d=32):
    rng = np.random.default_rng(seed)
    # dims with very different centres and spreads, as a head's outputs have
    return (rng.normal(size=(n, d)) * rng.uniform(0.01, 0.3, d) + rng.uniform(-0.3, 0.3, d)).astype(
        np.float32
    )


def test_affine_uses_the_whole_code_range_of_every_dim():
    x = _data()
    codes = quantize.fit_affine(x).encode(x)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert (codes.min(axis=0) == 0).all() and (codes.max(axis=0) == 255).all()
    assert quantize.code_usage(codes) > 0.9


def test_global_truncating_map_wastes_codes_on_narrow_dims():
    x = _data()
    affine = quantize.code_usage(quantize.fit_affine(x).encode(x))
    glob = quantize.code_usage(quantize.fit_global(x).encode(x))
    assert glob < 0.6 * affine


def test_rounding_error_is_at_most_half_a_step_inside_the_fitted_range():
    x = _data(1)
    q = quantize.fit_affine(x)
    lo, hi = q.lo, q.lo + 255 * q.step
    inside = ((x >= lo) & (x <= hi)).all(axis=1)
    err = np.abs(q.decode(q.encode(x[inside])) - x[inside])
    assert (err <= q.step / 2 + 1e-6).all()


def test_values_outside_the_range_clip_to_the_end_codes():
    x = _data(2)
    q = quantize.fit_affine(x)
    far = np.stack([q.lo - 10, q.lo + 300 * q.step])
    assert q.encode(far).tolist() == [[0] * 32, [255] * 32]


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (40, 4), elements=st.floats(-1, 1, width=32)))
def test_encoding_is_monotone_per_dim(x):
    q = quantize.fit_affine(np.concatenate([x, x + 0.5]))
    codes = q.encode(x).astype(int)
    for j in range(x.shape[1]):
        order = np.argsort(x[:, j], kind="stable")
        assert (np.diff(codes[order, j]) >= 0).all()


def test_json_round_trip_gives_the_same_codes():
    x = _data(3)
    for q in (quantize.fit_affine(x), quantize.fit_global(x)):
        back = Quantizer.from_json(q.to_json())
        assert np.array_equal(back.encode(x), q.encode(x))
        assert back.rounding == q.rounding


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros(4), np.full((5, 3), np.nan)])
def test_fit_refuses_unusable_input(bad):
    with pytest.raises(QuantizerError):
        quantize.fit_affine(bad)


def test_fit_refuses_bad_quantiles():
    with pytest.raises(QuantizerError, match="quantiles"):
        quantize.fit_affine(_data(), quantiles=(0.9, 0.1))


def test_encode_refuses_the_wrong_width():
    q = quantize.fit_affine(_data())
    with pytest.raises(QuantizerError, match=r"\(n, 32\)"):
        q.encode(np.zeros((3, 31), np.float32))


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"lo": [0.0], "step": [0.0]},
        {"lo": [0, 1], "step": [1]},
        {"lo": [0.0], "step": [1.0], "rounding": "up"},
        {"lo": "x", "step": None},
    ],
)
def test_malformed_stored_quantizer_is_refused(obj):
    with pytest.raises(QuantizerError, match="train-head"):
        Quantizer.from_json(obj)


def test_constant_dim_does_not_divide_by_zero():
    x = _data()
    x[:, 5] = 0.25
    q = quantize.fit_affine(x)
    codes = q.encode(x)
    assert np.isfinite(q.decode(codes)).all()
    assert len(np.unique(codes[:, 5])) == 1
