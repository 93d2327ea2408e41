"""A highly available store on this machine: three etcd members and a Patroni cluster of a
primary and two standbys, all on loopback ports of their own, with synchronous replication that
never acknowledges a commit held by one node alone (Patroni's ``synchronous_mode`` with
``synchronous_mode_strict``).

    scripts/cluster.py up        start it (or start it again on the data it has) and print the
                                 store URL: every member, target_session_attrs=read-write
    scripts/cluster.py status    who leads, who is the synchronous standby, how far each lags
    scripts/cluster.py failover  a planned switchover to the synchronous standby; with --kill,
                                 kill -9 of the primary's postmaster instead
    scripts/cluster.py down      stop everything it started and (without --keep) remove its data

It runs Debian's ``patroni``, ``etcd-server`` and PostgreSQL 15 (``.ci/run`` installs them) and
never touches the system PostgreSQL on 5432. PostgreSQL refuses to run as root, so every member
runs as the ``postgres`` user (``setpriv``); run the script as root. The members trust
connections from 127.0.0.1 only: this is a cluster for one machine's tests and trials, not a
production deployment (which adds passwords or certificates, and members on separate hosts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/tmp/aftersales-cluster")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_AS = "postgres"
SCOPE = "aftersales"
DATABASE = "aftersales"
MEMBERS = 3
# How long `up` waits for a leader and both standbys streaming.
UP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Layout:
    """Where a cluster lives: its folder and its ports. Member i's PostgreSQL listens on
    ``pg_port + i``, its Patroni API on ``api_port + i``; etcd member i serves clients on
    ``etcd_port + 100 i`` and its peers on the port after (the two never overlap)."""

    base: Path = DEFAULT_DIR
    pg_port: int = 5441
    api_port: int = 8441
    etcd_port: int = 2379

    def pg_ports(self) -> list[int]:
        return [self.pg_port + i for i in range(MEMBERS)]

    def api_ports(self) -> list[int]:
        return [self.api_port + i for i in range(MEMBERS)]

    def etcd_clients(self) -> list[int]:
        return [self.etcd_port + 100 * i for i in range(MEMBERS)]

    def etcd_peers(self) -> list[int]:
        return [self.etcd_port + 100 * i + 1 for i in range(MEMBERS)]

    def member(self, i: int) -> Path:
        return self.base / f"pg{i}"

    def data_dir(self, i: int) -> Path:
        return self.member(i) / "data"

    def store_url(self, *, user: str = "postgres", database: str = DATABASE) -> str:
        """The store URL naming every member: libpq tries them in turn and keeps the one that
        takes writes."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.pg_ports())
        return f"postgresql://{user}@{hosts}/{database}?target_session_attrs=read-write"

    def to_json(self) -> dict[str, Any]:
        return {
            "base": str(self.base),
            "pg_port": self.pg_port,
            "api_port": self.api_port,
            "etcd_port": self.etcd_port,
        }


class ClusterError(RuntimeError):
    pass


class Cluster:
    """The processes of one cluster, started, watched and stopped by pid (recorded in
    ``pids.json`` in its folder, so a later ``status`` or ``down`` finds them)."""

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout = layout or Layout()
        self.log = self.layout.base / "log"

    # Starting -----------------------------------------------------------------------------

    def up(self, *, timeout: float = UP_TIMEOUT) -> float:
        """Start etcd and the three Patroni members (those not running), wait until a leader
        and both standbys stream and the store's database exists; the seconds it took."""
        started = time.monotonic()
        for tool in ("setpriv", "etcd", "patroni"):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} is not installed (apt-get install patroni etcd-server)")
        if os.geteuid() != 0:
            raise ClusterError("run as root: the members run as the postgres user (setpriv)")
        pw = pwd.getpwnam(RUN_AS)
        self.layout.base.mkdir(parents=True, exist_ok=True)
        self.log.mkdir(exist_ok=True)
        os.chmod(self.layout.base, 0o755)
        pids = self.pids()
        for i in range(MEMBERS):
            key = f"etcd{i}"
            if not _alive(pids.get(key)):
                pids[key] = self._start_etcd(i, pw)
        self._save_pids(pids)
        self._wait(self._etcd_healthy, timeout, "etcd to be healthy")
        for i in range(MEMBERS):
            key = f"patroni{i}"
            if not _alive(pids.get(key)):
                pids[key] = self._start_patroni(i, pw)
        self._save_pids(pids)
        self._wait(self._all_streaming, timeout - (time.monotonic() - started), "the members")
        self._create_database(timeout - (time.monotonic() - started))
        return time.monotonic() - started

    def _start_etcd(self, i: int, pw: pwd.struct_passwd) -> int:
        data = self.layout.base / f"etcd{i}"
        data.mkdir(exist_ok=True)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        os.chmod(data, 0o700)
        client, peer = self.layout.etcd_clients()[i], self.layout.etcd_peers()[i]
        peers = ",".join(
            f"e{k}=http://127.0.0.1:{port}" for k, port in enumerate(self.layout.etcd_peers())
        )
        return self._spawn(
            f"etcd{i}",
            [
                "etcd",
                "--name", f"e{i}",
                "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", peers,
                "--initial-cluster-token", f"{SCOPE}-{self.layout.etcd_port}",
                "--initial-cluster-state", "new",
            ],
        )  # fmt: skip

    def _start_patroni(self, i: int, pw: pwd.struct_passwd) -> int:
        member = self.layout.member(i)
        member.mkdir(exist_ok=True)
        os.chown(member, pw.pw_uid, pw.pw_gid)
        os.chmod(member, 0o700)
        config = member / "patroni.yml"
        # JSON is YAML: Patroni reads it as its configuration.
        config.write_text(json.dumps(self.patroni_config(i), indent=2))
        os.chown(config, pw.pw_uid, pw.pw_gid)
        os.chmod(config, 0o600)
        return self._spawn(f"patroni{i}", ["patroni", str(config)])

    def patroni_config(self, i: int) -> dict[str, Any]:
        port, api = self.layout.pg_ports()[i], self.layout.api_ports()[i]
        member = self.layout.member(i)
        hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication replicator 127.0.0.1/32 trust",
        ]
        return {
            "scope": SCOPE,
            "namespace": "/service/",
            "name": f"pg{i}",
            "restapi": {"listen": f"127.0.0.1:{api}", "connect_address": f"127.0.0.1:{api}"},
            "etcd3": {"hosts": [f"127.0.0.1:{p}" for p in self.layout.etcd_clients()]},
            "bootstrap": {
                "dcs": {
                    # A short loop: a lost primary is noticed within a second or two. The TTL
                    # (Patroni's minimum) bounds a takeover when Patroni itself dies.
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    # 0: a primary whose postmaster died is failed over, not restarted in place.
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "256MB",
                            # A standby pointed at a new primary retries its stream quickly.
                            "wal_retrieve_retry_interval": "500ms",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{port}",
                "connect_address": f"127.0.0.1:{port}",
                "data_dir": str(self.layout.data_dir(i)),
                "bin_dir": str(PG_BIN),
                "pgpass": str(member / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(member)},
                "pg_hba": hba,
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    def _spawn(self, name: str, argv: list[str]) -> int:
        """Start one member as the postgres user, in a session of its own (it outlives this
        script); setpriv replaces itself with the program, so the pid is the member's."""
        out = open(self.log / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        with out:
            process = subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={RUN_AS}",
                    f"--regid={RUN_AS}",
                    "--init-groups",
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.layout.base,
                start_new_session=True,
                env={**_clean_env(), "HOME": str(self.layout.base)},
            )
        return process.pid

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + max(timeout, 1.0)
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        seen = [(m.get("name"), m.get("role"), m.get("state")) for m in self.members()]
        raise ClusterError(f"timed out waiting for {what} (members: {seen}); logs in {self.log}")

    def _etcd_healthy(self) -> bool:
        for port in self.layout.etcd_clients():
            found = _get_json(f"http://127.0.0.1:{port}/health")
            if not found or found.get("health") != "true":
                return False
        return True

    def _all_streaming(self) -> bool:
        members = self.members()
        roles = sorted(m.get("role", "") for m in members)
        running = all(m.get("state") in ("running", "streaming") for m in members)
        return running and roles == ["leader", "replica", "sync_standby"]

    def _create_database(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + max(timeout, 5.0)
        url = self.layout.store_url(database="postgres")
        while True:
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                    found = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                    ).fetchone()
                    if not found:
                        conn.execute(f"CREATE DATABASE {DATABASE}")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # Watching -----------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the members (name, role, state, host, port, lag), from the first
        API that answers."""
        for port in self.layout.api_ports():
            found = _get_json(f"http://127.0.0.1:{port}/cluster")
            if found and isinstance(found.get("members"), list):
                return list(found["members"])
        return []

    def leader(self) -> dict[str, Any] | None:
        return next((m for m in self.members() if m.get("role") == "leader"), None)

    def status(self) -> dict[str, Any]:
        pids = self.pids()
        return {
            "url": self.layout.store_url(),
            "members": self.members(),
            "processes": {name: pid for name, pid in pids.items() if _alive(pid)},
            "layout": self.layout.to_json(),
        }

    def postmaster_pid(self, i: int) -> int | None:
        """The pid in a member's postmaster.pid (None if it has none)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.layout.data_dir(i) / "postmaster.pid").read_text().split()[0])
        return None

    # Failing over -------------------------------------------------------------------------

    def kill_primary(self) -> str:
        """kill -9 of the primary's postmaster; the member's name."""
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to kill")
        i = int(str(leader["name"]).removeprefix("pg"))
        pid = self.postmaster_pid(i)
        if pid is None:
            raise ClusterError(f"{leader['name']} has no postmaster.pid")
        os.kill(pid, signal.SIGKILL)
        return str(leader["name"])

    def switchover(self) -> str:
        """A planned switchover to the synchronous standby (the only member Patroni lets take
        over without losing an acknowledged commit); the new leader's name."""
        members = self.members()
        leader = next((m for m in members if m.get("role") == "leader"), None)
        sync = next((m for m in members if m.get("role") == "sync_standby"), None)
        if leader is None or sync is None:
            raise ClusterError("a switchover needs a leader and a synchronous standby")
        port = self.layout.api_ports()[int(str(leader["name"]).removeprefix("pg"))]
        body = json.dumps({"leader": leader["name"], "candidate": sync["name"]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/switchover", data=body, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            why = exc.read().decode(errors="replace")
            raise ClusterError(f"switchover refused: {why}") from None
        return str(sync["name"])

    def wait_streaming(self, timeout: float = 60.0, *, not_led_by: str | None = None) -> None:
        """Until a leader (another than ``not_led_by``) and both standbys stream again."""

        def ready() -> bool:
            leader = self.leader()
            moved = leader is not None and leader.get("name") != not_led_by
            return moved and self._all_streaming()

        self._wait(ready, timeout, "the members to stream again")

    def wait_writable(self, timeout: float = 60.0, *, not_led_by: str | None = None) -> None:
        """Until a leader (another than ``not_led_by``) and a synchronous standby run: commits
        are acknowledged again (the third member may still be catching up)."""

        def ready() -> bool:
            members = self.members()
            leader = next((m for m in members if m.get("role") == "leader"), None)
            sync = [m for m in members if m.get("role") == "sync_standby"]
            moved = leader is not None and leader.get("name") != not_led_by
            running = all(m.get("state") in ("running", "streaming") for m in [leader, *sync] if m)
            return moved and bool(sync) and running

        self._wait(ready, timeout, "a leader and a synchronous standby")

    # Stopping -----------------------------------------------------------------------------

    def down(self, *, keep: bool = False) -> None:
        """Stop the members (Patroni first: it stops its PostgreSQL), then etcd; wait until
        each is gone before anything is removed."""
        pids = self.pids()
        patronis = [pids[k] for k in sorted(pids) if k.startswith("patroni")]
        for pid in patronis:
            _signal(pid, signal.SIGTERM)
        _wait_gone(patronis, 30.0)
        # A postmaster Patroni did not stop (Patroni killed, say) is stopped here.
        postmasters = [p for p in map(self.postmaster_pid, range(MEMBERS)) if p and _alive(p)]
        for pid in postmasters:
            _signal(pid, signal.SIGQUIT)
        _wait_gone(postmasters, 10.0)
        etcds = [pids[k] for k in sorted(pids) if k.startswith("etcd")]
        for pid in etcds:
            _signal(pid, signal.SIGTERM)
        _wait_gone(etcds, 10.0)
        if keep:
            self._save_pids({})
        else:
            shutil.rmtree(self.layout.base, ignore_errors=True)

    # The record of pids -------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        with contextlib.suppress(OSError, ValueError):
            found = json.loads((self.layout.base / "pids.json").read_text())
            return {str(k): int(v) for k, v in found.items()}
        return {}

    def _save_pids(self, pids: dict[str, int]) -> None:
        (self.layout.base / "pids.json").write_text(json.dumps(pids))


def _clean_env() -> dict[str, str]:
    """The environment the members start with: this script's, less what would steer libpq or
    Python elsewhere (Debian's Patroni runs on Debian's python3)."""
    drop = ("PG", "PYTHON", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            found = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie left by a parent that has not reaped it is gone for our purposes.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until each pid is gone (``kill`` returns before a process is); SIGKILL what is
    still there at the end, and wait for that too."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    while any(_alive(p) for p in pids):
        time.sleep(0.05)


def _print_status(status: dict[str, Any]) -> None:
    print(f"store: {status['url']}")
    for m in status["members"]:
        lag = m.get("lag", "")
        print(
            f"  {m.get('name', '?'):5} {m.get('role', '?'):13} {m.get('state', '?'):10} "
            f"{m.get('host', '')}:{m.get('port', '')}  lag {lag if lag != '' else '-'}"
        )
    if not status["members"]:
        print("  no member answers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["up", "status", "failover", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the cluster's folder")
    parser.add_argument("--pg-port", type=int, default=5441, help="member i listens on this + i")
    parser.add_argument("--api-port", type=int, default=8441, help="Patroni's API, + i")
    parser.add_argument("--etcd-port", type=int, default=2379, help="etcd member i: + 100 i")
    parser.add_argument("--kill", action="store_true", help="failover: kill -9 the primary")
    parser.add_argument("--keep", action="store_true", help="down: keep the data")
    parser.add_argument("--json", action="store_true", help="status as one JSON value")
    args = parser.parse_args(argv)
    cluster = Cluster(Layout(args.dir, args.pg_port, args.api_port, args.etcd_port))
    try:
        if args.verb == "up":
            took = cluster.up()
            print(f"cluster up in {took:.1f} s", file=sys.stderr)
            print(cluster.layout.store_url())
        elif args.verb == "status":
            status = cluster.status()
            if args.json:
                print(json.dumps(status))
            else:
                _print_status(status)
            return 0 if status["members"] else 1
        elif args.verb == "failover":
            before = time.monotonic()
            old = cluster.leader()
            if args.kill:
                print(f"killed the postmaster of {cluster.kill_primary()}")
            else:
                print(f"switched over to {cluster.switchover()}")
            cluster.wait_streaming(not_led_by=old["name"] if old else None)
            print(f"all members streaming again after {time.monotonic() - before:.1f} s")
            _print_status(cluster.status())
        else:
            cluster.down(keep=args.keep)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
