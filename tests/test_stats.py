import numpy as np
import pytest
from graphs import inp, model, run
from onnx import helper

from onnxzip.calibrate.stats import Accumulator, expand_conv_hessian, layer_hessian, patches
from onnxzip.graph.ir import Layer


def conv_layer(c_in, c_out, kernel, **attrs):
    shape = (c_out, c_in) + tuple(kernel)
    return Layer("conv", "conv", "x", "y", "w", "b", shape, tuple(sorted(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items())))


def loop_moment(rows, rows_ref):
    """mean over rows of [u 1][v 1]', one outer product at a time (the oracle for H and G)."""
    total = np.zeros((rows.shape[1] + 1,) * 2)
    for u, v in zip(np.asarray(rows, np.float64), np.asarray(rows_ref, np.float64)):
        total += np.outer(np.r_[u, 1.0], np.r_[v, 1.0])
    return total / len(rows)


def loop_pixels(x):
    """Every input position's channel vector, by explicit loops: (N*H*W, C) float64."""
    n, c, h, w = x.shape
    return np.array([[x[s, ch, i, j] for ch in range(c)] for s in range(n) for i in range(h) for j in range(w)],
                    np.float64)


def loop_patches(x, k, pad, stride):
    """im2col by explicit loops for a square k x k conv: (N*OH*OW, C*k*k), channel-major, offsets inner."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return np.array([[xp[s, ch, i * stride + di, j * stride + dj]
                      for ch in range(c) for di in range(k) for dj in range(k)]
                     for s in range(n) for i in range(oh) for j in range(ow)], np.float64)


def expand_by_offsets(m, c, kernel):
    """The per-channel statistic m (c+1, c+1) as documented for the ``channel`` estimator: every
    offset sees the channel statistics, and offsets are uncorrelated around the channel means
    (mean_x = m[:c, c], mean_y = m[c, :c]); the bias keeps its own moments."""
    e = np.zeros((c * kernel + 1,) * 2)
    for a in range(c):
        for b in range(c):
            for k in range(kernel):
                for j in range(kernel):
                    e[a * kernel + k, b * kernel + j] = m[a, c] * m[c, b] + (m[a, b] - m[a, c] * m[c, b]) * (k == j)
        for k in range(kernel):
            e[a * kernel + k, -1] = m[a, c]
            e[-1, a * kernel + k] = m[c, a]
    e[-1, -1] = m[c, c]
    return e


#: float32 activations are multiplied in float32 (summed in float64): their statistics match a
#: float64 oracle to float32 rounding
F32 = dict(rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])

def test_accumulator_streams_the_exact_mean(dtype, rtol, monkeypatch):
    """float64 rows give the float64 mean; float32 rows (activations) are multiplied in float32 and
    summed in float64 over chunks (here several chunks): float32 rounding, no more."""
    monkeypatch.setattr("onnxzip.calibrate.stats.CHUNK", 40)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1000, 7)) + 3.0).astype(dtype)
    acc = Accumulator(7)
    for i in range(0, 1000, 97):
        acc.add(x[i:i + 97])
    x1 = np.hstack([x.astype(np.float64), np.ones((1000, 1))])
    np.testing.assert_allclose(acc.mean(), x1.T @ x1 / 1000, rtol=rtol)


@pytest.mark.parametrize("attrs,size", [
    (dict(pads=[1, 1, 1, 1]), (7, 9)),
    (dict(strides=[2, 1], pads=[0, 2, 1, 0]), (8, 8)),
    (dict(dilations=[2, 2], pads=[2, 2, 2, 2]), (9, 7)),
    (dict(auto_pad="SAME_UPPER", strides=[2, 2]), (7, 8)),
    (dict(auto_pad="SAME_LOWER"), (6, 6)),
    (dict(auto_pad="VALID", strides=[3, 2]), (10, 9)),
])
def test_patches_reproduce_onnx_conv(attrs, size):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    x = rng.normal(size=(2, 3) + size).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 2], **attrs)
    from onnx import numpy_helper
    y = run(model([node], [numpy_helper.from_array(w, "w")], [inp("x", list(x.shape))], [inp("y", None)]),
            {"x": x})
    layer = conv_layer(3, 4, (3, 2), kernel_shape=[3, 2], **attrs)
    p = patches(layer, x)
    got = (p @ w.reshape(4, -1).T).reshape(2, y.shape[2], y.shape[3], 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, y, atol=1e-4)


def test_conv1d_patches():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 11)).astype(np.float32)
    layer = conv_layer(3, 2, (3,), pads=[1, 1], strides=[2])
    p = patches(layer, x)
    assert p.shape == (2 * 6, 9)
    np.testing.assert_allclose(p[0], np.pad(x[0], ((0, 0), (1, 0)))[:, 0:3].reshape(-1))


def test_channel_hessian_reused_at_every_offset():
    rng = np.random.default_rng(3)
    pixels = rng.normal(size=(200, 3)) * [1.0, 2.0, 0.5] + [0.3, -1.0, 2.0]  # channel vectors with means
    hc = loop_moment(pixels, pixels)
    h = expand_conv_hessian(hc, 9)
    assert h.shape == (3 * 9 + 1,) * 2
    assert np.linalg.eigvalsh(h).min() > -1e-9  # PSD
    np.testing.assert_allclose(expand_conv_hessian(hc, 1), hc)
    # the quadratic form is E[(sum_k d_k . x_k + d_b)^2] for offsets x_k drawn independently from the
    # pixels: the variance sum_k d_k' C d_k plus the squared mean (sum_k d_k . m + d_b)^2
    mean, cov = pixels.mean(axis=0), np.cov(pixels.T, bias=True)
    for _ in range(3):
        d = rng.normal(size=3 * 9 + 1)
        per = d[:-1].reshape(3, 9)
        expect = sum(per[:, k] @ cov @ per[:, k] for k in range(9)) + (per.sum(axis=1) @ mean + d[-1]) ** 2
        assert d @ h @ d == pytest.approx(expect, rel=1e-10)
    # the bias alone has its true curvature 1 (mean of 1 * 1), not 1/K
    assert h[-1, -1] == pytest.approx(1.0)


def test_exact_and_channel_agree_for_1x1_conv_and_dense():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3, 4, 4)).astype(np.float32)
    layer = conv_layer(3, 2, (1, 1))
    pixels = loop_pixels(x)  # a 1x1 conv's patch is its input position's channel vector
    for method in ("channel", "exact"):
        np.testing.assert_allclose(layer_hessian(layer, x, method, batch=2), loop_moment(pixels, pixels), **F32)
    dense = Layer("fc", "dense", "x", "y", "w", "b", (2, 6))
    xd = rng.normal(size=(9, 6)).astype(np.float32)
    for method in ("channel", "exact"):
        np.testing.assert_allclose(layer_hessian(dense, xd, method, batch=4), loop_moment(xd, xd), **F32)
    np.testing.assert_array_equal(layer_hessian(dense, xd, "identity"), np.eye(7))


def test_exact_conv_hessian_is_the_patch_covariance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 5, 5)).astype(np.float32)
    layer = conv_layer(2, 4, (3, 3), pads=[1, 1, 1, 1])
    h = layer_hessian(layer, x, "exact", batch=2)
    p = np.hstack([patches(layer, x).astype(np.float64), np.ones((75, 1))])
    np.testing.assert_allclose(h, p.T @ p / 75, **F32)


def test_nan_statistics_are_a_clear_error():
    from onnxzip.errors import NumericalError
    dense = Layer("fc", "dense", "x", "y", "w", "b", (2, 3))
    with pytest.raises(NumericalError, match="NaN"):
        layer_hessian(dense, np.array([[1.0, np.inf, 0.0]], np.float32), "channel")


def test_cross_moment_refit_reproduces_the_reference_pre_activations():
    from onnxzip.calibrate.stats import cross_moments
    rng = np.random.default_rng(6)
    dense = Layer("fc", "dense", "x", "y", "w", "b", (3, 5))
    x_ref = rng.normal(size=(400, 5))
    t = rng.normal(size=(5, 5))
    x = x_ref @ t.T + 0.3  # the zipped network sees an invertible affine image of the original input
    h, g = cross_moments(dense, x.astype(np.float32), x_ref.astype(np.float32), "exact")
    a = rng.normal(size=(3, 6))  # original neurons (weights + bias)
    refit = np.linalg.solve(h, g @ a.T).T
    ones = np.ones((400, 1))
    np.testing.assert_allclose(np.hstack([x, ones]) @ refit.T, np.hstack([x_ref, ones]) @ a.T, atol=1e-3)
    # and H, G themselves against a sample-by-sample sum
    xf, rf = x.astype(np.float32).astype(np.float64), x_ref.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(h, loop_moment(xf, xf), **F32)
    np.testing.assert_allclose(g, loop_moment(xf, rf), **F32)


def test_channel_cross_moments_against_explicit_loops():
    from onnxzip.calibrate.stats import cross_moments
    rng = np.random.default_rng(7)
    layer = conv_layer(2, 3, (3, 3), pads=[1, 1, 1, 1])
    x = rng.normal(size=(2, 2, 4, 4)).astype(np.float32)
    x_ref = (x + rng.normal(size=x.shape) * 0.5 + 0.2).astype(np.float32)  # not x: G differs from H
    h, g = cross_moments(layer, x, x_ref, "channel", batch=1)
    hc, gc = loop_moment(loop_pixels(x), loop_pixels(x)), loop_moment(loop_pixels(x), loop_pixels(x_ref))
    np.testing.assert_allclose(h, expand_by_offsets(hc, 2, 9), **F32)
    np.testing.assert_allclose(g, expand_by_offsets(gc, 2, 9), **F32)
    np.testing.assert_allclose(layer_hessian(layer, x, "channel", batch=1), expand_by_offsets(hc, 2, 9),
                               **F32)


def test_exact_conv_cross_moments_against_explicit_patch_loops():
    from onnxzip.calibrate.stats import cross_moments
    rng = np.random.default_rng(17)
    layer = conv_layer(2, 3, (3, 3), pads=[1, 1, 1, 1], strides=[2, 2])
    x = rng.normal(size=(3, 2, 5, 5)).astype(np.float32)
    x_ref = rng.normal(size=x.shape).astype(np.float32)
    h, g = cross_moments(layer, x, x_ref, "exact", batch=2)
    p, q = loop_patches(x, 3, 1, 2), loop_patches(x_ref, 3, 1, 2)
    assert p.shape == (3 * 3 * 3, 18)
    np.testing.assert_allclose(h, loop_moment(p, p), **F32)
    np.testing.assert_allclose(g, loop_moment(p, q), **F32)


def test_normalized_weights_floor_small_variances_at_a_thousandth_of_the_median():
    from onnxzip.calibrate.stats import normalized_weights
    z = np.array([[0.0, 0.0, 0.0, 0.0],  # variance 0: floored
                  [1.0, -1.0, 1.0, -1.0],  # 1 (the median)
                  [2.0, -2.0, 2.0, -2.0],  # 4
                  [3.0, -3.0, 3.0, -3.0],  # 9
                  [0.01, -0.01, 0.01, -0.01]])  # 1e-4: floored to 1e-3 * 1
    inverse = np.array([1000.0, 1.0, 0.25, 1 / 9, 1000.0])
    np.testing.assert_allclose(normalized_weights(z), inverse / inverse.mean(), rtol=1e-12)


def test_sample_weighted_hessian_and_cross_moments_against_a_direct_sum():
    from onnxzip.calibrate.stats import cross_moments, layer_hessian, normalized_weights
    rng = np.random.default_rng(0)
    layer = Layer("fc", "dense", "x", "y", "w", "b", (3, 5))
    x, x_ref = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    z = x_ref @ rng.normal(size=(5, 7)) + rng.normal(size=7)
    w = normalized_weights(z)
    var = z.var(axis=1)
    np.testing.assert_allclose(w, (1 / var) / np.mean(1 / var))
    ones = np.hstack([x, np.ones((40, 1))])
    ref1 = np.hstack([x_ref, np.ones((40, 1))])
    expect_h = (ones * w[:, None]).T @ ones / w.sum()
    np.testing.assert_allclose(layer_hessian(layer, x, "exact", batch=7, sample_weights=w), expect_h, atol=1e-12)
    h, g = cross_moments(layer, x, x_ref, "exact", batch=9, sample_weights=w)
    np.testing.assert_allclose(h, expect_h, atol=1e-12)
    np.testing.assert_allclose(g, (ones * w[:, None]).T @ ref1 / w.sum(), atol=1e-12)


def test_statistics_of_large_maps_read_a_seeded_subset_of_rows(monkeypatch):
    from onnxzip.calibrate import stats
    from onnxzip.calibrate.stats import row_fraction
    rng = np.random.default_rng(8)
    layer = conv_layer(3, 2, (3, 3), pads=[1, 1, 1, 1])
    x = rng.normal(size=(20, 3, 16, 16)) + 0.5
    assert row_fraction(layer, "exact", x[:1], 20) == 1.0  # 5,120 rows: under the default cap
    monkeypatch.setattr(stats, "ROWS_PER_WEIGHT", 10)
    assert row_fraction(layer, "exact", x[:1], 20, most=0) == 1.0  # (0: every row)
    fraction = row_fraction(layer, "exact", x[:1], 20, most=1000)
    assert fraction == pytest.approx(1000 / 5120)
    full = layer_hessian(layer, x, "exact")
    part = layer_hessian(layer, x, "exact", fraction=fraction)
    assert not np.allclose(part, full, rtol=1e-6)  # a subset, not all rows
    assert np.abs(part - full).max() < 0.15 * np.abs(full).max()  # an estimate of the same moment
    np.testing.assert_array_equal(part, layer_hessian(layer, x, "exact", fraction=fraction))  # seeded


def test_stat_rows_caps_each_statistic_and_the_report_counts_them(monkeypatch):
    """--stat-rows: each conv statistic reads at most N of its samples x positions rows (counted
    here from the shapes: 64 samples of 8 x 8 maps into conv0, 4 x 4 into conv1 after the pool)."""
    import graphs

    from onnxzip import zip_models
    from onnxzip.calibrate import stats
    from onnxzip.report.terminal import rows_line
    monkeypatch.setattr(stats, "ROWS_PER_WEIGHT", 1)  # (the floor a layer's width sets, out of the way)
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    models = [graphs.cnn(1), graphs.cnn(2)]
    every = {r.name: r for r in zip_models(models, data, share=0.5, quiet=True, hold_out=0, stat_rows=0).summary.layers}
    assert (every["conv0"].stat_rows, every["conv1"].stat_rows, every["fc0"].stat_rows) == (64 * 64, 64 * 16, 64)
    assert all(r.rows_read == 1.0 for r in every.values())
    report = zip_models(models, data, share=0.5, quiet=True, hold_out=0, stat_rows=1000).summary
    capped = {r.name: r for r in report.layers}
    assert (capped["conv0"].stat_rows, capped["conv1"].stat_rows, capped["fc0"].stat_rows) == (1000, 1000, 64)
    assert capped["conv0"].rows_read == pytest.approx(1000 / 4096, abs=1e-4)
    line = rows_line(report)
    assert "2 layer(s) read a seeded subset (--stat-rows 1000), the least 24.4% of its rows (conv0)" in line
