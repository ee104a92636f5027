"""Layer-input Hessians ``H = mean(x x')`` with a constant 1 appended (the bias), in float64.

Estimators (:data:`HESSIANS`) turn a batch of a layer's input into rows to accumulate and finish
the mean into the full (fan_in + 1)^2 Hessian over the layer's weight columns (ONNX order:
channel-major, then kernel offsets; the bias last):

* ``channel`` -- the MTZ paper's conv statistic: one (C_in + 1)^2 Hessian over all positions,
  reused at every kernel offset (dense layers: exact);
* ``exact``   -- the exact patch covariance (C_in*kh*kw + 1)^2 (dense layers: exact);
* ``identity``-- no data, H = I: Euclidean weight matching and plain averaging (a baseline);
* ``auto``    -- ``exact`` where a layer has at most AUTO_EXACT_MAX weights per neuron, else ``channel``
  (the default: on the sample ResNet at 50% sharing, exact kept digit accuracy at 98.5% where the
  per-channel statistic fell to 74.5%).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import NumericalError, UsageError
from ..graph.ir import Layer
from ..graph.spaces import LAYER_AXIS
from ..registry import Registry


@dataclass(frozen=True)
class HessianEstimator:
    """``rows(layer, x) -> (m, r)``: rows to accumulate from a batch ``x`` of the layer input (None:
    the estimator reads no data); ``finish(layer, h) -> (fan_in + 1, fan_in + 1)``: the full Hessian
    from the (r + 1)^2 mean; ``exact(layer)``: whether that is the exact second moment of the input
    rows; ``offset(layer)``: whether it is a per-channel conv statistic with more than one kernel
    offset, the structure :mod:`onnxzip.sharing.offsets` works in."""

    rows: Callable[[Layer, np.ndarray], np.ndarray] | None
    finish: Callable[[Layer, np.ndarray], np.ndarray]
    exact: Callable[[Layer], bool]
    offset: Callable[[Layer], bool]

    @property
    def uses_data(self) -> bool:
        """Whether the statistic comes from the calibration data (``identity`` does not)."""
        return self.rows is not None


HESSIANS: Registry = Registry("Hessian estimator")

#: rows per product; every chunk's sums go into float64 (float32 rows: relative error about 1e-6)
CHUNK = 8192


def _working(x: np.ndarray) -> np.ndarray:
    """Rows in the precision their products are taken in: float64 stays, anything else is float32."""
    return x if x.dtype == np.float64 else np.asarray(x, np.float32)


@dataclass
class Accumulator:
    """Streams ``sum [x 1]' [x 1]`` over batches in float64."""

    dim: int
    total: np.ndarray = field(init=False)
    count: float = 0.0

    def __post_init__(self) -> None:
        self.total = np.zeros((self.dim + 1, self.dim + 1))

    def add(self, rows: np.ndarray, weights: np.ndarray | None = None) -> None:
        """rows: (m, dim), any float dtype; weights: (m,) per-row weights (default 1).

        Products are taken by BLAS in the rows' precision (float32 activations stay float32; float64
        stays float64) over chunks of at most ``CHUNK`` rows (``x' x`` as a symmetric rank-k update,
        half a general product) and summed in float64 across chunks."""
        for i in range(0, rows.shape[0], CHUNK):
            x = _working(rows[i:i + CHUNK])
            w = None if weights is None else np.asarray(weights[i:i + CHUNK], np.float64)
            with np.errstate(invalid="ignore", over="ignore"):  # mean() reports non-finite statistics
                if w is None:
                    self.total[:-1, :-1] += x.T @ x
                    s = x.sum(axis=0, dtype=np.float64)
                else:
                    self.total[:-1, :-1] += (x * w[:, None].astype(x.dtype)).T @ x
                    s = (x * w[:, None]).sum(axis=0)
            self.total[:-1, -1] += s
            self.total[-1, :-1] += s
            n = x.shape[0] if w is None else w.sum()
            self.total[-1, -1] += n
            self.count += n

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise NumericalError("no calibration samples reached a layer")
        h = self.total / self.count
        if not np.isfinite(h).all():
            raise NumericalError("layer-input statistics hold NaN or Inf: the model overflows on the calibration data")
        return h


def channel_rows(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Dense: x (N, d). Conv: x (N, C, *spatial) -> (N*positions, C). Embedding: integer ids (any
    shape) -> their one-hot rows (ids, table rows)."""
    if layer.kind == "dense":
        return x.reshape(x.shape[0], -1)
    if layer.kind == "embedding":
        ids = np.asarray(x).reshape(-1).astype(np.int64)
        rows = np.zeros((ids.size, layer.fan_in), np.float32)
        rows[np.arange(ids.size), np.where(ids < 0, ids + layer.fan_in, ids)] = 1.0
        return rows
    return np.moveaxis(x, LAYER_AXIS, -1).reshape(-1, x.shape[LAYER_AXIS])


def expand_conv_hessian(hc: np.ndarray, kernel: int) -> np.ndarray:
    """A per-channel moment ``Hc = mean([x 1][y 1]')`` (C+1, C+1) expanded to ``kernel`` offsets.

    The per-channel statistic's model of a patch: every offset sees the channel statistics, offsets
    are uncorrelated around the channel means m_x, m_y. Then
    ``H = kron(Hc_cc - m_x m_y', I_K) + [m_x (x) 1_K; 1][m_y (x) 1_K; 1]'``: the bias keeps its
    true curvature 1 and its cross terms with every offset (spreading the bias over the offsets
    instead would give it 1/K of its curvature), H is positive semi-definite when Hc is a second
    moment (x = y), and it is exact for 1x1 kernels. (The full (C*K+1)^2 matrix is built: the
    merge solves with it densely.)
    Returns (C*K + 1, C*K + 1) in ONNX weight order (channel-major, offsets inner, bias last).
    """
    c = hc.shape[0] - 1
    if kernel == 1:
        return hc.copy()
    m_x, m_y = hc[:c, c], hc[c, :c]
    u = np.r_[np.repeat(m_x, kernel), hc[c, c]]
    v = np.r_[np.repeat(m_y, kernel), 1.0]
    h = np.outer(u, v)
    h[:-1, :-1] += np.kron(hc[:c, :c] - np.outer(m_x, m_y), np.eye(kernel))
    return h


def _finish_channel(layer: Layer, h: np.ndarray) -> np.ndarray:
    return h if layer.kind in ("dense", "embedding") else expand_conv_hessian(h, layer.kernel)


def patches(layer: Layer, x: np.ndarray) -> np.ndarray:
    """im2col for a 1-D or 2-D conv: x (N, C, *spatial) -> (N*out_positions, C*prod(kernel))."""
    spatial = x.ndim - 2
    if spatial not in (1, 2):
        raise UsageError(f"layer {layer.name!r}: the exact patch Hessian supports 1-D and 2-D convolutions")
    kernel = tuple(layer.shape[2:])
    strides = tuple(layer.attr("strides") or (1,) * spatial)
    dil = tuple(layer.attr("dilations") or (1,) * spatial)
    pads = _pads(layer, x.shape[2:], kernel, strides, dil)
    if spatial == 1:
        x, kernel, strides, dil = x[..., None], kernel + (1,), strides + (1,), dil + (1,)
        pads = (pads[0], 0, pads[1], 0)
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = tuple(d * (k - 1) + 1 for d, k in zip(dil, kernel))
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]  # (N, C, OH, OW, kh, kw)
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kernel[0] * kernel[1])


def _pads(layer: Layer, size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
          dil: tuple[int, ...]) -> tuple[int, ...]:
    """Begin pads then end pads, as ONNX ``pads``, with ``auto_pad`` resolved."""
    auto = layer.attr("auto_pad", "NOTSET")
    n = len(size)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for s, k, st, d in zip(size, kernel, strides, dil):
            out = -(-s // st)
            total = max(0, (out - 1) * st + d * (k - 1) + 1 - s)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return tuple(begin + end)
    if auto == "VALID":
        return (0,) * (2 * n)
    return tuple(layer.attr("pads") or (0,) * (2 * n))


def _finish_exact(layer: Layer, h: np.ndarray) -> np.ndarray:
    return h


def _finish_identity(layer: Layer, h: np.ndarray) -> np.ndarray:
    return np.eye(layer.fan_in + 1)


def exact_rows(layer: Layer, x: np.ndarray) -> np.ndarray:
    return channel_rows(layer, x) if layer.kind in ("dense", "embedding") else patches(layer, x)


#: ``auto`` takes the exact patch statistic up to this many weights per neuron (a 1024^2 float64
#: Hessian is 8 MB) and the per-channel one above.
AUTO_EXACT_MAX = 1024


def _auto_exact(layer: Layer) -> bool:
    """Whether ``auto`` takes the exact statistic for ``layer``."""
    return layer.kind in ("dense", "embedding") or layer.fan_in + 1 <= AUTO_EXACT_MAX


def _channel_exact(layer: Layer) -> bool:
    """The per-channel statistic is exact only for dense layers and 1x1 kernels."""
    return layer.kind == "dense" or layer.kernel == 1


def _channel_offset(layer: Layer) -> bool:
    """A conv with more than one kernel offset under the per-channel statistic."""
    return layer.kind == "conv" and layer.kernel > 1


def _auto_rows(layer: Layer, x: np.ndarray) -> np.ndarray:
    return exact_rows(layer, x) if _auto_exact(layer) else channel_rows(layer, x)


def _finish_auto(layer: Layer, h: np.ndarray) -> np.ndarray:
    return h if _auto_exact(layer) else _finish_channel(layer, h)


def _never(layer: Layer) -> bool:
    return False


def _always(layer: Layer) -> bool:
    return True


HESSIANS.add("auto", HessianEstimator(_auto_rows, _finish_auto, lambda layer: _auto_exact(layer) or _channel_exact(layer),
                                      lambda layer: not _auto_exact(layer) and _channel_offset(layer)))
HESSIANS.add("channel", HessianEstimator(channel_rows, _finish_channel, _channel_exact, _channel_offset))
HESSIANS.add("exact", HessianEstimator(exact_rows, _finish_exact, _always, _never))
HESSIANS.add("identity", HessianEstimator(None, _finish_identity, _never, _never))


def _pieces(layer: Layer, est: HessianEstimator, x: np.ndarray | Iterable[np.ndarray],
            batch: int) -> Iterator[np.ndarray]:
    """``x`` (an array (N, ...) or its batches) in pieces of at most ``batch`` samples, fewer where
    a sample makes many rows (about 64 MB of float64 rows a piece)."""
    step = None
    for chunk in ([x] if isinstance(x, np.ndarray) else x):
        if step is None:
            per_sample = est.rows(layer, chunk[:1]).size
            step = max(1, min(batch, (1 << 23) // max(per_sample, 1)))
        for i in range(0, chunk.shape[0], step):
            yield chunk[i:i + step]


#: a layer's statistics read at most max(``--stat-rows``, ROWS_PER_WEIGHT * (row width + 1)) rows
#: (samples x positions or tokens); beyond that, a seeded random subset of the rows (:func:`row_fraction`).
#: The default, measured on the PaddleOCR detector pair (docs/results.md, "Rows per statistic")
MAX_ROWS = 1 << 17
ROWS_PER_WEIGHT = 256


def row_count(layer: Layer, method: str, sample: np.ndarray, samples: int) -> tuple[int, int]:
    """(rows, width): the rows a layer's statistic reads from ``samples`` entries like ``sample`` (the
    input's first axis: samples, or the tokens of a token-major input), and their width
    (the statistic is width + 1 square: fewer rows than that leave it rank-deficient, held up only by
    the damping). (0, 0) for an estimator that reads no data."""
    est: HessianEstimator = HESSIANS.get(method)
    if est.rows is None:
        return 0, 0
    rows = est.rows(layer, sample[:1])
    return rows.shape[0] * samples, rows.shape[1]


def row_fraction(layer: Layer, method: str, sample: np.ndarray, samples: int, most: int = MAX_ROWS) -> float:
    """The fraction of its rows a layer's statistics read: 1, or less for a layer whose input
    makes more rows than ``most`` and than its statistic needs (large feature maps, many tokens).
    ``sample``: one entry of the input's first axis (1, ...); ``samples``: how many there are;
    ``most``: ``--stat-rows`` (0: every row)."""
    est: HessianEstimator = HESSIANS.get(method)
    if est.rows is None or most == 0:
        return 1.0
    rows = est.rows(layer, sample[:1])
    cap = max(most, ROWS_PER_WEIGHT * (rows.shape[1] + 1))
    return min(1.0, cap / max(rows.shape[0] * samples, 1))


def _subset(rng: np.random.Generator, fraction: float, m: int) -> np.ndarray | slice:
    return slice(None) if fraction >= 1.0 else np.flatnonzero(rng.random(m) < fraction)


def layer_hessian(layer: Layer, x: np.ndarray | Iterable[np.ndarray], method: str, batch: int = 256,
                  sample_weights: np.ndarray | None = None, fraction: float = 1.0, expand: bool = True) -> np.ndarray:
    """The full Hessian of ``layer`` from its input ``x`` (N, ...) or its batches, streamed.

    ``sample_weights`` (N,), dense layers only: a weighted mean over the samples (see
    :func:`normalized_weights`). ``fraction``: of the rows, a seeded random subset (:func:`row_fraction`).
    ``expand=False``: the mean of the estimator's rows as it is (a per-channel conv statistic stays
    (C + 1)^2; see :attr:`HessianEstimator.offset`).

    Returns:
        (fan_in + 1, fan_in + 1) float64, bias last.
    """
    est: HessianEstimator = HESSIANS.get(method)
    if est.rows is None:
        return est.finish(layer, np.zeros(0))
    acc: Accumulator | None = None
    seen, rng = 0, np.random.default_rng(0)
    for xb in _pieces(layer, est, x, batch):
        rows = est.rows(layer, xb)
        acc = acc or Accumulator(rows.shape[1])
        w = None if sample_weights is None else _row_weights(layer, sample_weights[seen:seen + xb.shape[0]], rows)
        seen += xb.shape[0]
        keep = _subset(rng, fraction, rows.shape[0])
        acc.add(rows[keep], None if w is None else w[keep])
    if acc is None:
        raise NumericalError("no calibration samples reached a layer")
    return est.finish(layer, acc.mean()) if expand else acc.mean()


def _row_weights(layer: Layer, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    if layer.kind != "dense" or rows.shape[0] != w.shape[0]:
        raise ValueError(f"layer {layer.name!r}: sample weights apply to dense layers (one row per sample)")
    return w


def normalized_weights(z: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / var(z_s) over the channels, scaled to mean 1: a layer whose output z
    (N, channels) is normalized per sample (LayerNorm) matters by its error divided by the sample's
    standard deviation. Variances are floored at 1e-3 of their median (dead samples do not dominate)."""
    var = np.asarray(z, np.float64).reshape(z.shape[0], -1).var(axis=1)
    var = np.maximum(var, 1e-3 * max(float(np.median(var)), 1e-30))
    w = 1.0 / var
    return w / w.mean()


def depthwise_hessians(layer: Layer, x: np.ndarray | Iterable[np.ndarray], method: str, batch: int = 64) -> np.ndarray:
    """Per-channel Hessians of a depthwise conv: (C, K + 1, K + 1) float64, bias last.

    Each channel's neuron sees only its own input channel: ``channel`` reuses that channel's
    (1 + 1)^2 statistic at every offset, ``exact`` takes its patch covariance.
    """
    c, k = layer.shape[0], layer.kernel
    if method == "identity":
        return np.broadcast_to(np.eye(k + 1), (c, k + 1, k + 1)).copy()
    HESSIANS.get(method)
    method = "exact" if method == "auto" else method
    width = 1 if method == "channel" else k
    total = np.zeros((c, width + 1, width + 1))
    count = 0
    wide = Layer(layer.name, "conv", layer.input, layer.output, layer.weight, layer.bias, (c, c) + layer.shape[2:],
                 layer.attrs)
    for xb in (chunk[i:i + batch] for chunk in ([x] if isinstance(x, np.ndarray) else x)
               for i in range(0, chunk.shape[0], batch)):
        xb = np.asarray(xb, np.float64)
        if method == "channel":
            rows = np.moveaxis(xb, LAYER_AXIS, -1).reshape(-1, c, 1)
        else:
            rows = patches(wide, xb).reshape(-1, c, k)
        ones = np.ones(rows.shape[:2] + (1,))
        rows = np.concatenate([rows, ones], axis=2)
        total += np.einsum("mci,mcj->cij", rows, rows)
        count += rows.shape[0]
    h = total / max(count, 1)
    if not np.isfinite(h).all():
        raise NumericalError("depthwise statistics hold NaN or Inf")
    if method == "channel" and k > 1:
        return np.stack([expand_conv_hessian(hc, k) for hc in h])
    return h


def cross_moments(layer: Layer, x: np.ndarray | Iterable[np.ndarray], x_ref: np.ndarray | Iterable[np.ndarray],
                  method: str, batch: int = 256, sample_weights: np.ndarray | None = None,
                  fraction: float = 1.0, expand: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian of ``x`` and the cross moment ``G = mean([x 1][x_ref 1]')`` with the same estimator.

    ``x`` is the layer input in the zipped network, ``x_ref`` in the original one, sample by sample;
    ``sample_weights`` (N,), ``fraction`` and ``expand`` as in :func:`layer_hessian` (the same rows of both).
    For a neuron ``a`` of the original network, ``H^-1 G a`` is the least-squares refit that makes the
    zipped input reproduce the original pre-activation (``a' x`` ~ ``a' x_ref``).

    Returns:
        H, G: (fan_in + 1, fan_in + 1) float64 each.
    """
    est: HessianEstimator = HESSIANS.get(method)
    if est.rows is None:
        eye = np.eye(layer.fan_in + 1)
        return eye, eye
    h = g = None
    count, seen, rng = 0.0, 0, np.random.default_rng(0)
    for xb, rb in zip(_pieces(layer, est, x, batch), _pieces(layer, est, x_ref, batch)):
        r, q = est.rows(layer, xb), est.rows(layer, rb)
        w = None if sample_weights is None else _row_weights(layer, sample_weights[seen:seen + xb.shape[0]], r)
        seen += xb.shape[0]
        keep = _subset(rng, fraction, r.shape[0])
        r, q, w = r[keep], q[keep], None if w is None else w[keep]
        if h is None:
            h, g = np.zeros((r.shape[1] + 1,) * 2), np.zeros((r.shape[1] + 1,) * 2)
        for i in range(0, r.shape[0], CHUNK):  # float32 products, float64 sums (see Accumulator.add)
            ri, qi = _working(r[i:i + CHUNK]), _working(q[i:i + CHUNK])
            qi = qi.astype(ri.dtype, copy=False)
            wi = np.ones(ri.shape[0]) if w is None else np.asarray(w[i:i + CHUNK], np.float64)
            rw = ri if w is None else ri * wi[:, None].astype(ri.dtype)
            with np.errstate(invalid="ignore", over="ignore"):
                h[:-1, :-1] += rw.T @ ri
                g[:-1, :-1] += rw.T @ qi
                if w is None:  # (column sums without a float64 copy of the chunk)
                    sr, sq = ri.sum(axis=0, dtype=np.float64), qi.sum(axis=0, dtype=np.float64)
                else:
                    sr, sq = wi @ ri.astype(np.float64), wi @ qi.astype(np.float64)
            h[:-1, -1] += sr
            h[-1, :-1] += sr
            g[:-1, -1] += sr
            g[-1, :-1] += sq
            h[-1, -1] += wi.sum()
            g[-1, -1] += wi.sum()
            count += wi.sum()
    if h is None or count == 0:
        raise NumericalError("no calibration samples reached a layer")
    h, g = h / count, g / count
    if not (np.isfinite(h).all() and np.isfinite(g).all()):
        raise NumericalError("layer-input statistics hold NaN or Inf: the model overflows on the calibration data")
    return (est.finish(layer, h), est.finish(layer, g)) if expand else (h, g)
