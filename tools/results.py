"""Write a benchmark's table into docs/results.md, between its ``<!-- NAME:start/end -->`` markers."""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results.md"


def update_section(name: str, title: str, body: str) -> None:
    """Replace section ``name`` (or append it under ``title``) with ``body``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    block = f"<!-- {name}:start -->\n{body}<!-- {name}:end -->"
    pattern = rf"<!-- {name}:start -->.*<!-- {name}:end -->"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    RESULTS.write_text(text)
