"""sink_for: which sink a --to URL names, checked before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghl_async.export.postgres import PostgresSink
from ghl_async.export.sqlite import SQLiteSink
from ghl_async.export.targets import describe, sink_for


def test_sqlite_urls_take_sqlalchemys_slashes_and_touch_nothing(tmp_path: Path) -> None:
    relative = sink_for("sqlite:///mirror/messages.db")
    absolute = sink_for(f"sqlite:///{tmp_path}/messages.db")  # four slashes in all
    assert isinstance(relative, SQLiteSink) and isinstance(absolute, SQLiteSink)
    assert not (tmp_path / "messages.db").exists()  # opened only by `async with`


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1/db", "postgres://u@h:5432/db"])
def test_postgres_urls_name_the_postgres_sink(url: str) -> None:
    assert isinstance(sink_for(url), PostgresSink)


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("mysql://u:hunter2@h/db", ValueError, "sqlite:///path.db or postgresql://"),
        ("sqlite:///", ValueError, "names no database file"),
        ("sqlite:///folder/", ValueError, "names no database file"),
        ("messages.db", ValueError, "is not a sink URL"),
        (b"sqlite:///x.db", TypeError, "is a str"),
    ],
)
def test_a_url_that_names_no_sink_is_one_clear_error(
    url: object, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says) as caught:
        sink_for(url)  # type: ignore[arg-type]
    assert "hunter2" not in str(caught.value)


def test_a_password_is_never_printed() -> None:
    assert "s3cret" not in describe("postgresql://app:s3cret@db.internal:5432/mirror")
    assert "***" in describe("postgresql://app:s3cret@db.internal:5432/mirror")
    assert "s3cret" not in repr(sink_for("postgresql://app:s3cret@127.0.0.1/mirror"))
