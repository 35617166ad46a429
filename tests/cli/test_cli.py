"""The ghl-async command against FakeHighLevel: each flag, resume after kill -9, Ctrl-C."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import anyio
import pytest

from ghl_async import Client, MessagesPage, RateLimit
from ghl_async.export.files import export_messages
from ghl_async.testing import FakeHighLevel, Faults
from tests.support.cli import by_conversation, cli_process, expected, read_lines, run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

# A budget these tests never reach: they are about the command, not the limiter.
ROOMY = RateLimit(100_000, 1.0)

FAST = {"rate_limit": None}


async def test_export_of_listed_ids_writes_every_message_as_camel_case_json_lines(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=8, messages=(1, 230), seed=31) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        ids = fake.conversation_ids[:5]
        code = await run_cli("export", *ids, "--out", str(out), "--base-url", fake.url)
    assert code == 0
    rows = read_lines(out)
    assert by_conversation(rows) == expected(fake, ids)
    assert {"messageType", "dateAdded", "conversationId", "contentType"} <= set(rows[0])
    err = capsys.readouterr().err
    assert "export finished" in err and "429s" in err
    assert fake.token not in err
    assert (tmp_path / "m.jsonl.checkpoint").exists()


async def test_ids_from_stdin_and_types_filter(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with server(conversations=6, messages=(20, 120), seed=32) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(fake.conversation_ids) + "\n"))
        out = tmp_path / "sms.jsonl"
        code = await run_cli(
            "export",
            "--ids-file",
            "-",
            "--types",
            "TYPE_SMS,TYPE_CALL",
            "--out",
            str(out),
            "--base-url",
            fake.url,
            "--concurrency",
            "3",
        )
    assert code == 0
    rows = read_lines(out)
    assert rows and {r["messageType"] for r in rows} <= {"TYPE_SMS", "TYPE_CALL"}
    want = {
        c: [m["id"] for m in fake.messages(c) if m["messageType"] in ("TYPE_SMS", "TYPE_CALL")]
        for c in fake.conversation_ids
    }
    assert by_conversation(rows) == {c: v for c, v in want.items() if v}


async def test_ids_file_and_a_whole_location(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # export_refusal: --location then takes the search + fan-out path (the fallback),
    # whose output is grouped per conversation; tests/cli/test_cli_location.py covers the
    # location export itself.
    async with server(
        conversations=130, messages=(0, 12), seed=33, rate_limit=ROOMY, export_refusal=404
    ) as fake:
        token_file = tmp_path / "token"
        token_file.write_text(fake.token + "\n")
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("# a comment\n" + "\n".join(fake.conversation_ids[:4]) + "\n")
        monkeypatch.delenv("GHL_TOKEN", raising=False)
        out1 = tmp_path / "a.jsonl"
        assert (
            await run_cli(
                "export",
                "--ids-file",
                str(ids_file),
                "--out",
                str(out1),
                "--token-file",
                str(token_file),
                "--base-url",
                fake.url,
            )
            == 0
        )
        assert by_conversation(read_lines(out1)) == expected(fake, fake.conversation_ids[:4])
        out2 = tmp_path / "b.jsonl"
        assert (
            await run_cli(
                "export",
                "--location",
                fake.location_id,
                "--out",
                str(out2),
                "--token-file",
                str(token_file),
                "--base-url",
                fake.url,
            )
            == 0
        )
    assert by_conversation(read_lines(out2)) == expected(fake, fake.conversation_ids)


async def test_stdout_output(
    server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    async with server(conversations=2, messages=15, seed=34) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        code = await run_cli(
            "export", fake.conversation_ids[0], "--out", "-", "--base-url", fake.url
        )
    assert code == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [
        m["id"] for m in fake.messages(fake.conversation_ids[0])
    ]


async def test_a_bad_token_stops_at_once_with_exit_code_2(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=30) as fake:
        monkeypatch.setenv("GHL_TOKEN", "pit-wrong-secret-value")
        code = await run_cli(
            "export",
            *fake.conversation_ids,
            "--out",
            str(tmp_path / "x.jsonl"),
            "--base-url",
            fake.url,
            "--concurrency",
            "4",
        )
        # Only what was already admitted when the first 401 came back, not every id.
        assert 1 <= fake.stats.requests <= 4
    assert code == 2
    err = capsys.readouterr().err
    assert "token was refused" in err
    assert "pit-wrong-secret-value" not in err


@pytest.mark.parametrize("token", ["pit-one\npit-two", "pit-one pit-two", "pit-\x00x"])
async def test_a_token_with_a_line_break_inside_is_one_line_and_exit_2(
    token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GHL_TOKEN", token.replace("\x00", "\x01"))  # NUL: not in environ
    code = await run_cli("export", "abc", "--out", str(tmp_path / "x.jsonl"))
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line] == [
        "ghl-async: GHL_TOKEN has a line break, a space or a control character inside the "
        "token; check how it was set"
    ]
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "abc"], "no token"),
        (["export", "../etc", "--out", "x"], "not a HighLevel id"),
        (["export", "abc", "--types", "TYPE_NOPE"], "not a message type filter"),
        (["export", "abc", "--out", "-", "--resume"], "--resume needs an output file"),
        (["export", "abc", "--token-file", "/nonexistent/token"], "cannot read the token file"),
    ],
)
async def test_usage_errors_exit_2(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if message != "no token":
        monkeypatch.setenv("GHL_TOKEN", "t")
    else:
        monkeypatch.delenv("GHL_TOKEN", raising=False)
    code = await run_cli(*argv, "--base-url", "http://127.0.0.1:9")
    assert code == 2
    assert message in capsys.readouterr().err


async def test_a_failing_conversation_is_reported_and_the_others_exported(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=4, messages=(5, 60), seed=35) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        ids = [*fake.conversation_ids, "goneConversation"]
        code = await run_cli("export", *ids, "--out", str(out), "--base-url", fake.url)
    assert code == 1
    assert by_conversation(read_lines(out)) == expected(fake, fake.conversation_ids)
    assert (tmp_path / "m.jsonl.failed").read_text() == "goneConversation\n"
    assert "goneConversation" in capsys.readouterr().err


async def test_a_spent_daily_budget_says_when_and_how_to_resume(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=6, messages=(150, 250), daily_limit=3) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        code = await run_cli(
            "export",
            *fake.conversation_ids,
            "--out",
            str(tmp_path / "m.jsonl"),
            "--base-url",
            fake.url,
            "--concurrency",
            "1",
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "daily request budget is spent" in err and "--resume" in err


class _Crash(Exception):
    """Stands for a crash after some pages were written and checkpointed."""


async def test_resume_skips_what_is_done_and_continues_the_rest(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with server(conversations=6, messages=(120, 260), seed=36) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        ids = fake.conversation_ids
        done: list[str] = []

        def crash_after_two_conversations(conversation_id: str, page: MessagesPage) -> None:
            if page.is_last:
                done.append(conversation_id)
            if len(done) == 2:
                raise _Crash

        # The first run, as the command would start it, stops after two conversations.
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(_Crash):
                await export_messages(
                    client,
                    ids,
                    out=str(out),
                    concurrency=1,
                    on_page=crash_after_two_conversations,
                )
        requests_before = {c: fake.stats.by_conversation[c] for c in done}
        argv = ("export", *ids, "--out", str(out), "--resume", "--base-url", fake.url)
        assert await run_cli(*argv) == 0
        # The two finished conversations were not asked for again.
        assert {c: fake.stats.by_conversation[c] for c in done} == requests_before
    assert by_conversation(read_lines(out)) == expected(fake, fake.conversation_ids)
    assert len(read_lines(out)) == fake.total_messages


async def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_cli("demo", "--conversations", "25", "--rate", "40/1s")
    assert code == 0
    err = capsys.readouterr().err
    assert "demo finished" in err
    assert "most requests in any window" in err
    # It ends by mirroring the location into SQLite and answering one SQL question.
    assert "mirrored into SQLite" in err and "GROUP BY" in err


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
async def test_killed_mid_export_then_resumed_gives_every_message_exactly_once(
    tmp_path: Path,
    stop: signal.Signals,
) -> None:
    faults = Faults(latency=0.01)
    async with FakeHighLevel(
        conversations=40, messages=(100, 400), seed=37, faults=faults, rate_limit=ROOMY
    ) as fake:
        out = tmp_path / "m.jsonl"
        argv = (
            "export",
            *fake.conversation_ids,
            "--out",
            str(out),
            "--base-url",
            fake.url,
            "--concurrency",
            "4",
        )
        env = {"GHL_TOKEN": fake.token}
        process = await cli_process(*argv, env=env)
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if out.exists() and out.stat().st_size > 50_000:
                break
        process.send_signal(stop)
        _, err = await process.communicate()
        if stop == signal.SIGINT:
            assert process.returncode == 130
            assert b"--resume" in err
        else:
            assert process.returncode == -signal.SIGKILL
        partial = out.read_bytes()
        assert len(partial) > 0
        resumed = await cli_process(*argv, "--resume", env=env)
        _, err = await resumed.communicate()
        assert resumed.returncode == 0, err.decode()
    rows = read_lines(out)
    assert by_conversation(rows) == expected(fake, fake.conversation_ids)
    assert len(rows) == fake.total_messages


async def test_entry_points_answer(tmp_path: Path) -> None:
    for command in (
        [sys.executable, "-m", "ghl_async", "--version"],
        [str(Path(sys.executable).parent / "ghl-async"), "--version"],
    ):
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        assert process.returncode == 0
        assert out.startswith(b"ghl-async ")


async def test_serve_fake_serves_until_stopped() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ghl_async",
        "serve-fake",
        "--port",
        "0",
        "--conversations",
        "3",
        "--token",
        "tok",
        "--accept-version",
        "v3",
        "--faults",
        "latency=0.001",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode()
    url = line.rsplit(" ", 1)[-1].strip()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{url}/conversations/nope/messages",
                headers={"Authorization": "Bearer tok", "Version": "v3"},
            ) as response:
                assert response.status == 404
    finally:
        process.terminate()
        await process.communicate()


async def test_the_fake_reports_its_stats_over_http(server: ServerFactory) -> None:
    import aiohttp

    async with server(conversations=3, messages=5) as fake:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{fake.url}/_fake/stats") as response:
                stats = await response.json()
    assert stats["conversationIds"] == fake.conversation_ids
    assert stats["totalMessages"] == 15
    assert stats["requests"] == 0


@pytest.mark.parametrize("flag", ["--progress", "--no-progress"])
async def test_progress_bar_on_request_and_quiet_otherwise(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
) -> None:
    async with server(conversations=4, messages=(10, 40), seed=38) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        code = await run_cli(
            "export",
            *fake.conversation_ids,
            "--out",
            str(tmp_path / "m.jsonl"),
            "--base-url",
            fake.url,
            flag,
        )
    assert code == 0
    err = capsys.readouterr().err
    bar = "export: 100%|"
    assert (bar in err) is (flag == "--progress")
    if flag == "--progress":
        assert "4/4" in err and "throttled=0" in err


# -- errors: argv -> exit code and one line on stderr -----------------------------------


def one_line(err: str) -> str:
    """The single ``ghl-async: ...`` line a failing command prints, checked as such."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ghl-async: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["export", "abc", "--token", "s3cret-value"], "argument --token: the token is not taken"),
        (["export", "abc", "--token-fil", "f"], "unrecognized arguments: --token-fil"),
        (["export", "abc", "--out", "-", "--resume"], "--resume needs an output file"),
        (["export", "abc", "--types", "nope"], "'nope' is not a message type filter; valid: "),
        (["export", "abc", "--rate", "100"], "argument --rate: '100' is not a rate"),
        (["export", "abc", "--rate", "100/10"], "with its unit, e.g. 100/10s"),
        (["export", "abc", "--rate", "0/10s"], "argument --rate: '0/10s': max_requests"),
        (["export", "abc", "--concurrency", "0"], "argument --concurrency: must be between 1"),
        (["export", "abc", "--concurrency", "x"], "argument --concurrency: 'x' is not a whole"),
        (["export", "abc", "--base-url", "ftp://h"], "argument --base-url: must be an http(s)"),
        (["export", "--location", "a/b"], "argument --location: location id 'a/b' is not"),
        (["export", "abc", "--resume", "--force"], "argument --force: not allowed with"),
        (
            ["export"],
            "one of the arguments CONVERSATION_ID --ids-file --location --locations-file "
            "is required",
        ),
        (["export", "abc", "--out", "{tmp}"], "cannot write"),
        (["export", "abc", "--out", "{tmp}/no/such.jsonl"], "No such file or directory"),
        (["export", "abc", "--out", "{tmp}/exists.jsonl"], "exists; pass --resume"),
        (["export", "--ids-file", "{tmp}/bad-ids.txt"], "bad-ids.txt line 3: conversation id"),
        (["export", "--ids-file", "{tmp}/none.txt"], "cannot read"),
        (["demo", "--rate", "5"], "argument --rate: '5' is not a rate"),
        (["serve-fake", "--port", "99999"], "argument --port: must be between 0 and 65535"),
        (["serve-fake", "--messages", "9-2"], "argument --messages"),
        (["serve-fake", "--faults", "bogus=1"], "argument --faults: unknown fault 'bogus'"),
        (["serve-fake", "--faults", "reset=x"], "argument --faults: 'reset=x' is not like"),
        (["serve-fake", "--rate", "100"], "argument --rate"),
        (["serve-fake", "--bogus"], "unrecognized arguments: --bogus"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
async def test_usage_errors_are_one_line_naming_the_flag(
    argv: list[str],
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "t")
    (tmp_path / "exists.jsonl").write_text("an earlier export\n")
    (tmp_path / "bad-ids.txt").write_text("good1\n# fine\nnot/an/id\n")
    code = await run_cli(*(arg.replace("{tmp}", str(tmp_path)) for arg in argv))
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert says in line
    assert "s3cret-value" not in line
    assert (tmp_path / "exists.jsonl").read_text() == "an earlier export\n"


async def test_ids_files_take_a_bom_and_comments_anywhere(
    server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(conversations=3, messages=(1, 30), seed=40) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        a, b, _ = fake.conversation_ids
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text(f"\ufeff{a}\n  # indented comment\n{b}   # trailing\n\n{a}\n")
        out = tmp_path / "m.jsonl"
        argv = ("export", "--ids-file", str(ids_file), "--out", str(out), "--base-url", fake.url)
        assert await run_cli(*argv) == 0
    assert by_conversation(read_lines(out)) == expected(fake, [a, b])


async def test_types_are_case_insensitive_and_the_prefix_optional(
    server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(conversations=3, messages=(40, 80), seed=41) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        ids = fake.conversation_ids
        argv = ("export", *ids, "--types", "sms, Type_Call", "--out", str(out))
        assert await run_cli(*argv, "--base-url", fake.url) == 0
    want = {
        c: [m["id"] for m in fake.messages(c) if m["messageType"] in ("TYPE_SMS", "TYPE_CALL")]
        for c in ids
    }
    assert by_conversation(read_lines(out)) == {c: v for c, v in want.items() if v}


@pytest.mark.parametrize(
    ("token", "location", "says"),
    [
        ("wrong-token", None, "the token was refused"),
        (None, "unknownLocation", "cannot list location unknownLocation: The token does not"),
    ],
)
async def test_a_location_export_refused_is_one_line_and_exit_2(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str | None,
    location: str | None,
    says: str,
) -> None:
    async with server(conversations=3) as fake:
        monkeypatch.setenv("GHL_TOKEN", token or fake.token)
        argv = ("export", "--location", location or fake.location_id)
        code = await run_cli(*argv, "--out", str(tmp_path / "m.jsonl"), "--base-url", fake.url)
    assert code == 2
    assert says in one_line(capsys.readouterr().err)


async def test_resume_with_other_options_is_refused_in_one_line(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=3, messages=(5, 20), seed=42) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        base = ("export", *fake.conversation_ids, "--out", str(out), "--base-url", fake.url)
        assert await run_cli(*base, "--types", "sms") == 0
        before = out.read_bytes()
        capsys.readouterr()
        assert await run_cli(*base, "--resume") == 2
        line = one_line(capsys.readouterr().err)
        assert "it was started with --types TYPE_SMS" in line and "--force" in line
        assert await run_cli(*base[:2], "--out", str(out), "--resume", "--types", "SMS") == 2
        assert "another list of conversation ids" in one_line(capsys.readouterr().err)
        assert out.read_bytes() == before
        # The same command resumes (nothing left to do) and --force starts over.
        assert await run_cli(*base, "--types", "sms", "--resume") == 0
        assert out.read_bytes() == before
        assert await run_cli(*base, "--force") == 0
    assert by_conversation(read_lines(out)) == expected(fake, fake.conversation_ids)


async def test_a_second_export_to_the_same_output_exits_2_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeHighLevel(
        conversations=20, messages=(100, 300), seed=43, faults=Faults(latency=0.02)
    ) as fake:
        out = tmp_path / "m.jsonl"
        argv = ("export", *fake.conversation_ids, "--out", str(out), "--base-url", fake.url)
        first = await cli_process(*argv, "--concurrency", "2", env={"GHL_TOKEN": fake.token})
        try:
            for _ in range(1000):
                await asyncio.sleep(0.01)
                if out.exists() and out.stat().st_size > 0:
                    break
            monkeypatch.setenv("GHL_TOKEN", fake.token)
            for flag in ("--force", "--resume"):
                assert await run_cli(*argv, flag) == 2
                assert "another export is writing" in one_line(capsys.readouterr().err)
        finally:
            _, err = await first.communicate()
        assert first.returncode == 0, err.decode()
    assert by_conversation(read_lines(out)) == expected(fake, fake.conversation_ids)


async def test_a_full_disk_stops_in_one_line_and_resume_completes_exactly_once(
    tmp_path: Path,
) -> None:
    async with FakeHighLevel(conversations=12, messages=(100, 300), seed=44) as fake:
        out = tmp_path / "m.jsonl"
        argv = ("export", *fake.conversation_ids, "--out", str(out), "--base-url", fake.url)
        env = {"GHL_TOKEN": fake.token}
        # The file-size limit stands for a disk that fills up part way (EFBIG, like ENOSPC).
        limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)); "
        full = await cli_process(*argv, env=env, setup=limit)
        _, err = await full.communicate()
        assert full.returncode == 3
        line = one_line(err.decode())
        assert f"cannot write {out}: File too large" in line and "--resume" in line
        assert 0 < out.stat().st_size <= 60000
        resumed = await cli_process(*argv, "--resume", env=env)
        _, err = await resumed.communicate()
        assert resumed.returncode == 0, err.decode()
    rows = read_lines(out)
    assert by_conversation(rows) == expected(fake, fake.conversation_ids)
    assert len(rows) == fake.total_messages


async def test_a_full_device_is_one_line_and_exit_3(
    server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not Path("/dev/full").exists():  # noqa: ASYNC240 - a stat before anything runs
        pytest.skip("no /dev/full here")
    async with server(conversations=2, messages=20) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("export", *fake.conversation_ids, "--out", "/dev/full", "--base-url", fake.url)
        assert await run_cli(*argv) == 3
    assert "cannot write /dev/full: No space left on device" in one_line(capsys.readouterr().err)


async def test_a_closed_pipe_is_one_line_and_exit_141(tmp_path: Path) -> None:
    async with FakeHighLevel(conversations=30, messages=(100, 200), seed=45) as fake:
        argv = ("export", *fake.conversation_ids, "--out", "-", "--base-url", fake.url)
        read_end, write_end = os.pipe()
        # In tmp_path: with --out -, what was not delivered is listed in ./messages.failed.
        process = await cli_process(
            *argv, env={"GHL_TOKEN": fake.token}, stdout=write_end, cwd=tmp_path
        )
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:  # what `| head -1` does, then it exits
            first = await anyio.to_thread.run_sync(reader.readline)
        _, err = await process.communicate()
    assert json.loads(first)["conversationId"] == fake.conversation_ids[0]
    assert process.returncode == 141
    assert "the reader of the output went away" in one_line(err.decode())


async def test_an_output_without_permission_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    command = [sys.executable, "-m", "ghl_async"]
    if os.geteuid() == 0:
        # Root writes anywhere: run the command as root without the capabilities that
        # override file permissions. Not as another user: that user may be unable to read
        # the checkout and its venv (a clone under a 0700 temp dir), and the test would
        # fail on the import instead of the write.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    process = await asyncio.create_subprocess_exec(
        *command,
        "export",
        "abc",
        "--out",
        str(folder / "m.jsonl"),
        env={**os.environ, "GHL_TOKEN": "t"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2, err.decode()
    assert "cannot write" in one_line(err.decode()) and "Permission denied" in err.decode()


async def test_serve_fake_prints_its_location_and_a_busy_port_is_one_line() -> None:
    first = await cli_process("serve-fake", "--port", "0", "--token", "tok", env={})
    assert first.stdout is not None
    try:
        url = (await first.stdout.readline()).decode().rsplit(" ", 1)[-1].strip()
        assert (await first.stdout.readline()).decode() == "token: tok\n"
        assert (await first.stdout.readline()).decode() == "location: ve9EPM428h8vShlRW1KT\n"
        port = url.rsplit(":", 1)[-1]
        second = await cli_process("serve-fake", "--port", port, env={})
        _, err = await second.communicate()
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in one_line(err.decode())
    finally:
        first.terminate()
        await first.communicate()


async def test_every_flag_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import _SubParsersAction

    from ghl_async.cli.main import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, _SubParsersAction)]
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


async def test_without_tqdm_progress_is_a_plain_line(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as after `pip install ghl-async`
    async with server(conversations=4, messages=(10, 40), seed=46) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        ids = [*fake.conversation_ids, "goneConversation"]
        code = await run_cli(
            "export",
            *ids,
            "--out",
            str(tmp_path / "m.jsonl"),
            "--base-url",
            fake.url,
            "--progress",
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "ModuleNotFoundError" not in err and "Traceback" not in err
    assert "pip install 'ghl-async[cli]'" in err
    # Conversations settled, failed ones included: it ends at the total.
    assert "export: 5/5 conversations" in err


async def test_the_bar_counts_conversations_settled_also_after_resume_and_failures(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=4, messages=(150, 250), seed=47) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("export", *fake.conversation_ids, "gone", "--out", str(tmp_path / "m.jsonl"))
        assert await run_cli(*argv, "--base-url", fake.url) == 1
        capsys.readouterr()
        assert await run_cli(*argv, "--base-url", fake.url, "--resume", "--progress") == 1
    err = capsys.readouterr().err
    assert "5/5" in err and "6/5" not in err
    assert "(+4 already done)" in err
