"""Backup -> restore round trip into a scratch database, with the manifest's row counts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command

from apps.core import backups
from apps.core.backups import backups_list, backups_prune, database_drop
from apps.core.models import DeadLetter


@pytest.fixture
def scratch_database():
    name = f"lexiscore_restore_{uuid.uuid4().hex[:12]}"
    yield name
    database_drop(name)


def test_backup_restores_into_a_scratch_database_with_matching_row_counts(
    transactional_db, tmp_path, scratch_database, capsys
):
    for index in range(3):
        DeadLetter.objects.create(task_name="t", task_id=f"id-{index}", queue="email")
    key = default_storage.save(f"audio/{uuid.uuid4().hex}.wav", ContentFile(b"RIFF-audio"))

    call_command("backup", "--dir", str(tmp_path), "--keep", "3")
    backup = backups_list(tmp_path)[-1]
    manifest = json.loads((backup / "manifest.json").read_text())
    call_command("restore", "--dir", str(tmp_path), "--database", scratch_database, "--create")

    out = capsys.readouterr().out
    assert manifest["row_counts"]["core_deadletter"] == 3
    assert next(f for f in manifest["stored_files"] if f["key"] == key) == {
        "key": key,
        "size": 10,
        "sha256": hashlib.sha256(b"RIFF-audio").hexdigest(),
    }
    assert f"into {scratch_database}" in out
    assert "row counts match the manifest" in out


def test_restore_refuses_the_live_database(transactional_db, tmp_path):
    from django.core.management.base import CommandError
    from django.db import connection

    call_command("backup", "--dir", str(tmp_path), "--no-file-checksums")

    with pytest.raises(CommandError, match="Refusing to restore over the live database"):
        call_command(
            "restore", "--dir", str(tmp_path), "--database", connection.settings_dict["NAME"]
        )


def test_prune_keeps_the_newest_backups(tmp_path):
    for name in (
        "lexiscore-20260101T000000Z",
        "lexiscore-20260102T000000Z",
        "lexiscore-20260103T000000Z",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")

    removed = backups_prune(keep=2, directory=tmp_path)

    assert removed == ["lexiscore-20260101T000000Z"]
    assert [p.name for p in backups_list(tmp_path)] == [
        "lexiscore-20260102T000000Z",
        "lexiscore-20260103T000000Z",
    ]


def _backup_folders(root, *names):
    for name in names:
        (root / name).mkdir()
        (root / name / "manifest.json").write_text("{}")
        (root / name / "database.dump").write_bytes(b"PGDMP")


def test_prune_counts_a_folder_another_prune_already_deleted_as_pruned(tmp_path, monkeypatch):
    _backup_folders(
        tmp_path,
        "lexiscore-20260101T000000Z",
        "lexiscore-20260102T000000Z",
        "lexiscore-20260103T000000Z",
    )
    listed = backups_list(tmp_path)

    def listed_then_pruned_elsewhere(directory=None):
        # The other prune deletes the oldest folder after this one listed it.
        shutil.rmtree(listed[0])
        return listed

    monkeypatch.setattr(backups, "backups_list", listed_then_pruned_elsewhere)

    removed = backups_prune(keep=2, directory=tmp_path)

    assert removed == ["lexiscore-20260101T000000Z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lexiscore-20260102T000000Z",
        "lexiscore-20260103T000000Z",
    ]


def test_prune_finishes_a_folder_another_prune_is_halfway_through(tmp_path, monkeypatch):
    _backup_folders(tmp_path, "lexiscore-20260101T000000Z", "lexiscore-20260102T000000Z")
    oldest = tmp_path / "lexiscore-20260101T000000Z"
    real_unlink = os.unlink

    def unlink_raced(path, *args, **kwargs):
        if str(path).endswith("database.dump") or path == "database.dump":
            real_unlink(path, *args, **kwargs)  # the other prune got there first
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_raced)

    removed = backups_prune(keep=1, directory=tmp_path)

    assert removed == ["lexiscore-20260101T000000Z"]
    assert not oldest.exists()


def test_a_half_written_copy_in_storage_does_not_push_out_a_complete_one(
    tmp_path_factory, media_root
):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from apps.core.backups import DUMP_NAME, MANIFEST_NAME, STORAGE_PREFIX

    def copy(name: str, *, complete: bool = True) -> None:
        default_storage.save(f"{STORAGE_PREFIX}/{name}/{DUMP_NAME}", ContentFile(b"dump"))
        if complete:
            default_storage.save(f"{STORAGE_PREFIX}/{name}/{MANIFEST_NAME}", ContentFile(b"{}"))

    copy("lexiscore-20260101T000000Z")
    copy("lexiscore-20260102T000000Z")
    copy("lexiscore-20260103T000000Z", complete=False)  # its upload failed half-way
    copy("lexiscore-20260104T000000Z")

    removed = backups_prune(keep=2, directory=tmp_path_factory.mktemp("local"))

    def stored(name: str) -> list[str]:
        return [
            file
            for file in (DUMP_NAME, MANIFEST_NAME)
            if default_storage.exists(f"{STORAGE_PREFIX}/{name}/{file}")
        ]

    assert removed == ["lexiscore-20260101T000000Z", "lexiscore-20260103T000000Z"]
    assert stored("lexiscore-20260101T000000Z") == []
    # Two complete copies are kept; the half-written one, older than the newest complete copy
    # (so not being uploaded), goes.
    assert stored("lexiscore-20260102T000000Z") == [DUMP_NAME, MANIFEST_NAME]
    assert stored("lexiscore-20260103T000000Z") == []
    assert stored("lexiscore-20260104T000000Z") == [DUMP_NAME, MANIFEST_NAME]


def test_a_copy_being_uploaded_now_is_left_alone(tmp_path_factory, media_root):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from apps.core.backups import DUMP_NAME, MANIFEST_NAME, STORAGE_PREFIX

    default_storage.save(
        f"{STORAGE_PREFIX}/lexiscore-20260101T000000Z/{DUMP_NAME}", ContentFile(b"d")
    )
    default_storage.save(
        f"{STORAGE_PREFIX}/lexiscore-20260101T000000Z/{MANIFEST_NAME}", ContentFile(b"{}")
    )
    uploading = f"{STORAGE_PREFIX}/lexiscore-20260102T000000Z/{DUMP_NAME}"
    default_storage.save(uploading, ContentFile(b"d"))  # no manifest yet: newest of all

    assert backups_prune(keep=1, directory=tmp_path_factory.mktemp("local")) == []
    assert default_storage.exists(uploading)
