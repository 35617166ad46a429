"""A throwaway PostgreSQL server on a free loopback port, started and stopped by the tests.

``PostgresServer`` runs ``initdb`` into a temporary directory and ``postgres`` on it as a
child process (no ``pg_ctl`` daemon to lose track of): trust authentication over TCP on
127.0.0.1 only, the Unix socket inside the directory. ``fsync`` and
``synchronous_commit`` stay on, so a commit the sink saw succeed survives
:meth:`PostgresServer.stop` with ``immediate=True`` (a crash: no shutdown checkpoint, the
next start replays the WAL). Only ``initdb --no-sync`` is traded for speed: it skips
flushing the fresh cluster's files, which matters for a machine crash during the tests,
not for a server killed and restarted.

``initdb`` and ``postgres`` refuse to run as root: under root they run as the
``postgres`` system user (Debian's ``postgresql`` package creates it), in a directory
under the system's temp dir that this user owns.

Fixtures: ``postgres_server`` (one server for the session) and ``postgres_dsn`` (a fresh
database on it for each test, dropped after).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_TOOLS = ("initdb", "postgres", "psql")
_MISSING = (
    "PostgreSQL's server binaries (initdb, postgres) are not installed: run 'make test', "
    "which installs Debian's postgresql package"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bindir() -> Path:
    """The folder holding initdb, postgres and psql: pg_config's, Debian's, else PATH's."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian: /usr/lib/postgresql/NN/bin, the newest major first.
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates.extend(
        Path(p) for p in sorted(debian, key=lambda p: _major(Path(p).parent.name), reverse=True)
    )
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in _TOOLS):
            return folder
    raise RuntimeError(_MISSING)


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, its server a child process.

    ``start()`` (initdb on the first call), ``stop(immediate=...)``, ``start()`` again on
    the same port and data; ``close()`` stops it and removes the directory. Also a
    context manager.
    """

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self._as_user: dict[str, Any] = {}
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root, and there is no 'postgres' user to run the server as: "
                    "run 'make test', which installs Debian's postgresql package"
                ) from None
            self._as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        # Not under pytest's tmp_path: its parents are root's (mode 700) when root runs.
        self.directory = Path(tempfile.mkdtemp(prefix="ghl-pg-"))
        if owner is not None:
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.data = self.directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._initialized = False

    @property
    def dsn(self) -> str:
        """The DSN of the ``postgres`` database (user ``postgres``, no password)."""
        return self.database_dsn("postgres")

    def database_dsn(self, database: str) -> str:
        """The DSN of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            list(args),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self._as_user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr.strip()}")

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        # TCP from 127.0.0.1 only: no Unix-socket or other-host entries at all.
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        self._initialized = True

    def start(self) -> None:
        """Start the server (initdb first on the first call); wait until it is ready."""
        if self.running:
            return
        if not self._initialized:
            self._initdb()
        for attempt in range(3):
            if self._spawn():
                return
            if attempt < 2:  # the port was taken meanwhile: take another
                self.port = free_port()
        raise RuntimeError(f"postgres did not start: {self._log_tail()}")

    def _spawn(self) -> bool:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "60",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
            "logging_collector": "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                args,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal is the tests' to handle
                **self._as_user,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self._ready():
                return True
            time.sleep(0.02)
        self.stop(immediate=True)
        raise RuntimeError(f"postgres did not get ready in 60 s: {self._log_tail()}")

    def _ready(self) -> bool:
        # pg_ctl's test: postmaster.pid's eighth line reads "ready" once it accepts work.
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _log_tail(self) -> str:
        try:
            text = (self.directory / "postgres.log").read_text(errors="replace")
        except OSError:
            return "no log"
        return " | ".join(text.strip().splitlines()[-5:])

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server: a fast shutdown, or ``immediate`` (a crash: WAL replay at start)."""
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if immediate:
            # SIGQUIT leaves the backends to quit on their own: wait for the pid file.
            deadline = time.monotonic() + 10
            while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql over TCP; return what it printed (unaligned, no headers)."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.database_dsn(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.database_dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop the database of ``dsn`` (made by :meth:`create_database`), even if in use."""
        name = dsn.rsplit("/", 1)[1]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (initdb once: about a second)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test, on a running server (a test may have stopped it)."""
    postgres_server.start()
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.start()
    postgres_server.drop_database(dsn)
