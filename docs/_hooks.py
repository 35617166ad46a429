"""mkdocs hook and Griffe extension for the docs site.

- ``on_files`` (mkdocs hook): publish the benchmark charts, kept in benchmarks/charts/,
  as charts/.
- ``RstToMarkdown`` (Griffe extension, named in mkdocs.yml): the code's docstrings are
  written with two reStructuredText habits that Markdown shows literally, ``text::``
  before an indented example and roles such as ``:class:`~ghl_async.Client```. Each
  docstring is rewritten before mkdocstrings renders it: the example becomes a fenced,
  highlighted block, a role becomes a code span. Plain Markdown passes through unchanged.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

CHARTS = Path(__file__).resolve().parent.parent / "benchmarks" / "charts"


def on_files(files: Files, config: Any) -> Files:
    """Add each chart, so pages link ``charts/NAME.png`` and ``--strict`` checks it."""
    for chart in sorted(CHARTS.glob("*.png")):
        files.append(File.generated(config, f"charts/{chart.name}", abs_src_path=str(chart)))
    return files


_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):`(~?)([^`]+)`")
_TITLED = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>")
# A paragraph ending in "Example::" would read as a Google "Example:" section title.
_SECTION_WORDS = frozenset({"Example", "Examples"})


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    if titled := _TITLED.fullmatch(target):
        return f"`{titled['title']}`"
    name = target.rsplit(".", 1)[-1] if short else target
    if match.group(0).startswith((":func:", ":meth:", ":py:func:", ":py:meth:")):
        name += "()"
    return f"`{name}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _language(code: str) -> str:
    """``python`` when the block parses as Python (top-level ``await`` allowed), else ``text``."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    for source in (code, "async def _():\n" + textwrap.indent(code, "    ")):
        try:
            compile(source, "<docstring>", "exec", flags=flags, dont_inherit=True)
        except SyntaxError:
            continue
        return "python"
    return "text"


def rst_to_markdown(text: str) -> str:
    """A docstring's ``::`` literal blocks as fenced code, its roles as code spans."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        indent = _indent(line)
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        if start == len(lines) or _indent(lines[start]) <= indent:
            out.append(line)  # not followed by an indented block: not a literal block
            i += 1
            continue
        end = start
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        block = lines[start:end]
        while block and not block[-1].strip():
            block.pop()
        code = textwrap.dedent("\n".join(block))
        lead = line.rstrip()[:-2]
        if lead.strip() in _SECTION_WORDS:
            out.append(" " * indent + "For example:")
        elif lead.strip():
            out.append(lead.rstrip() if lead[-1].isspace() else lead + ":")
        pad = " " * indent
        if out and out[-1].strip():
            out.append("")
        out.append(f"{pad}```{_language(code)}")
        out.extend(f"{pad}{text}" if text else "" for text in code.splitlines())
        out.append(f"{pad}```")
        out.append("")
        i = end
    return _ROLE.sub(_role, "\n".join(out).rstrip("\n"))


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring's reStructuredText habits as Markdown (see the module)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring once the tree is built, before it is parsed."""
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
