"""Every ```python block in README.md and docs/*.md runs, each in a fresh namespace.

A block is skipped when its fence says ```python no-run or the line before it is
``<!-- no-run -->``. Blocks run with ``__name__ == "__main__"`` in a temporary working
directory, so examples may use ``asyncio.run`` and relative SQLite files. Top-level ``await``
is allowed too.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from cqrskit import messages

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


class Block(NamedTuple):
    path: Path
    line: int
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """Return the runnable ```python blocks of a Markdown file."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        language, info = match.groups()
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        previous = lines[start - 1].strip() if start else ""
        skipped = "no-run" in info or previous == "<!-- no-run -->"
        if language == "python" and not skipped:
            blocks.append(Block(path, start + 1, "\n".join(body) + "\n"))
    return blocks


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


ALL_BLOCKS = [block for path in documents() if path.exists() for block in python_blocks(path)]


def test_the_docs_have_examples() -> None:
    assert len(ALL_BLOCKS) >= 5
    assert any(block.path.name == "README.md" for block in ALL_BLOCKS)


def test_no_run_blocks_are_skipped(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\na = 1\n```\n```python no-run\nb = 2\n```\n"
        "<!-- no-run -->\n```python\nc = 3\n```\n```bash\necho\n```\n",
        encoding="utf-8",
    )
    assert [block.code for block in python_blocks(page)] == ["a = 1\n"]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.id)
def test_example_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Examples define their own event classes (in module "__main__"); afterwards the
    # registry holds the real modules' classes again, including ones first imported here.
    registry = messages.registered_event_types()
    try:
        code = compile(
            block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        namespace: dict[str, object] = {"__name__": "__main__"}
        result = eval(code, namespace)  # noqa: S307 - our own documentation
        if inspect.iscoroutine(result):
            asyncio.run(result)
    finally:
        for name, cls in messages.registered_event_types().items():
            if cls.__module__ == "__main__":
                if name in registry:
                    messages._registry[name] = registry[name]
                else:
                    del messages._registry[name]
