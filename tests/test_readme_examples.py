"""Every ```python block in README.md and docs/ runs as pasted, against FakeHighLevel.

A block runs with the environment a user would set: ``GHL_TOKEN``, ``GHL_BASE_URL`` and
``GHL_LOCATION_ID`` point at a started :class:`FakeHighLevel`, and ``REDIS_URL`` at a
throwaway redis-server when the block mentions it. A block with top-level ``await`` runs
in the test's event loop, as a notebook cell does; any other block runs in a worker thread,
as a script does (so ``asyncio.run`` and sync test clients work in it).

Hidden HTML comments next to a block, invisible wherever the markdown is rendered:

- ``<!-- example-setup`` ... ``-->`` before a block: Python that stands for the reader's
  own code (a token store, a ``store()`` function); runs first, in the same namespace.
- ``<!-- example-check`` ... ``-->`` after a block: Python that drives what the block
  defined and asserts on the result; ``fake_server`` is the started FakeHighLevel.
- ``<!-- example: skip REASON -->`` before a block: not run, and the reason is shown.

A block that mentions ``GHL_AGENCY_TOKEN`` runs against a started :class:`FakeAgency`
as well: ``GHL_AGENCY_TOKEN``, ``GHL_COMPANY_ID`` and ``GHL_APP_ID`` are its agency's, and
``GHL_BASE_URL`` is the agency's URL; ``fake_agency`` is the started FakeAgency.

A block importing a third-party framework that is not installed is skipped, naming it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from ghl_async.testing import FakeAgency, FakeHighLevel

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Frameworks an example may use that ghl_async itself does not need.
OPTIONAL = frozenset({"fastapi", "httpx", "pandas", "polars", "arq", "tqdm", "uvicorn"})

_FENCE = re.compile(r"^(\s*)```python\s*$")
_SKIP = re.compile(r"^\s*<!-- example: skip (?P<reason>.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # 1-based line of the first line of code
    code: str
    setup: str = ""
    setup_line: int = 0
    check: str = ""
    check_line: int = 0
    skip: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _comment(lines: list[str], start: int) -> tuple[str, int]:
    """The body of the HTML comment opening at ``lines[start]``, and the line after it."""
    end = start + 1
    while end < len(lines) and lines[end].strip() != "-->":
        end += 1
    if end == len(lines):
        raise ValueError(f"unclosed {lines[start].strip()!r} at line {start + 1}")
    return "\n".join(lines[start + 1 : end]) + "\n", end + 1


def collect(path: Path) -> list[Example]:
    """The python blocks of one markdown file, each with its setup, check or skip."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    setup, setup_line, skip = "", 0, None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "<!-- example-setup":
            setup, i = _comment(lines, i)
            setup_line = i - setup.count("\n")
            continue
        if match := _SKIP.match(line):
            skip = match["reason"]
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            i += 1
            continue
        indent = len(fence[1])
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(text[indent:] for text in lines[i + 1 : end]) + "\n"
        first_line = i + 2
        i = end + 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        check, check_line = "", 0
        if i < len(lines) and lines[i].strip() == "<!-- example-check":
            check_line = i + 2
            check, i = _comment(lines, i)
        examples.append(
            Example(path, first_line, code, setup, setup_line, check, check_line, skip)
        )
        setup, setup_line, skip = "", 0, None
    if setup or skip:
        raise ValueError(f"{path}: an example-setup or skip marker with no block after it")
    return examples


EXAMPLES = [example for path in SOURCES for example in collect(path)]


def missing_framework(example: Example) -> str | None:
    """The first optional framework the example imports that is not installed."""
    for source in (example.setup, example.code, example.check):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in OPTIONAL and importlib.util.find_spec(top) is None:
                    return top
    return None


async def run(source: str, first_line: int, path: Path, namespace: dict[str, Any]) -> None:
    """Run one piece of an example; tracebacks point at its line in the markdown."""
    if not source:
        return
    padded = "\n" * (first_line - 1) + source
    code = compile(
        padded, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    if code.co_flags & inspect.CO_COROUTINE:
        await eval(code, namespace)
    else:
        await anyio.to_thread.run_sync(exec, code, namespace)


@pytest.mark.anyio
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
async def test_example_runs_as_pasted(
    example: Example,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if example.skip is not None:
        pytest.skip(f"{example.name}: {example.skip}")
    if (framework := missing_framework(example)) is not None:
        pytest.skip(f"{example.name} needs {framework}: pip install {framework}")
    if "REDIS_URL" in example.code + example.check:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)
    monkeypatch.chdir(tmp_path)  # files an example writes land in a throwaway folder
    async with FakeHighLevel(conversations=6, seed=15, messages=(0, 130)) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        monkeypatch.setenv("GHL_BASE_URL", fake.url)
        monkeypatch.setenv("GHL_LOCATION_ID", fake.location_id)
        namespace: dict[str, Any] = {"__name__": "__example__", "fake_server": fake}
        if "GHL_AGENCY_TOKEN" in example.setup + example.code + example.check:
            async with FakeAgency(locations=4, conversations=3, seed=16) as agency:
                monkeypatch.setenv("GHL_AGENCY_TOKEN", agency.agency_token)
                monkeypatch.setenv("GHL_COMPANY_ID", agency.company_id)
                monkeypatch.setenv("GHL_APP_ID", agency.app_id)
                monkeypatch.setenv("GHL_BASE_URL", agency.url)
                namespace["fake_agency"] = agency
                await run_example(example, namespace)
        else:
            await run_example(example, namespace)


async def run_example(example: Example, namespace: dict[str, Any]) -> None:
    """An example's setup, its block, then its check, in one namespace."""
    await run(example.setup, example.setup_line, example.path, namespace)
    await run(example.code, example.line, example.path, namespace)
    await run(example.check, example.check_line, example.path, namespace)


def test_the_readme_has_its_examples() -> None:
    """The collector finds the README's blocks, so an empty run cannot pass for green."""
    in_readme = [e for e in EXAMPLES if e.path.name == "README.md"]
    assert len(in_readme) >= 4
    assert all(e.check for e in in_readme)


def _defines_without_running(code: str) -> bool:
    return ("async def" in code and "asyncio.run(" not in code) or "app =" in code


def test_every_docs_page_has_its_examples_checked() -> None:
    """A block that defines what it does not run (a function, an app) has a check."""
    unchecked = [e.name for e in EXAMPLES if not e.check and _defines_without_running(e.code)]
    assert unchecked == []
    assert len({e.path for e in EXAMPLES}) >= 10


def test_every_page_stands_alone() -> None:
    """No page includes the README (or any file) through snippets: each reads on its own."""
    pages = [p for p in SOURCES if p.name != "README.md"]
    including = [str(p.relative_to(ROOT)) for p in pages if "--8<--" in p.read_text("utf-8")]
    assert including == []
    assert "pymdownx.snippets" not in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_collect_reads_setup_check_and_skip(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n"
        "<!-- example-setup\n"
        "x = 1\n"
        "-->\n"
        "```python\n"
        "y = x + 1\n"
        "```\n"
        "\n"
        "<!-- example-check\n"
        "assert y == 2\n"
        "-->\n"
        "<!-- example: skip needs a real account -->\n"
        "  ```python\n"
        "  z = 3\n"
        "  ```\n"
        "```sh\n"
        "echo not python\n"
        "```\n",
        encoding="utf-8",
    )
    first, second = collect(page)
    assert (first.setup, first.code, first.check) == ("x = 1\n", "y = x + 1\n", "assert y == 2\n")
    assert (first.setup_line, first.line, first.check_line) == (3, 6, 10)
    assert first.skip is None
    assert (second.code, second.skip, second.setup, second.check) == (
        "z = 3\n",
        "needs a real account",
        "",
        "",
    )


def test_collect_refuses_a_dangling_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- example: skip nothing follows -->\ntext\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no block after it"):
        collect(page)


def test_readme_links_work_off_the_repository() -> None:
    """On PyPI a relative link or image is broken: every target is an absolute URL."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<(https?://[^>]+)>", text)
    assert len(targets) >= 6
    assert [t for t in targets if not t.startswith("https://")] == []
    assert any(t.endswith("benchmarks/charts/throughput_cpu.png") for t in targets)


def test_the_metadata_names_the_project_urls() -> None:
    urls = dict(
        entry.split(", ", 1)
        for entry in importlib.metadata.metadata("ghl-async").get_all("Project-URL") or []
    )
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
