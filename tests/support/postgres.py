"""A private PostgreSQL 15 cluster for tests and benchmarks: initdb in a temp dir as the postgres user,
on a random loopback port, stopped and removed at the end. `postgres_server` is the session fixture (one
cluster for the whole session, registered in tests/conftest.py; each test takes a new database and drops
it). The server runs in the foreground as a child that dies with its parent, and its data dir is recorded
(unlinkwatch/runstate.py), so a killed run leaves neither behind after `make clean-host`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.collector import free_port
from unlinkwatch import runstate
from unlinkwatch.runstate import die_with_parent

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    def __init__(self, fsync: bool = False) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"PostgreSQL 15 not installed ({PG_BIN})")
        self.dir, self._rec = runstate.temp_dir("uw-pg-")
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None
        self.databases: list[str] = []
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_pg(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50 "
                f"-c shared_buffers=512MB -c max_wal_size=4GB -c fsync={'on' if fsync else 'off'}")
        with open(self.dir / "log", "wb") as log:
            self.proc = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(self.data), *opts.split()],
                                         stdout=log, stderr=subprocess.STDOUT, cwd="/", preexec_fn=die_with_parent,
                                         **self._pg_user())
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._wait_ready(60)

    @staticmethod
    def _pg_user() -> dict[str, str]:
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start: " + (self.dir / "log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def _as_pg(self, *cmd: object) -> None:
        run = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*run, *map(str, cmd)], check=True, capture_output=True, cwd="/")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def new_database(self) -> str:
        """A fresh empty database on the cluster; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_databases(self) -> None:
        """Drops the databases new_database() made (FORCE ends sessions a test left open)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.clear()

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGQUIT)  # immediate shutdown, as pg_ctl -m immediate
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._rec.done()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresCluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run PostgreSQL as the postgres user (CI runs as root)")
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _drop_test_databases(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test's databases are dropped when it ends (the cluster lives for the session)."""
    yield
    if "postgres_server" in request.fixturenames:
        cluster: PostgresCluster = request.getfixturevalue("postgres_server")
        cluster.drop_databases()
