"""A private PostgreSQL 15 cluster for tests and benchmarks: initdb in a temp dir as the postgres user,
on a random loopback port, stopped and removed at the end. `postgres_server` is the session fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.collector import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    def __init__(self, fsync: bool = False) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"PostgreSQL 15 not installed ({PG_BIN})")
        self.dir = Path(tempfile.mkdtemp(prefix="uw-pg-"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_pg(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50 "
                f"-c shared_buffers=512MB -c max_wal_size=4GB -c fsync={'on' if fsync else 'off'}")
        self._as_pg(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w", "-t", "60", "-o", opts, "start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

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
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._as_pg(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresCluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run PostgreSQL as the postgres user (CI runs as root)")
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.stop()
