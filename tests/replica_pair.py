"""A PostgreSQL 15 primary and one streaming standby of it (``pg_basebackup -R``), run as the
postgres user on free loopback ports in a folder of their own: what the read-store tests read
from (a few seconds to start, far cheaper than a Patroni cluster, and as real a standby)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg

from scripts.cluster import PG_BIN, RUN_AS

DATABASE = "aftersales"


def free_port(start: int) -> int:
    for port in range(start, start + 400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class ReplicaPair:
    def __init__(self, base: Path) -> None:
        self.base = base
        # Away from scripts/cluster.py's ports, and apart for each test process.
        self.primary_port = free_port(5601 + 8 * (os.getpid() % 40))
        self.standby_port = free_port(self.primary_port + 1)

    def url(self, port: int) -> str:
        return f"postgresql://{RUN_AS}@127.0.0.1:{port}/{DATABASE}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def standby_url(self) -> str:
        return self.url(self.standby_port)

    def _run(self, *argv: str) -> None:
        subprocess.run(
            ["setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}", "--init-groups", *argv],
            check=True,
            capture_output=True,
            cwd=self.base,
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "PGOPTIONS": ""},
        )

    def _ctl(self, data: str, port: int, action: str = "start") -> None:
        log = str(self.base / f"{data}.log")
        extra = ["-o", f"-p {port}", "-l", log] if action == "start" else []
        mode = ["-m", "immediate"] if action == "stop" else []
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.base / data), "-w", *mode, *extra, action)

    def up(self) -> None:
        pw = pwd.getpwnam(RUN_AS)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        primary = str(self.base / "primary")
        self._run(
            str(PG_BIN / "initdb"), "-D", primary, "-U", RUN_AS, "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        with open(self.base / "primary" / "postgresql.conf", "a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
                "fsync = off\nshared_buffers = 16MB\nmax_connections = 40\n"
                # The test pauses replay for a while: queries on the standby wait, not cancel.
                "max_standby_streaming_delay = -1\n"
            )
        self._ctl("primary", self.primary_port)
        self._run(
            str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary_port),
            "-U", RUN_AS, "-D", str(self.base / "standby"), "-R", "-X", "stream", "--no-sync",
        )  # fmt: skip
        self._ctl("standby", self.standby_port)
        with psycopg.connect(self.url(self.primary_port).rsplit("/", 1)[0] + "/postgres") as c:
            c.autocommit = True
            c.execute(f"CREATE DATABASE {DATABASE}")
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.standby_url):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop_standby(self) -> None:
        self._ctl("standby", self.standby_port, "stop")

    def start_standby(self) -> None:
        self._ctl("standby", self.standby_port)

    def standby(self, sql: str) -> object:
        """One statement on the standby, its first value."""
        with psycopg.connect(self.standby_url, autocommit=True) as c:
            row = c.execute(sql).fetchone()
            return row[0] if row else None

    def down(self) -> None:
        for data, port in (("standby", self.standby_port), ("primary", self.primary_port)):
            if (self.base / data / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._ctl(data, port, "stop")
        shutil.rmtree(self.base, ignore_errors=True)
