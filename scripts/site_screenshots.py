"""Open the built documentation site in headless Chromium, screenshot it, and fail on a blank or
error page (CI: after ``mkdocs build --strict``).

    python scripts/site_screenshots.py [--site site] [--out ci-artifacts]

For each page of :data:`PAGES`: the rendered DOM (``--dump-dom``) must contain the page's heading,
and the screenshot must not be one uniform colour (more than a handful of distinct colours, a grey
level spread above a floor). Writes ``<out>/<name>.png``; exit 1 with one line per failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PAGES = {  # screenshot name: (page of the built site, text its <h1> holds)
    "home": ("index.html", "pvera-bench"),
    "reference-config": ("reference/config.html", "Configuration reference"),
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("site_screenshots: no chromium on PATH (Debian: apt-get install chromium)")


def browse(exe: str, args: list[str], profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": profile})


def blank(png: Path) -> str | None:
    """Why the screenshot looks blank (None if it does not)."""
    img = np.asarray(Image.open(png).convert("RGB"))
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    spread = float(img.mean(axis=2).std())
    if colours < 16 or spread < 5.0:
        return f"{colours} distinct colours, grey-level spread {spread:.1f}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", type=Path, default=Path("site"))
    ap.add_argument("--out", type=Path, default=Path("ci-artifacts"))
    args = ap.parse_args()
    exe = chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    for name, (page, heading) in PAGES.items():
        url = (args.site / page).resolve().as_uri()
        png = (args.out / f"{name}.png").resolve()
        with tempfile.TemporaryDirectory() as profile:
            dom = browse(exe, ["--dump-dom", url], profile)
            shot = browse(exe, [f"--screenshot={png}", "--window-size=1280,1000", url], profile)
        if dom.returncode or not re.search(rf"<h1[^>]*>\s*{re.escape(heading)}", dom.stdout):
            failures.append(f"{page}: the rendered page has no heading {heading!r} (chromium exit {dom.returncode}: "
                            f"{dom.stderr.strip().splitlines()[-1:] or ''})")
        if shot.returncode or not png.is_file():
            failures.append(f"{page}: no screenshot (chromium exit {shot.returncode})")
        elif why := blank(png):
            failures.append(f"{page}: the screenshot looks blank ({why})")
        else:
            print(f"{page}: heading {heading!r} rendered; screenshot {png}")
    for line in failures:
        print("site_screenshots:", line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
