"""Summarise a py-spy ``--format raw`` profile: where the samples of one code path go.

``python -m bench.profile_summary PROFILE.txt [--within TEXT] [--top N]`` keeps the stacks
that contain a frame matching ``--within`` (e.g. ``_ours (bench/scenarios/commands.py``) and
prints, as shares of those samples, the top frames by inclusive time (the frame anywhere on
the stack) and by self time (the leaf frame). Used for the "where the time goes" notes of
docs/benchmarks.md:

    py-spy record -r 200 -f raw -o /tmp/p.txt -- .venv/bin/python -m bench --quick --only 1
    .venv/bin/python -m bench.profile_summary /tmp/p.txt --within "_ours (bench/scenarios"
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

__all__ = ["main", "summarise"]

_LINE = re.compile(r" \((.*?):\d+\)$")


def _frame(raw: str) -> str:
    # "func (path/file.py:123)" -> "func (path/file.py)": one entry per function.
    name = _LINE.sub(r" (\1)", raw.strip())
    return name.replace("/work/main/", "").replace(".venv/lib/python3.11/site-packages/", "")


def summarise(text: str, within: str = "", top: int = 15) -> str:
    """Return the inclusive and self-time tables of the stacks matching ``within``."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or (within and within not in stack):
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no matching samples"
    out = [f"{total} samples", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out.append("self:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    return "\n".join(out)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--within", default="")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarise(args.profile.read_text(), args.within, args.top))


if __name__ == "__main__":
    main()
