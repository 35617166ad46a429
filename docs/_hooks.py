"""mkdocs hook and Griffe extension for the docs site.

- ``on_files`` (mkdocs hook): publish the benchmark charts, kept in benchmarks/charts/,
  as charts/.
- ``on_post_page`` (mkdocs hook): each page's HTML is checked (:func:`page_problems`) for
  a reStructuredText role left as text (``:class:`X```) and a link to the README's
  anchors or to the site's own pages by absolute URL (dead offline): each is a warning,
  so ``mkdocs build --strict`` (``make docs``) fails.
- ``RstToMarkdown`` (Griffe extension, named in mkdocs.yml): the code's docstrings are
  written with two reStructuredText habits that Markdown shows literally, ``text::``
  before an indented example and roles such as ``:class:`~ghl_async.Client```. Each
  docstring is rewritten before mkdocstrings renders it: the example becomes a fenced,
  highlighted block, a role becomes a cross-reference. The role's target is resolved
  where the docstring stands (``RetryPolicy`` in ``ghl_async.client`` is
  ``ghl_async.retry.RetryPolicy``, ``fan_out`` in ``Client`` its method) and handed to
  mkdocs-autorefs as an optional reference: a link to the object's entry wherever the
  reference pages render it, or plain code when they do not (a private helper).
  Plain Markdown passes through unchanged. A class's private bases are not shown.
"""

from __future__ import annotations

import ast
import html
import logging
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

CHARTS = Path(__file__).resolve().parent.parent / "benchmarks" / "charts"
#: The site's own address: a link to it from the site is a link that needs the network.
SITE_URL = "https://ghl-async.github.io/ghl-async/"

# A "mkdocs." logger: its warnings fail a --strict build.
log = logging.getLogger("mkdocs.plugins.ghl_async_docs")

# In the HTML a role's backticks may have become <code>: ":class:Client" is left over too.
_ROLES = "class|func|meth|attr|data|exc|mod|obj|const|ref"
_LEFTOVER_ROLE = re.compile(rf":(?:py:)?(?:{_ROLES}):`?[\w~.]")
_HREF = re.compile(r"<a\s[^>]*?href=\"([^\"]*)\"")
_TAG = re.compile(r"<[^>]+>")
_CODE_BLOCK = re.compile(r"<pre\b.*?</pre>", re.DOTALL)


def on_files(files: Files, config: Any) -> Files:
    """Add each chart, so pages link ``charts/NAME.png`` and ``--strict`` checks it."""
    for chart in sorted(CHARTS.glob("*.png")):
        files.append(File.generated(config, f"charts/{chart.name}", abs_src_path=str(chart)))
    return files


def page_problems(html_text: str) -> list[str]:
    """What a rendered page must not hold: reST roles as text, links that leave the site.

    A role inside a code block is an example, not a leftover: blocks are not searched.
    """
    problems: list[str] = []
    text = html.unescape(_TAG.sub("", _CODE_BLOCK.sub("", html_text)))
    for found in _LEFTOVER_ROLE.finditer(text):
        context = text[found.start() : found.start() + 60].splitlines()[0]
        problems.append(f"a reStructuredText role shows as text: {context!r}")
    for href in _HREF.findall(html_text):
        if "README" in href:
            problems.append(f"a link to the README, not to the site's page: {href}")
        elif href.startswith(SITE_URL):
            problems.append(f"a link to the site by its address (dead offline): {href}")
    return problems


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Warn (a failure under --strict) for each of :func:`page_problems` on ``page``."""
    for problem in page_problems(output):
        log.warning("%s: %s", page.file.src_uri, problem)
    return output


_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):`(~?)([^`]+)`")
_TITLED = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>")
# A paragraph ending in "Example::" would read as a Google "Example:" section title.
_SECTION_WORDS = frozenset({"Example", "Examples"})


#: Resolves a role's target to the identifier of the object it names, or ``None``.
Resolver = Callable[[str], "str | None"]


def _role(match: re.Match[str], resolve: Resolver | None) -> str:
    short, target = match.group(1), match.group(2)
    if titled := _TITLED.fullmatch(target):
        title, target = titled["title"], titled["target"]
    else:
        title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        if match.group(0).startswith((":func:", ":meth:", ":py:func:", ":py:meth:")):
            title += "()"
    identifier = resolve(target.lstrip("~")) if resolve is not None else None
    if identifier is None:
        return f"`{title}`"
    # An optional autoref: a link where the object is rendered, else plain code.
    code = f"<code>{html.escape(title)}</code>"
    return f'<autoref identifier="{identifier}" optional>{code}</autoref>'


def resolver(obj: griffe.Object) -> Resolver:
    """Resolve a role's target as Python would read the name where ``obj`` is written."""

    def resolve(target: str) -> str | None:
        target = target.lstrip(".")
        if target.startswith("ghl_async."):
            return target
        head, _, rest = target.partition(".")
        try:
            base = obj.resolve(head)
        except (griffe.NameResolutionError, KeyError, AttributeError):
            return None
        return f"{base}.{rest}" if rest else base

    return resolve


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


def rst_to_markdown(text: str, resolve: Resolver | None = None) -> str:
    """A docstring's ``::`` literal blocks as fenced code, its roles as cross-references.

    Without ``resolve`` (or where it finds nothing), a role becomes a code span.
    """
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
    return _ROLE.sub(lambda match: _role(match, resolve), "\n".join(out).rstrip("\n"))


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring's reStructuredText habits as Markdown (see the module)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring once the tree is built, before it is parsed.

        A class's private bases (``_Wire``, the shared options of the wire structs) are
        machinery, not API: they are left out of its "Bases:" line.
        """
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value, resolver(obj))
        if isinstance(obj, griffe.Class):
            obj.bases = [base for base in obj.bases if not _private(str(base))]


def _private(name: str) -> bool:
    """A dotted name with a part that starts with ``_`` (``_Wire``, ``m._Base``)."""
    return any(part.startswith("_") for part in name.split("."))
