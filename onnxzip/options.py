"""The options of a zip: every ``onnxzip zip`` flag, one frozen record passed whole to each stage."""
from __future__ import annotations

import argparse
import math
import numbers
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .calibrate.stats import HESSIANS, MAX_ROWS
from .emit.layers import FORMS
from .errors import UsageError
from .images import ImageRecipe
from .sharing.match import COSTS, ORDERS
from .sharing.assign import MATCHERS
from .sharing.plan import counts_given

#: fields that say how a zip runs, not what it makes: left out of the report's options
HOW = ("quiet", "offset_basis")


@dataclass(frozen=True)
class ZipOptions:
    """Every ``onnxzip zip`` flag, with the same defaults. Each stage reads the fields it needs."""

    share: float | tuple[float, ...] = 0.5
    names: tuple[str, ...] | None = None
    matching: str = "optimal"  # MATCHERS
    hessian: str = "auto"  # HESSIANS
    damping: float = 1e-2
    compensate: bool = True
    affine: bool = False  # per-task channel scale and shift after each shared block (onnxzip.sharing.affine)
    task_order: str = "auto"  # ORDERS
    recover: bool = True
    loss_aware: bool = True
    labels: str | None = None
    finetune: int = 0
    distill: int = 0  # Adam steps of distillation from the originals after the zip (onnxzip.tune.distill)
    cost: str = "mtz"  # COSTS
    target_params: float | None = None
    max_loss_increase: float | None = None
    separate_inputs: bool = False
    favor: str = "size"  # FORMS: how partly shared layers run, storage once or one op per task
    device: str = "cpu"
    batch_size: int = 64
    mask_threshold: float = 0.5
    hold_out: float = 0.2  # the fraction of each task's calibration samples judged on, not fitted to (seeded)
    quiet: bool = False
    image_size: tuple[int, int] | None = None  # image folders as --data: the recipe (onnxzip.images)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    bgr: bool = False
    layout: str = "nchw"
    max_samples: int = 256
    stat_rows: int = MAX_ROWS  # rows per statistic at most (or what its width needs; 0: all): a seeded subset
    #: per-channel conv statistics worked in the offset basis (:mod:`onnxzip.sharing.offsets`); False:
    #: as dense (C K + 1)^2 matrices, the same numbers with O((C K)^3) work (the oracle in tests)
    offset_basis: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.share, list):  # (a list reads as the tuple it means: frozen, hashable)
            object.__setattr__(self, "share", tuple(self.share))

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given: Any) -> ZipOptions:
        """The options a parsed command line names (fields it lacks keep their defaults)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **given})

    def recipe(self) -> ImageRecipe:
        """How an image folder given as --data becomes a model input."""
        return ImageRecipe(self.image_size, tuple(self.mean), tuple(self.std), self.bgr, self.layout, self.max_samples)

    def as_report(self) -> dict[str, Any]:
        """The options as the report records them (lists for tuples; without :data:`HOW`)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in HOW}

    def check(self, n_models: int) -> None:
        """Raise :class:`UsageError` for a value no stage can take."""
        for flag, registry, value in (("--matching", MATCHERS, self.matching), ("--hessian", HESSIANS, self.hessian),
                                      ("--cost", COSTS, self.cost), ("--favor", FORMS, self.favor),
                                      ("--task-order", ORDERS, self.task_order)):
            if value not in registry:
                raise UsageError(f"{flag} {value!r}: choose {' or '.join(registry.names())}")
        for flag, value in (("--damping", self.damping), ("--target-params", self.target_params),
                            ("--max-loss-increase", self.max_loss_increase), ("--hold-out", self.hold_out),
                            ("--mask-threshold", self.mask_threshold)):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{flag} {value}: give a finite number")
        if self.damping < 0:
            raise UsageError(f"--damping {self.damping}: must be >= 0")
        if self.target_params is not None and not 0.0 < self.target_params <= 1.0:
            raise UsageError(f"--target-params {self.target_params}: give a fraction in (0, 1]")
        if self.max_loss_increase is not None and self.max_loss_increase < 0:
            raise UsageError(f"--max-loss-increase {self.max_loss_increase}: must be >= 0")
        if not 0.0 < self.mask_threshold < 1.0:
            raise UsageError(f"--mask-threshold {self.mask_threshold}: give a value in (0, 1)")
        if not 0.0 <= self.hold_out < 1.0:
            raise UsageError(f"--hold-out {self.hold_out}: give a fraction in [0, 1)")
        shares = () if counts_given(self.share) else self.share if isinstance(self.share, tuple) else (self.share,)
        budget = self.target_params is not None or self.max_loss_increase is not None
        if not all((v is None and budget) or isinstance(v, numbers.Real) and 0.0 <= v <= 1.0 for v in shares):
            # (NaN fails too; None: a budget's choice) the range per layer group: plan.shared_counts
            raise UsageError(f"--share {','.join(str(v) for v in shares)}: give fractions in [0, 1]")
        if self.finetune < 0:
            raise UsageError(f"--finetune {self.finetune}: give a number of steps >= 1 (0, the default: none)")
        if self.distill < 0:
            raise UsageError(f"--distill {self.distill}: give a number of steps >= 0")
        if self.stat_rows < 0:
            raise UsageError(f"--stat-rows {self.stat_rows}: give a number of rows >= 1 (0: every row)")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be >= 1")
        self.recipe().check()
        if self.names is not None:
            if len(self.names) != n_models:
                raise UsageError(f"--names gives {len(self.names)} name{'s' if len(self.names) != 1 else ''} for "
                                 f"{n_models} models")
            for n in self.names:
                if not re.fullmatch(r"[A-Za-z0-9_.\-]+", n):
                    raise UsageError(f"--names: {n!r} is not a valid task name (letters, digits, _ . -)")
            if len(set(self.names)) != len(self.names):
                raise UsageError("--names: task names must differ")
