"""Database backups that can be restored: pg_dump custom format plus a manifest.

A backup is a folder `<BACKUP_DIR>/lexiscore-<UTC timestamp>/` holding `database.dump` and
`manifest.json`. The row counts in the manifest are taken in the same snapshot as the dump
(`pg_export_snapshot()` + `pg_dump --snapshot`), so a restore must reproduce them exactly even
while the platform keeps writing. The manifest also lists every stored file (audio) with its size
and sha256, so the object store can be checked against it. With BACKUP_TO_STORAGE the two files
are also copied to the storage backend under `backups/<name>/`.

Restore runs `pg_restore --exit-on-error --single-transaction` into a named database (a failure
leaves it as it was) and compares row counts.

The nightly task (`workers.maintenance.backup_database`) runs under `backup_time_limits()`, not
Celery's 10-minute default. Its soft time limit raises inside `backup_create`, which kills pg_dump
and deletes the half-written `.partial` folder; what a hard kill leaves (no Python code runs) is
deleted by `backups_prune` once no backup can still be writing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection, transaction

logger = logging.getLogger(__name__)

DUMP_NAME = "database.dump"
MANIFEST_NAME = "manifest.json"
STORAGE_PREFIX = "backups"
MANIFEST_VERSION = 1
# The task's hard time limit comes this long after its soft one (time for the soft one's cleanup).
TIME_LIMIT_GRACE_SECONDS = 60
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".lexiscore-", ".partial"
LOCK_SUFFIX = ".lock"
NAME_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"


class BackupError(Exception):
    pass


class BackupUploadError(BackupError):
    """The local backup is complete, but copying it to the storage backend failed."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = path
        super().__init__(
            f"The local backup is complete at {path}, but copying it to storage failed: "
            f"{type(cause).__name__}: {cause}"
        )


def backup_time_limits() -> tuple[int, int]:
    """(soft, hard) time limits in seconds of the backup task.

    pg_dump may take BACKUP_TIMEOUT_SECONDS; hashing the dump and every stored file for the
    manifest, and the copy to storage, BACKUP_MANIFEST_TIMEOUT_SECONDS more. Capped, as every
    task is, by CELERY_MAX_TASK_TIME_LIMIT (the broker's visibility timeout is above it, so a
    running backup is never handed to a second worker).
    """
    soft = settings.BACKUP_TIMEOUT_SECONDS + settings.BACKUP_MANIFEST_TIMEOUT_SECONDS
    ceiling = settings.CELERY_MAX_TASK_TIME_LIMIT
    grace = min(TIME_LIMIT_GRACE_SECONDS, ceiling // 2)  # a tiny ceiling (tests) still has both
    return min(soft, ceiling - grace), min(soft + grace, ceiling)


def _pg_env(database: dict[str, Any]) -> dict[str, str]:
    """libpq variables for the pg tools: the password never appears on a command line."""
    env = {**os.environ}
    for key, var in (
        ("HOST", "PGHOST"),
        ("PORT", "PGPORT"),
        ("USER", "PGUSER"),
        ("PASSWORD", "PGPASSWORD"),
    ):
        if database.get(key):
            env[var] = str(database[key])
    return env


def _sha256(handle) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _tables(cursor) -> list[str]:
    cursor.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    )
    return [row[0] for row in cursor.fetchall()]


def _row_counts(cursor) -> dict[str, int]:
    counts = {}
    for table in _tables(cursor):
        cursor.execute(f'SELECT count(*) FROM "{table}"')
        counts[table] = cursor.fetchone()[0]
    return counts


def stored_files(*, checksums: bool = True) -> list[dict[str, Any]]:
    """Every file in the default storage (except backups), with size and sha256."""
    files: list[dict[str, Any]] = []

    def walk(prefix: str) -> None:
        try:
            folders, names = default_storage.listdir(prefix)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in sorted(names):
            key = f"{prefix}/{name}" if prefix else name
            entry: dict[str, Any] = {"key": key, "size": default_storage.size(key)}
            if checksums:
                with default_storage.open(key, "rb") as handle:
                    entry["sha256"] = _sha256(handle)
            files.append(entry)
        for folder in sorted(folders):
            if not prefix and folder == STORAGE_PREFIX:
                continue
            walk(f"{prefix}/{folder}" if prefix else folder)

    walk("")
    return files


def backup_create(
    *, directory: Path | None = None, to_storage: bool | None = None, file_checksums: bool = True
) -> Path:
    """Dump the default database and write the manifest; returns the backup folder."""
    if connection.vendor != "postgresql":
        raise BackupError("Backups need PostgreSQL (pg_dump); this database is not.")
    root = Path(directory or settings.BACKUP_DIR)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = datetime.now(UTC)
    name = f"lexiscore-{started.strftime(NAME_TIME_FORMAT)}"
    partial = root / f".{name}{PARTIAL_SUFFIX}"
    # Held while the folder is written, taken before the folder exists: a prune never deletes a
    # backup still being written (a `manage.py backup` has no time limit); the kernel lets go
    # when the process dies.
    writing = _writer_lock(partial)
    try:
        partial.mkdir(mode=0o700)
        return _backup_write(partial, name, started, root, to_storage, file_checksums)
    finally:
        writing.close()
        _lock_path(partial).unlink(missing_ok=True)


def _lock_path(partial: Path) -> Path:
    return partial.with_name(partial.name + LOCK_SUFFIX)


def _writer_lock(partial: Path) -> Any:
    """The folder's writer lock, held: the lock file at its path, locked by this process. A
    prune may delete a lock file between its open and its lock (it then looks unheld): the
    lock taken is then on a file no longer at the path, so it is taken again on a new one."""
    path = _lock_path(partial)
    while True:
        handle = path.open("a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _being_written(partial: Path) -> bool:
    """Whether a live process holds the partial folder's writer lock."""
    try:
        handle = _lock_path(partial).open("r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _backup_write(
    partial: Path,
    name: str,
    started: datetime,
    root: Path,
    to_storage: bool | None,
    file_checksums: bool,
) -> Path:
    database = connection.settings_dict
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]
            # The dump sees exactly this transaction's snapshot, so the counts below match it.
            completed = subprocess.run(
                dying_with_parent(
                    [
                        "pg_dump",
                        "--format=custom",
                        "--no-owner",
                        "--no-privileges",
                        f"--snapshot={snapshot}",
                        f"--file={partial / DUMP_NAME}",
                        database["NAME"],
                    ]
                ),
                env=_pg_env(database),
                capture_output=True,
                text=True,
                timeout=settings.BACKUP_TIMEOUT_SECONDS,
            )
            if completed.returncode != 0:
                raise BackupError(f"pg_dump failed: {completed.stderr.strip()[-2000:]}")
            counts = _row_counts(cursor)
        with (partial / DUMP_NAME).open("rb") as handle:
            dump_sha = _sha256(handle)
        manifest = {
            "version": MANIFEST_VERSION,
            "name": name,
            "created_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "database": database["NAME"],
            "dump": {
                "file": DUMP_NAME,
                "format": "custom",
                "size": (partial / DUMP_NAME).stat().st_size,
                "sha256": dump_sha,
            },
            "row_counts": counts,
            "stored_files": stored_files(checksums=file_checksums),
        }
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = root / name
        partial.rename(final)  # a backup folder exists only once complete
    except BaseException:
        # Also the task's soft time limit (SoftTimeLimitExceeded): `subprocess.run` has killed a
        # pg_dump still running, and the half-written folder goes.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if settings.BACKUP_TO_STORAGE if to_storage is None else to_storage:
        _copy_to_storage(final)
    logger.info(
        "Backup %s written (%d tables, %d stored files)",
        name,
        len(counts),
        len(manifest["stored_files"]),
    )
    return final


def _copy_to_storage(backup: Path) -> None:
    """Copy a complete local backup to `backups/<name>/` in the storage backend (the manifest
    last). Raises `BackupUploadError` if it fails, after trying to delete what was copied: a
    storage folder without its manifest would count as the newest copy when copies are pruned.
    """
    keys = [
        f"{STORAGE_PREFIX}/{backup.name}/{file_name}" for file_name in (DUMP_NAME, MANIFEST_NAME)
    ]
    try:
        for key in keys:
            with (backup / key.rsplit("/", 1)[1]).open("rb") as handle:
                default_storage.save(key, File(handle))
    except Exception as exc:
        for key in keys:
            try:
                default_storage.delete(key)
            except Exception:
                logger.warning("Could not delete %s from storage", key, exc_info=True)
        raise BackupUploadError(backup, exc) from exc


def backups_list(directory: Path | None = None) -> list[Path]:
    """Complete local backups, oldest first."""
    root = Path(directory or settings.BACKUP_DIR)
    if not root.exists():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("lexiscore-") and (p / MANIFEST_NAME).exists()
    )


def _ignore_missing(function: Any, path: str, exc_info: Any) -> None:
    """`shutil.rmtree`'s error handler: a file or folder already gone is what was wanted."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def partials_remove_stale(
    directory: Path | None = None, *, now: datetime | None = None
) -> list[str]:
    """Delete the `.partial` folders of backups that were killed (the task's hard time limit, a
    SIGKILL, the OOM killer: no cleanup ran): those whose writer lock no process holds. A
    folder being written (its writer holds the lock, however long it runs) is left alone; one
    without a lock file (an older release's) only once it started longer ago than the task's hard
    time limit."""
    root = Path(directory or settings.BACKUP_DIR)
    if not root.exists():
        return []
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=backup_time_limits()[1])
    removed = []
    for path in root.iterdir():
        name = path.name
        if name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX + LOCK_SUFFIX):
            folder = path.with_name(name[: -len(LOCK_SUFFIX)])
            if not folder.exists() and not _being_written(folder):
                path.unlink(missing_ok=True)  # its writer died after deleting its folder
            continue
        if not (name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX)):
            continue
        stamp = name[len(PARTIAL_PREFIX) : -len(PARTIAL_SUFFIX)]
        try:
            started = datetime.strptime(stamp, NAME_TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue  # not a name backup_create writes: leave it to a person
        if not path.is_dir() or _being_written(path):
            continue
        # A writer's lock file without its lock: that writer died. No lock file (a backup of an
        # older release): only once no backup task can still be writing it.
        if _lock_path(path).exists() or started < cutoff:
            try:
                shutil.rmtree(path, onerror=_ignore_missing)
                _lock_path(path).unlink(missing_ok=True)
            except OSError:
                # One that cannot be deleted (another user's) must stop neither the others'
                # deletion nor the backup and prune that follow.
                logger.exception("Could not delete %s, left by a backup that was killed", path)
                continue
            logger.warning("Deleted %s, left by a backup that was killed", path)
            removed.append(name)
    return sorted(removed)


def backups_prune(
    *, keep: int | None = None, directory: Path | None = None, storage: bool = True
) -> list[str]:
    """Delete all but the newest `keep` backups (local, and unless `storage` is false their
    copies in storage), and what killed backups left (`partials_remove_stale`)."""
    keep = settings.BACKUP_KEEP if keep is None else keep
    if keep < 1:
        raise BackupError("Keep at least one backup.")
    partials_remove_stale(directory)
    removed = []
    for path in backups_list(directory)[:-keep]:
        # Two prunes at once (the nightly task and a `manage.py backup` by hand) list the same
        # folders: what the other one already deleted, the whole folder or part of it, counts as
        # pruned here too.
        shutil.rmtree(path, onerror=_ignore_missing)
        removed.append(path.name)
    if not storage:
        return sorted(removed)
    try:
        folders, _ = default_storage.listdir(STORAGE_PREFIX)
    except (FileNotFoundError, NotADirectoryError):
        folders = []
    # Only complete copies (their manifest, written last, is there) count towards `keep`: a
    # half-written copy left by a failed upload must not push out a good one. Folders older than
    # the oldest copy kept go, complete or not, and so do incomplete ones older than the newest
    # complete copy (a later backup finished after them: they are not being uploaded). An
    # incomplete folder newer than every complete one may be uploading now, and stays.
    names = sorted(f for f in folders if f.startswith("lexiscore-"))
    complete = [f for f in names if default_storage.exists(f"{STORAGE_PREFIX}/{f}/{MANIFEST_NAME}")]
    if not complete:
        return sorted(set(removed))
    oldest_kept, newest = complete[-keep:][0], complete[-1]
    doomed = [f for f in names if f < oldest_kept or (f not in complete and f < newest)]
    for folder in doomed:
        for file_name in (DUMP_NAME, MANIFEST_NAME):
            default_storage.delete(f"{STORAGE_PREFIX}/{folder}/{file_name}")
        removed.append(folder)
    return sorted(set(removed))


def dying_with_parent(command: list[str]) -> list[str]:
    """`command`, killed when the process that started it dies (Linux's PR_SET_PDEATHSIG, set by
    util-linux's `setpriv` before it execs the command; no Python code runs between fork and
    exec, which is unsafe in a process with threads). A worker killed outright (hard time limit,
    OOM) runs no cleanup, and its pg_dump went on for hours, holding a snapshot and writing into
    a folder nothing would use. Without `setpriv` the command runs as it is."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


@dataclass
class RestoreReport:
    database: str
    expected: dict[str, int]
    actual: dict[str, int]

    @property
    def mismatches(self) -> dict[str, tuple[int | None, int | None]]:
        tables = set(self.expected) | set(self.actual)
        return {
            t: (self.expected.get(t), self.actual.get(t))
            for t in sorted(tables)
            if self.expected.get(t) != self.actual.get(t)
        }

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _connect(database_name: str) -> psycopg.Connection:
    params = connection.get_connection_params()
    params.pop("options", None)  # no statement timeout for a restore check
    params["dbname"] = database_name
    params["autocommit"] = True
    return psycopg.connect(**params)


def _database_name(name: str) -> str:
    """A plain database name: libpq (so pg_restore's --dbname) would read a connection string
    or URI as one, and could send the restore to the live database or another server past the
    checks here."""
    if not name or "=" in name or "://" in name:
        raise BackupError(f"Give a database name, not a connection string: {name!r}")
    return name


def backup_check(backup: Path) -> dict[str, Any]:
    """The backup's manifest, once its dump matches the manifest's sha256 (BackupError if not)."""
    try:
        manifest = json.loads((backup / MANIFEST_NAME).read_text())
        expected_sha = manifest["dump"]["sha256"]
        if not isinstance(manifest["row_counts"], dict):  # what the restore compares with
            raise TypeError("row_counts is not a mapping")
        with (backup / DUMP_NAME).open("rb") as handle:
            actual_sha = _sha256(handle)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{backup} is not a readable backup: {exc}") from exc
    if actual_sha != expected_sha:
        raise BackupError(f"{backup / DUMP_NAME} does not match the sha256 in its manifest.")
    return manifest


def backup_restore(
    *,
    backup: Path,
    database_name: str,
    allow_live: bool = False,
    manifest: dict[str, Any] | None = None,
) -> RestoreReport:
    """Restore a backup into `database_name` (which must exist and be empty) and check counts.

    The restore is one transaction: a failure leaves the target as it was, never half restored.
    `manifest`: what `backup_check` returned for this backup (its dump is not hashed again).
    """
    _database_name(database_name)
    if database_name == connection.settings_dict["NAME"] and not allow_live:
        raise BackupError(
            f"Refusing to restore over the live database {database_name!r}; restore into a new "
            "database and switch DATABASE_URL, or pass --force-live."
        )
    if manifest is None:
        manifest = backup_check(backup)
    completed = subprocess.run(
        [
            "pg_restore",
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            f"--dbname={database_name}",
            str(backup / DUMP_NAME),
        ],
        env=_pg_env(connection.settings_dict),
        capture_output=True,
        text=True,
        timeout=settings.BACKUP_TIMEOUT_SECONDS,
    )
    if completed.returncode != 0:
        raise BackupError(f"pg_restore failed: {completed.stderr.strip()[-2000:]}")
    with _connect(database_name) as conn, conn.cursor() as cursor:
        actual = _row_counts(cursor)
    if database_name == connection.settings_dict["NAME"]:
        # Cached reads (apps.core.generations) describe the data that was just replaced.
        from django.core.cache import cache

        cache.clear()
    return RestoreReport(database=database_name, expected=manifest["row_counts"], actual=actual)


def database_create(name: str) -> None:
    with _connect(connection.settings_dict["NAME"]) as conn:
        try:
            conn.execute(f'CREATE DATABASE "{_identifier(name)}"')
        except psycopg.errors.DuplicateDatabase as exc:
            raise BackupError(
                f"Database {name!r} exists already: drop it, or restore into it without --create "
                "(it must be empty)."
            ) from exc


def database_drop(name: str) -> None:
    with _connect(connection.settings_dict["NAME"]) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise BackupError(f"Database names are letters, digits and underscores: {name!r}")
    return name
