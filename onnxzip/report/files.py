"""Writing a report: JSON, or one HTML page (:mod:`onnxzip.report.page`), atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UsageError
from .records import ZipReport

#: what a report path may end with: an HTML page, else JSON
PAGE_SUFFIXES, JSON_SUFFIXES = (".html", ".htm"), (".json",)


def report_kind(path: str | os.PathLike, flag: str = "--report") -> str:
    """"page" or "JSON" by ``path``'s suffix; any other suffix is a :class:`UsageError` (a report
    never lands silently as JSON in a ``.txt``)."""
    low = str(path).lower()
    if low.endswith(PAGE_SUFFIXES):
        return "page"
    if low.endswith(JSON_SUFFIXES):
        return "JSON"
    raise UsageError(f"{flag} {path}: give a path ending in .html (one page with plots) or .json")


def write_json(report: ZipReport, path: str | os.PathLike) -> None:
    """Write ``report`` as JSON atomically."""
    _write(path, json.dumps(report.to_dict(), indent=2) + "\n")


def write_report(report: ZipReport, path: str | os.PathLike) -> None:
    """Write ``report`` atomically: one self-contained HTML page for ``.html``/``.htm``
    (:mod:`onnxzip.report.page`), else JSON."""
    if report_kind(path) == "page":
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
