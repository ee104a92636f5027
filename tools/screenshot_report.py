"""Render an HTML report in headless Chromium and save a screenshot (the report is meant to be read
in a browser without a server: this is how to check that it is).

    python tools/screenshot_report.py report.html shot.png [--chromium /usr/bin/chromium]

Needs Chromium (Debian: ``apt-get install chromium``); exits 2 with a message when it is absent.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def screenshot(page: Path, out: Path, chromium: str, width: int = 1200, height: int = 2400) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={out.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    if not args.chromium:
        print("no chromium found: apt-get install chromium (or give --chromium PATH)", file=sys.stderr)
        return 2
    screenshot(args.page, args.out, args.chromium, height=args.height)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
