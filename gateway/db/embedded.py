"""A private PostgreSQL cluster for the demo, the tests and the benchmarks.

The cluster lives in its own data directory, listens on 127.0.0.1 only (on a free port unless one is given)
and puts its unix socket in a private directory, so it never touches another cluster on the machine.

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root: in that case the data directory, the
socket directory and the log file are handed to the ``postgres`` system user and the binaries run through
``runuser -u postgres --``. As a normal user everything runs as that user.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_bindir"]

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
SUPERUSER: Final = "postgres"
# The unprivileged system user the server runs as when we are root (created by the Debian package).
SYSTEM_USER: Final = "postgres"

_INSTALL_HINT: Final = "PostgreSQL server binaries not found; install with: apt-get install postgresql"
_INITDB_TIMEOUT_S: Final = 120.0
_PG_CTL_START_WAIT_S: Final = 60
_PG_CTL_STOP_WAIT_S: Final = 30
# Slack over pg_ctl's own -t so that pg_ctl reports the failure itself rather than being killed by us.
_SUBPROCESS_SLACK_S: Final = 15.0
_PORT_ATTEMPTS: Final = 3
_LOG_TAIL_LINES: Final = 40


class EmbeddedPostgresError(RuntimeError):
    """The private cluster could not be found, initialised, started or stopped."""


def find_bindir() -> Path:
    """Return the folder holding the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``).

    ``pg_config --bindir`` wins when it holds ``initdb`` (``pg_config`` may come from libpq-dev alone, without
    a server); otherwise the newest ``/usr/lib/postgresql/<major>/bin`` with an ``initdb`` is used.
    """
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError) as exc:
            log.debug("pg_config --bindir failed: %s", exc)
        else:
            if out and _is_executable(Path(out) / "initdb"):
                return Path(out)
    candidates: list[tuple[int, Path]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        major = bindir.parent.name
        # Sort numerically: "9" must not beat "15".
        if major.isdigit() and _is_executable(bindir / "initdb"):
            candidates.append((int(major), bindir))
    if candidates:
        return max(candidates)[1]
    raise EmbeddedPostgresError(_INSTALL_HINT)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1 (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """A private PostgreSQL cluster in ``data_dir``, reachable on 127.0.0.1 only.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (both synchronous and bounded in time).
    An existing initialised data directory is reused as is.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        log_file: Path | None = None,
        shared_buffers: str = "256MB",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the cluster; nothing happens on disk until :meth:`start`.

        ``port`` None picks a free port at start. ``log_file`` defaults to ``<data_dir>.log`` next to the
        data directory (initdb wants the data directory empty, and the log must survive a failed initdb).
        ``settings`` are more server settings (``{"shared_preload_libraries": "pg_stat_statements"}`` for a
        benchmark that reads statement statistics).
        """
        self.data_dir = Path(data_dir).absolute()
        self._requested_port = port
        self.port: int | None = port
        if log_file is None:
            log_file = self.data_dir.with_name(self.data_dir.name + ".log")
        self.log_file = Path(log_file).absolute()
        self.shared_buffers = shared_buffers
        self.settings = dict(settings or {})
        self._socket_dir: Path | None = None
        self._running = False
        self._bindir: Path | None = None
        self._as_root = os.geteuid() == 0
        self._atexit_registered = False

    # -- public API --

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._running

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a DSN for ``dbname`` as the ``postgres`` superuser (trust auth: no password)."""
        if self.port is None:
            raise EmbeddedPostgresError("the cluster has no port yet; call start() first")
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def start(self) -> None:
        """Run initdb if needed, start the server and return once it accepts connections."""
        if self._running:
            return
        self._bindir = find_bindir()
        self._prepare_paths()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port if self._requested_port is not None else free_port()
            try:
                self._pg_ctl_start()
            except EmbeddedPostgresError:
                # A picked port can be taken between probing and binding: try another one.
                if attempt < attempts and self._port_conflict():
                    log.warning("port %s was taken before the server could bind it; retrying", self.port)
                    continue
                self._abort_start()
                self._remove_socket_dir()
                raise
            break
        self._running = True
        if not self._atexit_registered:
            # A safety net for callers that forget stop(): never leave an orphan server behind.
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        log.info(
            "embedded postgres started on %s:%s, data dir %s",
            HOST,
            self.port,
            self.data_dir,
            extra={"data_dir": str(self.data_dir), "port": self.port},
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and wait for it; does nothing if it is not running."""
        if not self._running:
            return
        try:
            self._pg_ctl_stop()
        finally:
            self._running = False
            self._remove_socket_dir()
            if self._atexit_registered:
                atexit.unregister(self._stop_at_exit)
                self._atexit_registered = False
        log.info(
            "embedded postgres stopped, data dir %s",
            self.data_dir,
            extra={"data_dir": str(self.data_dir), "port": self.port},
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the server log ('' if there is none yet)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        # Do not let a failing stop hide the exception that is already propagating.
        try:
            self.stop()
        except EmbeddedPostgresError:
            log.exception("stopping the embedded postgres failed")

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r}, port={self.port!r}, running={self._running})"

    # -- file system --

    def _system_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root but there is no {SYSTEM_USER!r} system user to run the server as "
                "(initdb and postgres refuse to run as root); install the postgresql package or run as a "
                "normal user"
            ) from None

    def _prepare_paths(self) -> None:
        """Create the data dir, socket dir and log file, owned by whoever runs the server."""
        self._mkdirs(self.data_dir)
        self._mkdirs(self.log_file.parent)
        self.log_file.touch(exist_ok=True)
        # A short path under /tmp: unix socket paths are limited to ~107 bytes, pytest's tmp dirs are long.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="smsgw-pg-"))
        if self._as_root:
            user = self._system_user()
            for path in (self.data_dir, self._socket_dir, self.log_file):
                os.chown(path, user.pw_uid, user.pw_gid)
            for path in (self.data_dir, self.log_file):
                self._grant_traverse(path.parent, user)
        else:
            self._socket_dir.chmod(0o700)

    @staticmethod
    def _mkdirs(path: Path) -> None:
        """mkdir -p with 0755 on the directories we create, so the server user can reach the leaf."""
        missing: list[Path] = []
        current = path
        while not current.exists():
            missing.append(current)
            current = current.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir()
                # Explicit chmod: mkdir's mode is filtered through the umask.
                directory.chmod(0o755)

    @staticmethod
    def _grant_traverse(directory: Path, user: pwd.struct_passwd) -> None:
        """Let ``user`` traverse every ancestor of ``directory``.

        pytest's /tmp/pytest-of-root/pytest-N are 0700: add the search bit for others (o+x: traverse only,
        no listing) on the ancestors the server user could not otherwise cross.
        """
        groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
        for ancestor in [directory, *directory.parents]:
            st = ancestor.stat()
            if st.st_uid == user.pw_uid:
                allowed = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                allowed = bool(st.st_mode & stat.S_IXGRP)
            else:
                allowed = bool(st.st_mode & stat.S_IXOTH)
            if not allowed:
                log.info(
                    "granting o+x on %s so the server user can reach the data dir",
                    ancestor,
                    extra={"path": str(ancestor)},
                )
                ancestor.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # -- processes --

    def _run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server user, with a bounded wait; never raises on a non-zero exit."""
        assert self._bindir is not None
        cmd = [str(self._bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SYSTEM_USER, "--", *cmd]
        # PG* variables of the caller (PGDATA, PGPORT, PGOPTIONS, ...) must not leak into a private cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        log.debug("running %s", shlex.join(cmd))
        try:
            # cwd "/": the server user may not be allowed into our working directory.
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{args[0]} did not finish within {timeout:.0f}s\n--- server log tail ---\n{self.log_tail()}"
            ) from exc
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot run {cmd[0]}: {exc}") from exc

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str]) -> EmbeddedPostgresError:
        output = "\n".join(part.strip() for part in (proc.stdout, proc.stderr) if part and part.strip())
        return EmbeddedPostgresError(
            f"{what} failed (exit {proc.returncode}) for {self.data_dir}\n{output}\n"
            f"--- server log tail ({self.log_file}) ---\n{self.log_tail()}"
        )

    def _initdb(self) -> None:
        log.info("running initdb in %s", self.data_dir, extra={"data_dir": str(self.data_dir)})
        proc = self._run(
            [
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            timeout=_INITDB_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise self._fail("initdb", proc)

    def _server_options(self) -> str:
        assert self._socket_dir is not None and self.port is not None
        options = [
            "-c listen_addresses=" + HOST,
            f"-p {self.port}",
            "-k " + shlex.quote(str(self._socket_dir)),
            "-c fsync=on",
            "-c max_connections=200",
            f"-c shared_buffers={self.shared_buffers}",
            # The queue tables are tuned per table, but the launcher only visits every naptime.
            "-c autovacuum_naptime=10s",
            # A forgotten open transaction stops vacuum and bloats the queue index: cut it off.
            "-c idle_in_transaction_session_timeout=60s",
        ]
        options += ["-c " + shlex.quote(f"{name}={value}") for name, value in self.settings.items()]
        return " ".join(options)

    def _pg_ctl_start(self) -> None:
        proc = self._run(
            [
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(_PG_CTL_START_WAIT_S),
                "-o",
                self._server_options(),
            ],
            timeout=_PG_CTL_START_WAIT_S + _SUBPROCESS_SLACK_S,
        )
        if proc.returncode != 0:
            raise self._fail("pg_ctl start", proc)

    def _port_conflict(self) -> bool:
        return re.search(r"could not bind|Address already in use", self.log_tail()) is not None

    def _pg_ctl_stop(self) -> None:
        proc = self._run(
            ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(_PG_CTL_STOP_WAIT_S)],
            timeout=_PG_CTL_STOP_WAIT_S + _SUBPROCESS_SLACK_S,
        )
        if proc.returncode == 0:
            return
        if self._signal_postmaster():
            return
        raise self._fail("pg_ctl stop", proc)

    def _abort_start(self) -> None:
        """After a failed start (e.g. pg_ctl timed out), make sure no half-started server is left behind."""
        try:
            status = self._run(["pg_ctl", "status", "-D", str(self.data_dir)], timeout=_SUBPROCESS_SLACK_S)
            if status.returncode != 0:
                return
            log.warning("stopping the server left running by a failed start", extra={"data_dir": str(self.data_dir)})
            self._run(
                ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", str(_PG_CTL_STOP_WAIT_S)],
                timeout=_PG_CTL_STOP_WAIT_S + _SUBPROCESS_SLACK_S,
            )
        except EmbeddedPostgresError:
            log.exception("could not stop the server left running by a failed start")

    def _signal_postmaster(self) -> bool:
        """Fallback when pg_ctl cannot stop the server: SIGINT (fast shutdown) the postmaster, then SIGQUIT.

        Returns True once the postmaster is gone (or was not running).
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return not (self.data_dir / "postmaster.pid").exists()
        for sig, wait_s in ((signal.SIGINT, float(_PG_CTL_STOP_WAIT_S)), (signal.SIGQUIT, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                time.sleep(0.1)
        return False

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except EmbeddedPostgresError:
            log.exception("stopping the embedded postgres at exit failed")
