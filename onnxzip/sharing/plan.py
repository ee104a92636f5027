"""The plan: how many neurons each hidden layer group shares, and what the layer loop decided for
every layer (:class:`LayerZip`, :class:`ZipPlan`), the record emit and the checks read (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:
    from ..report.records import GroupChoice


@dataclass(frozen=True)
class Budget:
    """An automatic sharing budget: keep at most ``target_params`` of the originals' summed layer
    parameters, or stop before the predicted cost exceeds ``max_cost`` (in the costs' units)."""

    target_params: float | None = None
    max_cost: float | None = None


class Counts(tuple):
    """Neuron counts per group, as a budget chose them (not fractions: a ``share`` of ints such as
    ``(1, 0)`` means fractions)."""


def counts_given(share: object) -> bool:
    """``share`` is a budget's :class:`Counts`, not fractions."""
    return isinstance(share, Counts)


def allocate(costs: Sequence[np.ndarray], saving: Callable[[np.ndarray], np.ndarray], total: int,
             budget: Budget) -> tuple[list[int], float]:
    """Choose each group's shared count greedily by predicted cost per parameter saved.

    Args:
        costs: per group, the cost of each further shared slot (ascending).
        saving: k (per group) -> parameters saved by one more shared neuron in each group.
        total: the originals' summed layer parameters.
    Returns:
        counts per group, and the predicted total cost.
    """
    k = np.zeros(len(costs), dtype=np.int64)
    kept, spent = float(total), 0.0
    target = None if budget.target_params is None else budget.target_params * total
    while target is None or kept > target:
        gain = saving(k)
        best, ratio = -1, np.inf
        for g, c in enumerate(costs):
            if k[g] < len(c) and gain[g] > 0 and c[k[g]] / gain[g] < ratio:
                best, ratio = g, c[k[g]] / gain[g]
        if best < 0:
            break
        if budget.max_cost is not None and spent + costs[best][k[best]] > budget.max_cost:
            break
        spent += float(costs[best][k[best]])
        kept -= gain[best]
        k[best] += 1
    return [int(x) for x in k], spent


def parse_share(text: str) -> float | tuple[float, ...]:
    """``"0.5"`` -> 0.5; ``"0.5,0.25"`` -> (0.5, 0.25) (one fraction per hidden layer)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--share {text!r}: give a fraction in [0, 1] or a comma-separated list of them") from None
    return values[0] if len(values) == 1 else values


def check_share_list(share: float | Sequence[float | None], names: Sequence[str]) -> None:
    """Raise :class:`UsageError` where a ``--share`` list does not give one fraction per layer group."""
    if isinstance(share, (tuple, list)) and len(share) != len(names):  # (None: a budget's choice)
        raise UsageError(f"--share lists {len(share)} fractions but the model has {len(names)} layer groups "
                         f"({'; '.join(names)}); 'onnxzip inspect' lists them")


def shared_counts(share: float | Sequence[float], neurons: Sequence[int], names: Sequence[str]) -> list[int]:
    """Neurons to share per group of tied hidden layers (one layer, in a plain chain).

    Args:
        share: one fraction for every group, or one per group (in order).
        neurons: each group's neuron count (the smallest over the tasks).
        names: the groups' names, for messages.
    Returns:
        ``round(share * neurons)`` per group.
    """
    check_share_list(share, names)
    fractions = [float(share)] * len(neurons) if isinstance(share, (int, float)) else [float(s) for s in share]
    for f, name in zip(fractions, names):
        if not 0.0 <= f <= 1.0:
            raise UsageError(f"--share {f} for {name!r} is outside [0, 1]")
    return [int(round(f * n)) for f, n in zip(fractions, neurons)]


@dataclass
class LayerZip:
    """One layer of the zipped model, for every task.

    ``rows[t]`` gives, per zipped row, the task's original neuron index; ``cols[t]`` per zipped
    column the original column index (``fan_in`` is the bias). ``weights[t]`` (n, d + 1) float32 is in
    zipped order and ``weights[t][:shared, :ns]`` is the same for every task. A depthwise
    ``follower`` keeps rows in original order; its shared channels are those of its input.
    """

    layer: int
    shared: int
    ns: int
    rows: list[np.ndarray]
    cols: list[np.ndarray]
    weights: list[np.ndarray]
    costs: np.ndarray
    follower: bool = False
    #: per task, the mean over samples and positions of the summed squared pre-activation change the
    #: merge makes to the layer's targets, from the undamped statistic (None: not a merged layer)
    predicted: list[float] | None = None
    #: whether ``predicted`` is the exact pre-activation error against the original network: the
    #: layer's input is the original one in every task and its statistic is exact (not per-channel)
    checkable: bool = False
    #: the fraction of the layer's input rows (samples x positions) its statistics read
    rows_read: float = 1.0
    #: the rows (samples x positions or tokens) its statistics read, in the task that read the fewest
    stat_rows: int = 0
    #: the multiply-adds of its dense statistics, all tasks (:attr:`onnxzip.sharing.problem.Problems.stat_flops`)
    stat_flops: float = 0.0
    #: ``--affine``: per task, each shared row's scale a (shared,) and shift b (shared,); then
    #: ``weights[t][:shared]`` hold the effective rows a w + b e_bias, w the rows stored once
    affine: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        # float32, as the graph stores and the stages run them (the merge solves in float64): a
        # transformer's plan is its model's size twice otherwise
        self.weights = [np.asarray(w, np.float32) for w in self.weights]

    def stored(self, task: int) -> np.ndarray:
        """The task's rows as the graph stores them: the shared block before its scale and shift
        (the same for every task; the shared columns taken from the first task), the rest as they are."""
        w = self.weights[task]
        if self.affine is None:
            return w
        k, ns = self.shared, self.ns
        a, b = self.affine[task]
        out = w.copy()
        base = self.weights[0][:k, :ns].copy()
        a0, b0 = self.affine[0]
        base[:, ns - 1] -= b0
        out[:k, :ns] = base / a0[:, None]
        out[:k, ns:] = w[:k, ns:] / a[:, None]
        return out

    @property
    def neurons(self) -> int:
        return self.weights[0].shape[0]


@dataclass
class ZipPlan:
    """Every layer's zip (hidden layers and private heads) and the zipped tasks' outputs."""

    layers: dict[int, LayerZip]
    hidden: list[int]
    outputs: list[dict[str, np.ndarray]]  # per task, on the calibration data
    groups: list[list[int]] = field(default_factory=list)
    #: group -> the task order chosen and the costs per order (:class:`onnxzip.report.records.GroupChoice`)
    orders: dict[int, GroupChoice] = field(default_factory=dict)
    loss_aware: bool = False  # costs are in loss units
    constants: list[dict[str, np.ndarray]] = field(default_factory=list)  # per task: re-estimated BN statistics
    #: per task, the original (normalized) network's float outputs on the first ``NOISE_SAMPLES``
    #: calibration samples as run stage by stage (against the original file: the float noise)
    originals: list[dict[str, np.ndarray]] = field(default_factory=list)
    #: hidden layer -> per task (error, signal): the zipped network's pre-activation against the
    #: original's, measured in ONNX Runtime on the calibration data (:meth:`StagedNetwork.run_pair`)
    measured: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
