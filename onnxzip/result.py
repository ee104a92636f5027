"""What a zip returns: the zipped model, its plan and its report."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .graph import io
from .report.records import ZipReport
from .sharing.plan import ZipPlan


@dataclass
class ZipResult:
    """The zipped model, its report (typed: ``summary``; as JSON: ``report``), and the task names
    (outputs ``<task>/<name>``)."""

    model: onnx.ModelProto
    summary: ZipReport | None
    names: list[str]
    plan: ZipPlan = field(repr=False)

    @property
    def report(self) -> dict[str, Any]:
        """The report as JSON-ready values (the keys the README's ``--report`` lists)."""
        return self.summary.to_dict()

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically."""
        io.save_model(self.model, path)

    def inputs_for(self, task: int, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map a task's input arrays (by original name) to the zipped model's input names."""
        names = {i.name for i in self.model.graph.input}
        return {(k if k in names else f"{self.names[task]}/{k}"): v for k, v in data.items()
                if k in names or f"{self.names[task]}/{k}" in names}
