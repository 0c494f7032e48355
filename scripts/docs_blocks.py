"""The shell blocks of the documentation: each is marked, the runnable ones are run in CI.

Every ```` ```bash ```` block under ``docs/`` carries a marker on the line before it:

- ``<!-- ci:run -->``: CI runs it (on the demo task, from the repository root, after the README's
  quickstart, pages in the site's order, blocks in page order, each with ``bash -e -o pipefail``);
- ``<!-- ci:skip REASON -->``: it needs a GPU, real data, weights or a cluster; the built page says
  so under the block ("Not run by the documentation check: REASON"), written by :func:`on_page_markdown`
  (an MkDocs hook), so the reason is stated once.

    python scripts/docs_blocks.py --list      # every block: page, line, run or skip (and why)
    python scripts/docs_blocks.py             # check the markers, then run every ci:run block
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MARK = re.compile(r"^<!-- ci:(run|skip)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
SKIP_NOTE = "*Not run by the documentation check: {reason}.*"


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    mode: str  # run | skip | "" (unmarked)
    reason: str
    code: str


def blocks(text: str, page: str) -> list[Block]:
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = MARK.match(prev.strip())
            out.append(Block(page, i + 1, m.group(1) if m else "", m.group(2) if m else "", "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


def pages() -> list[Path]:
    """The pages in the site's navigation order (mkdocs.yml), then any other page."""
    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    order = [DOCS / p for p in walk(nav.get("nav", [])) if p.endswith(".md")]
    rest = sorted(p for p in DOCS.rglob("*.md") if p not in order)
    return [p for p in order if p.is_file()] + rest


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]


def problems(found: list[Block]) -> list[str]:
    out = [f"{b.page}:{b.line}: a shell block without <!-- ci:run --> or <!-- ci:skip REASON --> on the line before"
           for b in found if not b.mode]
    out += [f"{b.page}:{b.line}: ci:skip without a reason" for b in found if b.mode == "skip" and not b.reason]
    return out


def run(found: list[Block], cwd: Path) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    todo = [b for b in found if b.mode == "run"]
    total = time.time()
    for n, b in enumerate(todo, 1):
        print(f"+ [{n}/{len(todo)}] {b.page}:{b.line}\n{b.code}", flush=True)
        t = time.time()
        rc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", b.code], cwd=cwd, env=env).returncode
        print(f"  ({time.time() - t:.0f} s, exit {rc})", flush=True)
        if rc:
            print(f"docs block failed: {b.page}:{b.line} (exit {rc})", file=sys.stderr)
            return 1
    print(f"{len(todo)} documentation blocks ran in {time.time() - total:.0f} s; "
          f"{sum(b.mode == 'skip' for b in found)} marked ci:skip")
    return 0


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - MkDocs hook
    """Under each ci:skip block, a visible line saying why it is not run."""
    lines, out, pending = markdown.splitlines(), [], None
    in_block = False
    for line in lines:
        m = MARK.match(line.strip())
        if m and m.group(1) == "skip":
            pending = m.group(2)
        out.append(line)
        if FENCE.match(line) and not in_block:
            in_block = True
        elif in_block and line.strip() == "```":
            in_block = False
            if pending:
                out += ["", SKIP_NOTE.format(reason=pending.rstrip("."))]
                pending = None
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the blocks and their markers; run nothing")
    ap.add_argument("--cwd", type=Path, default=REPO, help="where the blocks run (default: the repository root)")
    args = ap.parse_args()
    found = all_blocks()
    bad = problems(found)
    if args.list:
        for b in found:
            print(f"{b.page}:{b.line}: {b.mode or 'UNMARKED'}{': ' + b.reason if b.reason else ''}")
    for line in bad:
        print(line, file=sys.stderr)
    if bad:
        return 1
    return 0 if args.list else run(found, args.cwd)


if __name__ == "__main__":
    sys.exit(main())
