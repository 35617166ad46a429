"""CONTRIBUTING.md's layout map lists every module under ghl_async/ with its docstring."""

from __future__ import annotations

import difflib

from tests.support import layout


def test_the_layout_map_lists_every_module_with_its_docstring() -> None:
    text = layout.CONTRIBUTING.read_text(encoding="utf-8")
    found = layout.current(text)
    assert found is not None, f"CONTRIBUTING.md has lost its layout map: run `{layout.COMMAND}`"
    expected = layout.render()
    if found != expected:
        diff = "\n".join(
            difflib.unified_diff(
                found.splitlines(),
                expected.splitlines(),
                "CONTRIBUTING.md",
                "the code",
                lineterm="",
            )
        )
        raise AssertionError(
            "CONTRIBUTING.md's layout map does not match the modules under ghl_async/ "
            f"(added, moved or redescribed?). Regenerate it with `{layout.COMMAND}`.\n{diff}"
        )


def test_the_map_covers_each_module_once_in_layer_order() -> None:
    paths = [path for path, _ in layout.modules()]
    assert len(paths) == len(set(paths)) == len(list(layout.PACKAGE.rglob("*.py")))
    assert paths[0] == "__init__.py"
    order = [paths.index(name) for name in ("errors.py", "client.py", "cli/__init__.py")]
    assert order == sorted(order)
    assert paths.index("ratelimit/__init__.py") < paths.index("_http/engine.py")


def test_summary_is_the_first_paragraph_as_markdown() -> None:
    docstring = (
        "The client's machinery under :class:`~ghl_async.Client`: the seam\n"
        "and ``a | b``.\n\nMore, not shown."
    )
    expected = "The client's machinery under `Client`: the seam and `a \\| b`."
    assert layout.summary(docstring) == expected
    assert layout.summary(None) == "**no docstring**"
