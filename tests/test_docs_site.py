"""The docs site as a reader opens it: built for real (mkdocs --strict), then read as HTML.

The API reference has a page per public module with the client first, docstrings'
roles as links, struct fields listed, no private base shown; no page links to the README
or to the site by its address (both dead offline); and a page that does fails the build.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed"
)


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", folder)
    assert result.returncode == 0, result.stderr
    return folder


def text_of(page: Path) -> str:
    return unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def hooks() -> object:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PUBLIC_MODULES = [
    "ghl_async",
    "ghl_async.records",
    "ghl_async.errors",
    "ghl_async.ratelimit",
    "ghl_async.ratelimit.redis",
    "ghl_async.oauth",
    "ghl_async.testing",
    "ghl_async.export",
    "ghl_async.export.jobs",
]


def test_every_public_module_has_a_reference_page(site: Path) -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for module in PUBLIC_MODULES:
        assert f"      - {module}: reference/" in nav, module
        page = module.removeprefix("ghl_async.").replace(".", "-") if "." in module else module
        assert (site / "reference" / page / "index.html").exists(), module


def test_the_package_page_opens_with_the_client(site: Path) -> None:
    html = (site / "reference" / "ghl_async" / "index.html").read_text(encoding="utf-8")
    headings = re.findall(r'id="(ghl_async\.[A-Za-z_]+)" class="doc doc-heading"', html)
    assert headings[0] == "ghl_async.Client", headings[:3]
    assert headings.index("ghl_async.Client") < headings.index("ghl_async.RetryPolicy")
    text = text_of(site / "reference" / "ghl_async" / "index.html")
    assert "::" not in text.split("The client", 1)[0]  # no literal reST block marker


def test_docstring_roles_are_links_to_the_reference(site: Path) -> None:
    html = (site / "reference" / "ghl_async" / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'<a class="autorefs autorefs-internal"[^>]*href="([^"]+)"', html)
    assert len(links) > 50
    # Client's docstring names RetryPolicy as a role: a link to its entry.
    assert any(link.endswith("#ghl_async.RetryPolicy") for link in links), links[:20]


def test_struct_fields_are_documented_and_private_bases_hidden(site: Path) -> None:
    text = text_of(site / "reference" / "ghl_async" / "index.html")
    message = text.split("One message of a conversation.", 1)[1]
    message = message.split("A message's meta object.", 1)[0]
    for field in ("conversation_id", "date_added", "message_type", "body", "date_updated"):
        assert field in message, field
    for page in (site / "reference").glob("*/index.html"):
        assert not re.search(r"Bases:\s*_", text_of(page)), page


def test_the_columns_of_to_records_are_listed(site: Path) -> None:
    text = text_of(site / "reference" / "records" / "index.html")
    assert "COLUMNS" in text and "email_message_ids" in text and "to_records" in text


def test_no_page_links_to_the_readme_or_to_the_site_by_address(site: Path) -> None:
    module = hooks()
    for page in site.rglob("*.html"):
        problems = module.page_problems(page.read_text(encoding="utf-8"))  # type: ignore[attr-defined]
        assert problems == [], (page, problems)


def test_the_content_column_is_widened(site: Path) -> None:
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "stylesheets/extra.css" in html
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert "max-width: none" in css and "pre-wrap" in css


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("See :class:`Client` for more.", "a reStructuredText role shows as text"),
        ("See [the flow](https://github.com/o/r/blob/main/README.md#use-it).", "README"),
        ("See [the CLI](https://ghl-async.github.io/ghl-async/cli/).", "dead offline"),
    ],
)
def test_a_page_with_a_leftover_role_or_an_outside_link_fails_the_build(
    content: str, says: str, tmp_path: Path
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# A page\n\n{content}\n", encoding="utf-8")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        textwrap.dedent(
            f"""\
            site_name: check
            docs_dir: {tmp_path / "docs"}
            hooks:
              - {ROOT / "docs" / "_hooks.py"}
            """
        ),
        encoding="utf-8",
    )
    result = build(config, tmp_path / "site")
    assert result.returncode != 0
    assert says in result.stderr, result.stderr


def test_roles_become_cross_references_or_code() -> None:
    module = hooks()
    convert = module.rst_to_markdown  # type: ignore[attr-defined]
    resolve = {"RetryPolicy": "ghl_async.retry.RetryPolicy"}.get
    assert convert("Use :class:`RetryPolicy`.", resolve) == (
        'Use <autoref identifier="ghl_async.retry.RetryPolicy" optional>'
        "<code>RetryPolicy</code></autoref>."
    )
    assert convert("Use :meth:`~a.b.fan_out`.", None) == "Use `fan_out()`."
    assert convert(":func:`the helper <x._y>`", lambda _: None) == "`the helper`"
