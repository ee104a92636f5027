"""The zip report as typed records: each stage fills its part, the renderers read attributes, and
:meth:`ZipReport.to_dict` serializes it once (the JSON keys of the README's ``--report`` list).

The records are the vocabulary every stage writes into: any subpackage may import this module
(it imports nothing of onnxzip's).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

#: a field left out of the JSON while it is None (keys the report has only where they apply)
OPTIONAL = {"optional": True}


def _opt(default: Any = None) -> Any:
    return field(default=default, metadata=OPTIONAL)


def to_plain(value: Any) -> Any:
    """Records, lists and dicts as JSON-ready values (optional fields that are None left out; a
    record with its own ``to_dict`` says what it holds)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)
                if not (f.metadata.get("optional") and getattr(value, f.name) is None)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class LayerError:
    """One hidden layer's pre-activation error per task (mean over samples and positions of the
    squared error summed over neurons): the merge's ``predicted`` one, the one ``measured`` in ONNX
    Runtime, the original's ``signal``; ``exact``: the prediction had to match the measurement."""

    predicted: list[float] | None
    measured: list[float]
    signal: list[float]
    exact: bool = False


@dataclass
class LayerRow:
    """One hidden layer: its neurons, how many are shared, their summed cost (the costs' units)."""

    name: str
    kind: str
    neurons: int
    shared: int
    cost: float
    group: int | None = None
    rows_read: float = 1.0  # the fraction of its input rows (samples x positions) its statistics read
    stat_rows: int = 0  # how many rows that was (0: not counted: a depthwise follower, or no data read)
    error: LayerError | None = _opt()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRow:
        err = d.get("error")
        return cls(**{**_known(cls, d), "error": LayerError(**_known(LayerError, err)) if err else None})


@dataclass
class TaskRow:
    """One task against its original on held-out calibration samples (else on those the zip was
    fitted to: ``held_out``) (:mod:`onnxzip.check.fidelity`): the metrics of its first float output
    (None where they do not apply), the verdict and the evidence it rests on."""

    name: str
    rel_err: float | None = None
    top1_agreement: float | None = None
    mask_iou: float | None = None
    max_abs_diff: float | None = None
    loss_increase: float | None = 0.0  # summed over the task's float outputs
    fired: float | None = None  # detectors: zipped positives / original positives
    output: str | None = None  # the output the metrics are of
    verdict: str | None = None  # ok / degraded / collapsed / too few to judge; None: no float output to judge
    evidence: int | None = None  # what the decision metric counted: samples, or positive positions (mask IoU)
    held_out: bool = True  # measured on held-out samples (False: on the samples the zip was fitted to)

    @property
    def measured(self) -> bool:
        """Whether the task has a float output its fidelity was measured on."""
        return self.rel_err is not None

    def to_dict(self) -> dict[str, Any]:
        """``fired``, ``output``, ``verdict`` and ``evidence`` only for a measured task."""
        skip = () if self.measured else ("fired", "output", "verdict", "evidence")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskRow:
        return cls(**_known(cls, d))


@dataclass
class Equivalence:
    """The emitted model against the per-task zipped networks (:func:`onnxzip.check.verify.check_equivalence`)."""

    max_abs_diff: float = 0.0
    tolerance: float = 0.0
    float_noise: float = 0.0
    verdict: str = "ok"  # ok / rounding / mismatch / not checked


@dataclass
class NotShared:
    """A layer that shares nothing, and why."""

    layer: str
    reason: str


def not_shared_lines(rows: list[NotShared], named: int = 3) -> list[str]:
    """The layers that share nothing, one line per reason: ``a, b, c and 15 more (18 layers): why``."""
    by_reason: dict[str, list[str]] = {}
    for row in rows:
        by_reason.setdefault(row.reason, []).append(row.layer)
    out = []
    for reason, layers in by_reason.items():
        names = ", ".join(layers[:named]) + (f" and {len(layers) - named} more" if len(layers) > named else "")
        out.append(f"{names}{f' ({len(layers)} layers)' if len(layers) > 1 else ''}: {reason}")
    return out


@dataclass
class GroupChoice:
    """How a group's matching was chosen (the MTZ costs): the task order kept, the layers costed,
    the total cost of each starting pair tried, the cost matrix's size per task, the slots shared,
    the seconds and how the pairs were found (:class:`onnxzip.sharing.assign.Pairs` ``method``)."""

    order: list[str]
    costed_layers: int
    costs: dict[str, float]
    cost_matrix: list[int]
    shared: int
    matching_seconds: float
    matching: str = ""


@dataclass
class GroupRow:
    """A matched group of tied layers (or a single layer whose task order was chosen)."""

    layers: list[str]
    choice: GroupChoice | None = None
    index: int | None = None  # the group's number, as the layer rows give it (``LayerRow.group``)

    def to_dict(self) -> dict[str, Any]:
        out = {"layers": list(self.layers), **(to_plain(self.choice) if self.choice else {})}
        return out if self.index is None else {"index": self.index, **out}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupRow:
        choice = _known(GroupChoice, d)
        required = [f.name for f in fields(GroupChoice) if f.default is MISSING]
        return cls(list(d["layers"]), GroupChoice(**choice) if all(n in choice for n in required) else None,
                   d.get("index"))


@dataclass
class FloorRecord:
    """The zip's time against two floors: one pass of the originals over the calibration data in
    ONNX Runtime (the "originals" phase), and the least arithmetic of the dense statistics it
    collected (multiply-adds of X'X, symmetric, and of cross moments) at this machine's measured
    float32 X'X rate (an estimate of the floor: the rate of one product size)."""

    seconds: float  # the whole zip
    originals_seconds: float  # ONNX Runtime's floor
    statistics_gflop: float  # 1e9 multiply-adds, the kept zip's statistics (a budget's other tries not counted)
    gemm_gflops: float  # float32 X'X multiply-adds per second of numpy here, 1e9
    bound_seconds: float  # statistics_gflop / gemm_gflops

    def lines(self) -> list[str]:
        line = (f"time {self.seconds:.1f} s: {self.seconds / max(self.originals_seconds, 1e-9):.1f}x the ONNX Runtime "
                f"floor (one pass of the originals over the calibration data, {self.originals_seconds:.2f} s)")
        if self.statistics_gflop > 0:
            line += (f"; the statistics' {self.statistics_gflop:.3g} G multiply-adds take about {self.bound_seconds:.2f} s "
                     f"at {self.gemm_gflops:.1f} G/s here ({self.seconds / max(self.bound_seconds, 1e-9):.0f}x)")
        return [line]


@dataclass
class MemoryRecord:
    """A zip's memory by design (MB), estimated before the work starts (:mod:`onnxzip.sharing.memory`),
    to be read beside the peak it measured."""

    process_mb: float  # resident when the work starts: libraries, the loaded models, the calibration data
    models_mb: float  # the tasks' weights again, in ONNX Runtime's stage sessions
    zipped_mb: float  # the zipped weights, every task's: float64 in the plan, float32 for the stage graphs
    statistics_mb: float  # the largest layer's statistics at once (float64, every task's copies)
    statistics_layer: str  # that layer
    activations_mb: float  # live tensors kept in memory (the spool's part) and one stage batch

    @property
    def total_mb(self) -> float:
        return round(self.process_mb + self.models_mb + self.zipped_mb + self.statistics_mb + self.activations_mb, 1)

    def parts(self) -> str:
        return (f"loaded {self.process_mb:,.0f} MB, stage sessions {self.models_mb:,.0f} MB, zipped weights {self.zipped_mb:,.0f} MB, statistics "
                f"{self.statistics_mb:,.0f} MB ({self.statistics_layer or '-'}), live tensors {self.activations_mb:,.0f} MB")

    def line(self, peak_mb: float | None = None, phase: str | None = None) -> str:
        text = f"memory by design: about {self.total_mb:,.0f} MB ({self.parts()})"
        if peak_mb is not None:
            text += f"; measured peak {peak_mb:,.0f} MB ({peak_mb / max(self.total_mb, 1e-9):.1f}x" + \
                (f", reached in {phase})" if phase else ")")
        return text


@dataclass
class SizesRecord:
    """The input sizes the zipped model takes: the sizes the source files leave open (dim names),
    opened again after the zip and run at a second size against the originals, or kept fixed."""

    open: dict[str, dict[int, str]]  # zipped input -> axis -> dim name, as the zipped model declares them
    calibrated: dict[str, list[int]]  # zipped input -> its dims at the calibration data's sizes
    checked: dict[str, list[int]]  # zipped input -> its dims at the second size run
    rel_err: list[float | None]  # per task at the second size: relative error against its original
    ok: bool  # it ran there, every output shaped as the original's; else the sizes stay fixed
    note: str = ""  # why the sizes stay fixed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SizesRecord:
        return cls(**{**_known(cls, d), "open": {k: {int(a): n for a, n in v.items()} for k, v in d["open"].items()}})

    def profile(self, batch: int) -> dict[str, dict[str, list[int]]]:
        """A TensorRT optimization profile the checks cover: per input, min = one sample at the
        calibration size, opt = ``batch`` at it, max = ``batch`` at the second size."""
        return {name: {"min": [1] + dims[1:], "opt": [batch] + dims[1:], "max": [batch] + self.checked[name][1:]}
                for name, dims in self.calibrated.items()}


def shape_text(dims: list[int | str]) -> str:
    """Dims as ``(batch, 3, H, W)``."""
    return "(" + ", ".join(str(d) for d in dims) + ")"


#: the units of a measured output loss (:func:`onnxzip.check.fidelity.output_loss`)
LOSS_UNITS = "KL in nats for class scores, half the squared error elsewhere"


@dataclass(frozen=True)
class LossScale:
    """The planner's predicted cost turned into measured output loss: ``loss = scale * cost ** power``,
    fitted in log space on the zips a budget measured (:func:`onnxzip.sharing.budget.fit_loss_scale`).
    Loss: per sample, summed over tasks, in :func:`onnxzip.check.fidelity.output_loss`'s units (KL
    in nats for class scores, half the squared error elsewhere)."""

    scale: float
    power: float
    zips: int  # the measured zips it was fitted on

    def loss(self, cost: float) -> float:
        return self.scale * max(cost, 0.0) ** self.power

    def cost(self, loss: float) -> float:
        return (max(loss, 0.0) / self.scale) ** (1.0 / self.power)


@dataclass
class BudgetTry:
    """One zip under a budget: what it asked, the counts, the predicted cost and measured loss."""

    target_params: float | None
    max_cost: float | None  # the planner's cap on the predicted cost (the costs' units)
    counts: list[int]
    predicted_cost: float | None  # the planner's summed slot costs at ``counts`` (the costs' units)
    measured_loss: float
    params_kept: float
    fits: bool  # every task measured ok (or too few to judge), and within --max-loss-increase
    kind: str = "allocation"  # the planner's allocation, or what it was measured against: "uniform", "full sharing"
    predicted_loss: float | None = _opt()  # ``predicted_cost`` through the budget's :class:`LossScale`


@dataclass
class BudgetRecord:
    """The budget's outcome: the counts kept, their predicted cost (the costs' units) and measured
    output loss (:func:`onnxzip.check.fidelity.output_loss`), and every try when it backed off."""

    counts: list[int]
    predicted_cost: float | None
    target_params: float | None
    max_cost: float | None  # the planner's cap on the predicted cost of the zip kept (the costs' units)
    measured_loss: float
    backoff: list[BudgetTry] = field(default_factory=list)
    #: the zips the allocation was measured against at the same target (uniform share, full sharing)
    compared: list[BudgetTry] = field(default_factory=list)
    chosen: str = "allocation"  # the kind kept: the one of least measured held-out loss among those that fit
    max_loss_increase: float | None = _opt()  # --max-loss-increase: measured loss units (LossScale)
    #: predicted cost -> measured loss, fitted on every zip measured here
    loss_scale: LossScale | None = _opt()
    predicted_loss: float | None = _opt()  # ``predicted_cost`` through ``loss_scale``

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetRecord:
        scale = d.get("loss_scale")
        return cls(**{**_known(cls, d), "backoff": [BudgetTry(**_known(BudgetTry, t)) for t in d.get("backoff", [])],
                      "compared": [BudgetTry(**_known(BudgetTry, t)) for t in d.get("compared", [])],
                      "loss_scale": LossScale(**_known(LossScale, scale)) if scale else None})


@dataclass
class FinetuneRecord:
    """Light retraining after the zip: its steps, seconds and each task's fidelity before it."""

    steps: int
    seconds: float
    tasks_before: list[TaskRow]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneRecord:
        return cls(d["steps"], d["seconds"], [TaskRow.from_dict(t) for t in d["tasks_before"]])


@dataclass
class DistillRecord:
    """Distillation from the originals after the zip (:mod:`onnxzip.tune.distill`): the steps asked
    and run, the step whose values were kept, the held-out distillation loss before and after (None
    without held-out samples), seconds, and each task's fidelity before it."""

    steps: int
    steps_run: int
    best_step: int
    held_loss_before: float | None
    held_loss_after: float | None
    seconds: float
    tasks_before: list[TaskRow]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillRecord:
        return cls(**{**_known(cls, d), "tasks_before": [TaskRow.from_dict(t) for t in d["tasks_before"]]})


@dataclass
class InputRecord:
    """One model and its calibration data, with their SHA-256."""

    task: str
    model: str | None
    model_sha256: str | None
    data: str | None
    data_sha256: str | None


@dataclass
class ZipReport:
    """Everything a zip reports. ``check`` fills the measurements, the API the rest."""

    tasks: list[TaskRow]
    layers: list[LayerRow]
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    equivalence: Equivalence = field(default_factory=Equivalence)
    not_shared: list[NotShared] = field(default_factory=list)
    groups: list[GroupRow] = field(default_factory=list)
    restored_at: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # calibration samples per task
    finetune: FinetuneRecord | None = _opt()
    distill: DistillRecord | None = _opt()
    sizes: SizesRecord | None = _opt()  # where a source file leaves input sizes open
    #: the zipped model's inputs as it declares them: name -> dims (a size, or a dim name)
    model_inputs: dict[str, list[int | str]] | None = _opt()
    budget: BudgetRecord | None = _opt()
    deployment_problems: list[str] | None = _opt()
    onnxzip_version: str | None = _opt()
    inputs: list[InputRecord] | None = _opt()
    options: dict[str, Any] | None = _opt()  # every option (the flag names), as given
    metrics_on: str | None = _opt()
    cost_units: str | None = _opt()  # "loss" or "pre-activation"
    seconds: float | None = _opt()
    phases: dict[str, float] | None = _opt()  # seconds per phase
    peak_rss_mb: float | None = _opt()
    peak_phase: str | None = _opt()  # the phase during which the peak memory was reached
    floor: FloorRecord | None = _opt()
    memory: MemoryRecord | None = _opt()  # by design, estimated before the work started

    @property
    def params_kept(self) -> float:
        """The zipped model's float parameters over the originals'."""
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values, with the keys the README lists."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "equivalence":
                out["equivalence_max_abs_diff"] = value.max_abs_diff
            if not (f.metadata.get("optional") and value is None):
                out[f.name] = to_plain(value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZipReport:
        """A report read back from its JSON (:meth:`to_dict`); without ``tasks``, a KeyError; sizes
        and lists it lacks read as zero and empty."""
        sizes = {k: 0 for k in ("params_before", "params_after", "bytes_before", "bytes_after")}
        fixed = {"tasks": [TaskRow.from_dict(t) for t in d["tasks"]],
                 "layers": [LayerRow.from_dict(r) for r in d.get("layers", [])],
                 "equivalence": Equivalence(**_known(Equivalence, d.get("equivalence") or {})),
                 "not_shared": [NotShared(**r) for r in d.get("not_shared", [])],
                 "groups": [GroupRow.from_dict(g) for g in d.get("groups", [])],
                 "budget": BudgetRecord.from_dict(d["budget"]) if d.get("budget") else None,
                 "finetune": FinetuneRecord.from_dict(d["finetune"]) if d.get("finetune") else None,
                 "distill": DistillRecord.from_dict(d["distill"]) if d.get("distill") else None,
                 "sizes": SizesRecord.from_dict(d["sizes"]) if d.get("sizes") else None,
                 "floor": FloorRecord(**_known(FloorRecord, d["floor"])) if d.get("floor") else None,
                 "memory": MemoryRecord(**_known(MemoryRecord, d["memory"])) if d.get("memory") else None,
                 "inputs": [InputRecord(**_known(InputRecord, i)) for i in d["inputs"]] if "inputs" in d else None}
        return cls(**{**sizes, **_known(cls, d), **fixed})
