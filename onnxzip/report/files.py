"""Writing a report: JSON, or one HTML page (:mod:`onnxzip.report.page`), atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .records import ZipReport


def write_json(report: ZipReport, path: str | os.PathLike) -> None:
    """Write ``report`` as JSON atomically."""
    _write(path, json.dumps(report.to_dict(), indent=2) + "\n")


def write_report(report: ZipReport, path: str | os.PathLike) -> None:
    """Write ``report`` atomically: one self-contained HTML page for ``.html``/``.htm``
    (:mod:`onnxzip.report.page`), else JSON."""
    if str(path).lower().endswith((".html", ".htm")):
        from .page import render
        _write(path, render(report))
    else:
        write_json(report, path)


def _write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (a temporary file renamed), making missing folders."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
