"""`manage.py restore` never leaves a half-restored or stray database, and refuses bad arguments
with a CommandError (not a traceback) before it touches any database."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from apps.core import backups
from apps.core.backups import database_create, database_drop


def _tables(database: str) -> list[str]:
    with backups._connect(database) as conn, conn.cursor() as cursor:
        return backups._tables(cursor)


def _exists(database: str) -> bool:
    with backups._connect(connection.settings_dict["NAME"]) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
    return row is not None


@pytest.fixture
def scratch_database():
    name = f"lexiscore_restore_{uuid.uuid4().hex[:12]}"
    yield name
    database_drop(name)


@pytest.fixture
def backup_dir(transactional_db, tmp_path) -> Path:
    call_command("backup", "--dir", str(tmp_path), "--no-file-checksums", "--keep", "1")
    return tmp_path


def test_a_failed_restore_leaves_the_target_as_it_was_not_half_restored(
    backup_dir, scratch_database
):
    # A target that is not empty: the dump's last table is there already, so pg_restore fails
    # late, after it has created every table before that one.
    live_tables = _tables(connection.settings_dict["NAME"])
    database_create(scratch_database)
    with backups._connect(scratch_database) as conn:
        conn.execute(f'CREATE TABLE "{live_tables[-1]}" (x int)')

    with pytest.raises(CommandError, match="pg_restore failed"):
        call_command("restore", "--dir", str(backup_dir), "--database", scratch_database)

    assert _tables(scratch_database) == [live_tables[-1]]


def test_restore_create_drops_the_database_it_created_when_the_restore_fails(
    backup_dir, scratch_database, monkeypatch
):
    failed = subprocess.CompletedProcess(args=[], returncode=1, stdout="", stderr="disk full")
    monkeypatch.setattr(backups.subprocess, "run", lambda *args, **kwargs: failed)

    with pytest.raises(CommandError, match="disk full"):
        call_command(
            "restore", "--dir", str(backup_dir), "--database", scratch_database, "--create"
        )

    assert not _exists(scratch_database)  # so the drill can simply be run again


def test_restore_create_drops_its_database_when_pg_restore_times_out(
    backup_dir, scratch_database, monkeypatch
):
    def too_slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(cmd="pg_restore", timeout=3600)

    monkeypatch.setattr(backups.subprocess, "run", too_slow)

    with pytest.raises(CommandError, match="did not finish in 3600 s"):
        call_command(
            "restore", "--dir", str(backup_dir), "--database", scratch_database, "--create"
        )

    assert not _exists(scratch_database)


def test_restore_of_a_missing_backup_is_refused_before_creating_anything(
    transactional_db, tmp_path, scratch_database
):
    with pytest.raises(CommandError, match="not a readable backup"):
        call_command(
            "restore",
            "--backup",
            str(tmp_path / "lexiscore-nope"),
            "--database",
            scratch_database,
            "--create",
        )

    assert not _exists(scratch_database)


def test_restore_create_into_an_existing_database_is_a_command_error(backup_dir, scratch_database):
    database_create(scratch_database)

    with pytest.raises(CommandError, match="exists already"):
        call_command(
            "restore", "--dir", str(backup_dir), "--database", scratch_database, "--create"
        )

    assert _exists(scratch_database)  # not ours: left alone


@pytest.mark.parametrize("form", ["dbname={name}", "postgresql:///{name}"])
def test_restore_refuses_a_connection_string_that_would_reach_the_live_database(
    backup_dir, form, monkeypatch
):
    ran = []
    monkeypatch.setattr(backups.subprocess, "run", lambda *args, **kwargs: ran.append(args))
    target = form.format(name=connection.settings_dict["NAME"])

    with pytest.raises(CommandError, match="not a connection string"):
        call_command("restore", "--dir", str(backup_dir), "--database", target)

    assert ran == []  # pg_restore never started


def test_backup_refuses_keep_zero_before_writing_a_backup(transactional_db, tmp_path):
    with pytest.raises(CommandError, match="--keep must be at least 1"):
        call_command("backup", "--dir", str(tmp_path), "--keep", "0", "--no-file-checksums")

    assert list(tmp_path.iterdir()) == []


def refuse_manifest_uploads(monkeypatch) -> None:
    """The storage refuses a backup's manifest (the last file copied): the upload fails after
    the local backup is complete."""
    real_save = FileSystemStorage.save

    def save_refused_for_the_manifest(storage, name, content, **kwargs):
        if name.endswith("manifest.json"):
            raise OSError("storage unreachable")
        return real_save(storage, name, content, **kwargs)

    monkeypatch.setattr(FileSystemStorage, "save", save_refused_for_the_manifest)


def test_backup_whose_upload_fails_says_the_local_backup_is_complete_and_still_prunes(
    transactional_db, tmp_path_factory, media_root, monkeypatch, capsys
):
    backup_root = tmp_path_factory.mktemp("local") / "backups"  # not under the storage's folder
    old = backup_root / "lexiscore-20200101T000000000000Z"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    stored_old = default_storage.save(
        "backups/lexiscore-20200101T000000000000Z/manifest.json", ContentFile(b"{}")
    )
    refuse_manifest_uploads(monkeypatch)

    with pytest.raises(CommandError) as raised:
        call_command(
            "backup",
            "--dir",
            str(backup_root),
            "--to-storage",
            "--keep",
            "1",
            "--no-file-checksums",
        )

    new = backups.backups_list(backup_root)
    assert len(new) == 1 and new[0] != old  # the old one was pruned
    message = str(raised.value)
    assert f"The local backup is complete at {new[0]}" in message
    assert "OSError: storage unreachable" in message
    assert "copies in storage were left as they were" in message
    assert capsys.readouterr().out.splitlines() == [str(new[0]), f"pruned {old.name}"]
    # The half-copied backup was taken back out of storage; the older copy is kept.
    assert not default_storage.exists(f"backups/{new[0].name}/database.dump")
    assert default_storage.exists(stored_old)


def test_the_daily_backup_task_prunes_local_backups_when_the_upload_fails_and_fails_itself(
    transactional_db, tmp_path_factory, media_root, monkeypatch, settings
):
    from workers.maintenance import backup_database

    backup_root = tmp_path_factory.mktemp("local") / "backups"
    old = backup_root / "lexiscore-20200101T000000000000Z"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    settings.BACKUP_DIR = str(backup_root)
    settings.BACKUP_KEEP = 1
    settings.BACKUP_TO_STORAGE = True
    refuse_manifest_uploads(monkeypatch)

    with pytest.raises(backups.BackupUploadError):
        backup_database()

    remaining = backups.backups_list(backup_root)
    assert len(remaining) == 1 and remaining[0] != old  # pruned as after any backup
