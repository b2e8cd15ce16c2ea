"""The archive of a data export (a report of kind `export`): one ZIP, built by streaming.

`build_export(report, fileobj)` writes the ZIP into `fileobj` (an anonymous temp file from
`export_temp_file`, which has no name on disk: closing it, or the process dying, frees it) and
returns the manifest. Every member file is written in pieces (querysets read with `.iterator()`,
audio copied in 1 MiB chunks), so memory does not grow with the organisation; ZIP64 entries
allow members and archives past 4 GiB.

Layout (docs/architecture.md, "Data export"):

    manifest.json                 format_version, generated_at, scope, organisation, requested_by,
                                  counts, notes, and path/size/sha256 of every other file
    organisation.json
    members.json, invitations.json                           (organisation scope)
    user.json, memberships.json, notification_preferences.json   (member scope)
    jobs.jsonl                    job metadata, engine/model provenance, no storage keys, no
                                  callback URLs
    transcripts/<job>.json|.srt|.vtt|.txt       the current revision
    transcripts/<job>.revisions.json            its edit history (no previous texts)
    transcripts/<job>.original.json             the machine output, once edited (revision > 0)
    usage.csv                     the AudioUsage ledger
    api_keys.json                 metadata only: never the key or its hash
    share_links.json              transcript share links: never the token or its hash
    webhook_endpoints.json        no secrets                    (organisation scope)
    webhook_deliveries.jsonl      newest EXPORT_MAX_WEBHOOK_DELIVERIES (organisation scope)
    audit_events.jsonl
    reports.jsonl                 metadata of the other reports
    audio/<job>.<ext>             with include_audio, stored uncompressed

A member export reads only through the `export_*` selectors with the member's user, so it holds
nothing of other members.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from apps.audio_jobs import formats

from . import selectors
from .models import ExportScope, Report
from .rendering import ReportInputError

FORMAT_VERSION = 1
TRANSCRIPT_FORMATS = ("json", "srt", "vtt", "txt")
COPY_CHUNK_BYTES = 1024 * 1024
ROWS_PER_QUERY = 500
# Transcripts hold every word with its timings: fewer rows per round trip.
TRANSCRIPTS_PER_QUERY = 50
AUDIO_MISSING_LISTED = 1000
# What a member export names another member who edited one of the member's transcripts.
OTHER_MEMBER = "another member"


class ExportAudioTooLarge(ReportInputError):
    """The audio asked for is over EXPORT_MAX_AUDIO_BYTES (never worth a retry)."""

    code = "export_audio_too_large"


class ExportNotAllowed(ReportInputError):
    """The person who asked may no longer have this export (removed, demoted, deleted)."""

    code = "export_not_allowed"


def export_temp_file() -> IO[bytes]:
    """An anonymous temp file (unlinked at creation: nothing to remove, even after a SIGKILL)."""
    return tempfile.TemporaryFile(
        prefix="lexiscore-export-", dir=settings.FILE_UPLOAD_TEMP_DIR or None
    )


def _json(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, indent=indent)


class _Member:
    """One file being written into the archive: counts its bytes and hashes them."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._raw.write(data)
        self.size += len(data)
        self.sha256.update(data)

    def text(self, text: str) -> None:
        self.write(text.encode("utf-8"))

    def line(self, value: Any) -> None:
        self.text(_json(value) + "\n")


class _Archive:
    def __init__(self, fileobj: IO[bytes]) -> None:
        self.zip = zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self.files: list[dict[str, Any]] = []
        self._date_time = timezone.now().timetuple()[:6]

    @contextmanager
    def member(self, path: str, *, stored: bool = False) -> Iterator[_Member]:
        info = zipfile.ZipInfo(path, date_time=self._date_time)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        # force_zip64: the size is not known before the member is written (audio, long lists).
        with self.zip.open(info, "w", force_zip64=True) as raw:
            member = _Member(raw)
            yield member
        self.files.append({"path": path, "size": member.size, "sha256": member.sha256.hexdigest()})

    def json_file(self, path: str, value: Any) -> None:
        with self.member(path) as member:
            member.text(_json(value, indent=2) + "\n")

    def json_array(self, path: str, rows: Iterator[dict[str, Any]]) -> int:
        """A JSON array written one element at a time."""
        count = 0
        with self.member(path) as member:
            member.text("[")
            for row in rows:
                member.text(("," if count else "") + "\n  " + _json(row))
                count += 1
            member.text("\n]\n" if count else "]\n")
        return count

    def jsonl(self, path: str, rows: Iterator[dict[str, Any]]) -> int:
        count = 0
        with self.member(path) as member:
            for row in rows:
                member.line(row)
                count += 1
        return count

    def close(self) -> None:
        self.zip.close()


# ---- Rows ---------------------------------------------------------------------------------------
def _user_ref(user: Any) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.public_id, "email": user.email, "full_name": user.full_name}


def _organisation(organisation: Any) -> dict[str, Any]:
    return {
        "id": organisation.id,
        "name": organisation.name,
        "plan": organisation.plan,
        "is_active": organisation.is_active,
        "redact_pii": organisation.redact_pii,
        "redact_pii_audio": organisation.redact_pii_audio,
        "audio_retention_days": organisation.audio_retention_days,
        "job_retention_days": organisation.job_retention_days,
        "share_links_enabled": organisation.share_links_enabled,
        "hotwords": organisation.hotwords,
        "created_at": organisation.created_at,
    }


def _share(share: Any) -> dict[str, Any]:
    # Never the token's hash: with it, a leaked archive would let anyone test guesses offline.
    return {
        "id": share.id,
        "job_id": share.job_id,
        "token_prefix": share.token_prefix,
        "note": share.note,
        "created_by": _user_ref(share.created_by),
        "created_at": share.created_at,
        "expires_at": share.expires_at,
        "revoked_at": share.revoked_at,
        "access_count": share.access_count,
        "last_accessed_at": share.last_accessed_at,
    }


def _membership(membership: Any) -> dict[str, Any]:
    user = membership.user
    return {
        "id": membership.id,
        "user": _user_ref(user),
        "role": membership.role,
        "user_is_active": user.is_active,
        "joined_at": membership.created_at,
    }


def _invitation(invitation: Any) -> dict[str, Any]:
    return {
        "id": invitation.id,
        "email": invitation.email,
        "role": invitation.role,
        "status": invitation.status,
        "invited_by": _user_ref(invitation.invited_by),
        "accepted_by": _user_ref(invitation.accepted_by),
        "sent_count": invitation.sent_count,
        "created_at": invitation.created_at,
        "last_sent_at": invitation.last_sent_at,
        "accepted_at": invitation.accepted_at,
        "expires_at": invitation.expires_at,
    }


def _user(user: Any) -> dict[str, Any]:
    return {
        "id": user.public_id,
        "email": user.email,
        "full_name": user.full_name,
        "is_active": user.is_active,
        "date_joined": user.date_joined,
        "email_verified_at": user.email_verified_at,
        "last_login": user.last_login,
    }


def _job(job: Any) -> dict[str, Any]:
    # Deliberately no audio_key (a storage key), worker, heartbeat or lease bookkeeping.
    return {
        "id": job.id,
        "created_by": _user_ref(job.created_by),
        "original_filename": job.original_filename,
        "status": job.status,
        "task": job.task,
        "language": job.language,
        "model_profile": job.model_profile,
        "priority": job.priority,
        "word_timestamps": job.word_timestamps,
        "initial_prompt": job.initial_prompt,
        "hotwords": job.hotwords,
        # Never `callback_url`: the legacy per-job callback may carry a token in its query.
        "idempotency_key": job.idempotency_key,
        "size_bytes": job.size_bytes,
        "container": job.container,
        "codec": job.codec,
        "duration_seconds": job.duration_seconds,
        "audio_stored": bool(job.audio_key),
        "engine": job.engine,
        "model_used": job.model_used,
        "engine_settings": job.engine_settings,
        "processing_seconds": job.processing_seconds,
        "attempts": job.attempts,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "redact_pii": job.redact_pii,
        "redact_pii_audio": job.redact_pii_audio,
        "redaction": job.redaction,
        "diarize": job.diarize,
        "speakers_expected": job.speakers_expected,
        "max_speakers": job.max_speakers,
        "diarization": job.diarization,
        "speaker_names": job.speaker_names,
        "legal_hold_at": job.legal_hold_at,
        "created_at": job.created_at,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _api_key(api_key: Any) -> dict[str, Any]:
    # Metadata only: the key is never stored, and its hash never leaves the database.
    return {
        "id": api_key.id,
        "name": api_key.name,
        "prefix": api_key.prefix,
        "role": api_key.role,
        "created_by": _user_ref(api_key.created_by),
        "created_at": api_key.created_at,
        "expires_at": api_key.expires_at,
        "last_used_at": api_key.last_used_at,
        "revoked_at": api_key.revoked_at,
        "revoked_by": _user_ref(api_key.revoked_by),
    }


def _webhook_endpoint(endpoint: Any) -> dict[str, Any]:
    # Never `secret` nor `previous_secret`.
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "is_active": endpoint.is_active,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "consecutive_failures": endpoint.consecutive_failures,
        "failing_since": endpoint.failing_since,
        "created_by": _user_ref(endpoint.created_by),
        "created_at": endpoint.created_at,
    }


def _webhook_delivery(delivery: Any) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_attempt_at": delivery.last_attempt_at,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "delivered_at": delivery.delivered_at,
        "redeliveries": delivery.redeliveries,
        "redelivered_at": delivery.redelivered_at,
        "created_at": delivery.created_at,
        "payload": delivery.payload,
    }


def _audit_event(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "actor_type": event.actor_type,
        "actor_id": event.actor.public_id if event.actor_id and event.actor else None,
        "actor_email": event.actor_email,
        "api_key_prefix": event.api_key.prefix if event.api_key_id and event.api_key else None,
        "organisation_id": event.organisation_id,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_repr": event.target_repr,
        "metadata": event.metadata,
    }


def _report(report: Report) -> dict[str, Any]:
    return {
        "id": report.id,
        "kind": report.kind,
        "format": report.format,
        "export_scope": report.export_scope or None,
        "status": report.status,
        "job_id": report.job_id,
        "period_start": report.period_start,
        "period_end": report.period_end,
        "scheduled": report.scheduled,
        "filename": report.filename,
        "size_bytes": report.size_bytes,
        "error_code": report.error_code,
        "created_at": report.created_at,
        "finished_at": report.finished_at,
        "expires_at": report.expires_at,
    }


def _revision(revision: Any, *, member: Any) -> dict[str, Any]:
    """One edit or revert of a transcript, as GET /jobs/<id>/transcript/revisions lists it (the
    stored editor label, not the previous text). In a member export, another member's email is
    theirs: the edit is said to be another member's."""
    from apps.audio_jobs.models import EditorType

    editor = revision.editor_repr
    if (
        member is not None
        and revision.editor_type == EditorType.USER
        and revision.edited_by_id != member.pk
    ):
        editor = OTHER_MEMBER
    return {
        "revision": revision.revision,
        "kind": revision.kind,
        "reverted_to": revision.reverted_to,
        "segment_ids": revision.segment_ids,
        "editor_type": revision.editor_type,
        "editor": editor,
        "note": revision.note,
        "created_at": revision.created_at,
    }


def _notification_preferences(preference: Any) -> dict[str, Any]:
    from apps.notifications.models import NotificationPreference

    preference = preference or NotificationPreference()  # never saved: the defaults
    return {
        "job": preference.job,
        "report": preference.report,
        "weekly_usage": preference.weekly_usage,
        "webhook_alerts": preference.webhook_alerts,
        "updated_at": preference.updated_at,
    }


def _rows(queryset: Any, row: Any, *, chunk_size: int = ROWS_PER_QUERY) -> Iterator[dict]:
    for item in queryset.iterator(chunk_size=chunk_size):
        yield row(item)


# ---- The archive --------------------------------------------------------------------------------
def requester_check(report: Report) -> Any:
    """The user the export is for; refuses one who may no longer have it (checked when it is
    built: they may have been removed or demoted since they asked)."""
    from apps.accounts.models import Membership, Role, role_at_least

    user = report.created_by
    membership = (
        Membership.objects.filter(organisation_id=report.organisation_id, user=user).first()
        if user is not None and user.is_active
        else None
    )
    if membership is None:
        raise ExportNotAllowed("The person who asked for this export is no longer a member.")
    if report.export_scope == ExportScope.ORGANISATION and not role_at_least(
        membership.role, Role.ADMIN
    ):
        raise ExportNotAllowed(
            "The person who asked for this export is no longer an owner or admin."
        )
    return user


def audio_bytes_of(*, organisation: Any, user: Any = None) -> int:
    """What the stored audio of an export's jobs adds up to (as recorded on the jobs)."""
    from django.db.models import Sum

    total = selectors.export_audio_jobs(organisation=organisation, user=user).aggregate(
        total=Sum("size_bytes")
    )["total"]
    return int(total or 0)


def audio_cap_check(*, total: int) -> None:
    cap = settings.EXPORT_MAX_AUDIO_BYTES
    if total > cap:
        raise ExportAudioTooLarge(
            f"The audio of this export is {total} bytes, over the limit of {cap} "
            "(EXPORT_MAX_AUDIO_BYTES). Ask for the export without audio."
        )


_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def _audio_extension(key: str) -> str:
    suffix = PurePosixPath(key).suffix
    return suffix.lower() if _EXTENSION.match(suffix) else ".bin"


def build_export(report: Report, fileobj: IO[bytes]) -> dict[str, Any]:
    """Write the export's ZIP into `fileobj`; returns its manifest. Raises ReportInputError for
    an export that cannot be built (not worth a retry), anything else for a transient failure."""
    user = requester_check(report)
    archive = _Archive(fileobj)
    try:
        manifest = _write(archive, report, user)
    except BaseException:
        # Close it now, while its file is open (the caller discards both): left to the garbage
        # collector, the ZipFile would write into a closed file.
        with contextlib.suppress(Exception):
            archive.close()
        raise
    archive.close()
    return manifest


def _write(archive: _Archive, report: Report, user: Any) -> dict[str, Any]:
    organisation = report.organisation
    member = user if report.export_scope == ExportScope.MEMBER else None
    scope = {"organisation": organisation, "user": member}
    counts: dict[str, int] = {}
    notes: dict[str, Any] = {}

    archive.json_file("organisation.json", _organisation(organisation))
    if member is None:
        counts["members"] = archive.json_array(
            "members.json", _rows(selectors.export_memberships(**scope), _membership)
        )
        counts["invitations"] = archive.json_array(
            "invitations.json",
            _rows(selectors.export_invitations(organisation=organisation), _invitation),
        )
    else:
        archive.json_file("user.json", _user(member))
        counts["memberships"] = archive.json_array(
            "memberships.json", _rows(selectors.export_memberships(**scope), _membership)
        )
        archive.json_file(
            "notification_preferences.json",
            _notification_preferences(selectors.export_notification_preferences(user=member)),
        )

    counts["jobs"] = archive.jsonl("jobs.jsonl", _rows(selectors.export_jobs(**scope), _job))
    counts["transcripts"] = counts["transcript_revisions"] = 0
    for transcript in selectors.export_transcripts(**scope).iterator(
        chunk_size=TRANSCRIPTS_PER_QUERY
    ):
        # Whatever the stored transcript holds (as_result), rendered as the API renders it.
        _write_transcript(archive, transcript.job_id, transcript.as_result())
        counts["transcript_revisions"] += _write_history(archive, transcript, member=member)
        counts["transcripts"] += 1

    with archive.member("usage.csv") as out:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["job_id", "seconds", "job_created_at", "recorded_at"])
        counts["usage_rows"] = 0
        for usage in selectors.export_usage(**scope).iterator(chunk_size=ROWS_PER_QUERY):
            writer.writerow(
                [
                    usage.job_id,
                    f"{usage.seconds:.3f}",
                    usage.job_created_at.isoformat(),
                    usage.recorded_at.isoformat(),
                ]
            )
            counts["usage_rows"] += 1
            if buffer.tell() > COPY_CHUNK_BYTES:
                out.text(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
        out.text(buffer.getvalue())

    counts["api_keys"] = archive.json_array(
        "api_keys.json", _rows(selectors.export_api_keys(**scope), _api_key)
    )
    counts["share_links"] = archive.json_array(
        "share_links.json", _rows(selectors.export_shares(**scope), _share)
    )
    if member is None:
        counts["webhook_endpoints"] = archive.json_array(
            "webhook_endpoints.json",
            _rows(selectors.export_webhook_endpoints(organisation=organisation), _webhook_endpoint),
        )
        cap = settings.EXPORT_MAX_WEBHOOK_DELIVERIES
        deliveries = selectors.export_webhook_deliveries(organisation=organisation)
        counts["webhook_deliveries"] = archive.jsonl(
            "webhook_deliveries.jsonl", _rows(deliveries[:cap], _webhook_delivery)
        )
        notes["webhook_deliveries"] = (
            f"The newest {cap} deliveries at most (EXPORT_MAX_WEBHOOK_DELIVERIES), newest first."
        )
        notes["webhook_deliveries_truncated"] = counts["webhook_deliveries"] >= cap and (
            deliveries[cap : cap + 1].exists()
        )
    counts["audit_events"] = archive.jsonl(
        "audit_events.jsonl", _rows(selectors.export_audit_events(**scope), _audit_event)
    )
    counts["reports"] = archive.jsonl(
        "reports.jsonl",
        _rows(selectors.export_reports(exclude_id=report.pk, **scope), _report),
    )

    counts["audio_files"] = 0
    if report.include_audio:
        counts["audio_files"], notes["audio_missing"] = _write_audio(archive, scope)
        notes["audio"] = (
            "Included: the stored files under audio/: as uploaded, or, for a job whose PII "
            "redaction silenced its audio (redaction.audio: silenced), that FLAC copy."
        )
    else:
        notes["audio"] = "Not included (ask for the export with include_audio)."

    manifest = {
        "format_version": FORMAT_VERSION,
        "generated_at": timezone.now(),
        "export_id": report.pk,
        "scope": report.export_scope,
        "organisation": {"id": organisation.id, "name": organisation.name},
        "requested_by": _user_ref(user),
        "include_audio": report.include_audio,
        "counts": counts,
        "notes": notes,
        "files": archive.files,
    }
    # Last, so it can list every other file; it does not list itself.
    archive.json_file("manifest.json", manifest)
    return manifest


def _write_transcript(archive: _Archive, job_id: Any, result: dict[str, Any]) -> None:
    for fmt in TRANSCRIPT_FORMATS:
        body, _media_type, extension = formats.render_transcript(result, fmt, pretty=True)
        with archive.member(f"transcripts/{job_id}.{extension}") as out:
            out.text(body)


def _write_history(archive: _Archive, transcript: Any, *, member: Any) -> int:
    """`<job>.revisions.json` (the edits and reverts, oldest first) and, once it was edited,
    `<job>.original.json` (revision 0, the machine output, rebuilt as GET
    /jobs/<id>/transcript?revision=0 serves it). Returns how many revisions it lists."""
    from apps.audio_jobs.editing import transcript_state_at

    path = f"transcripts/{transcript.job_id}"
    with archive.member(f"{path}.revisions.json") as out:
        head = _json({"current_revision": transcript.revision, "edited_at": transcript.edited_at})
        out.text(head[:-1] + ', "revisions": [')  # the object, left open for the list
        count = 0
        for revision in selectors.export_transcript_revisions(transcript=transcript).iterator(
            chunk_size=ROWS_PER_QUERY
        ):
            out.text(("," if count else "") + "\n  " + _json(_revision(revision, member=member)))
            count += 1
        out.text("\n]}\n" if count else "]}\n")
    if transcript.revision > 0:
        state = transcript_state_at(transcript=transcript, revision=0)
        body, _media_type, _extension = formats.render_transcript(
            state.as_result(transcript), "json", pretty=True
        )
        with archive.member(f"{path}.original.json") as out:
            out.text(body)
    return count


def _write_audio(archive: _Archive, scope: dict[str, Any]) -> tuple[int, list[str]]:
    """Copy each job's stored audio into audio/, uncompressed; refuses to pass the cap."""
    audio_cap_check(total=audio_bytes_of(**scope))
    cap = settings.EXPORT_MAX_AUDIO_BYTES
    written = files = 0
    missing: list[str] = []
    for job in selectors.export_audio_jobs(**scope).iterator(chunk_size=ROWS_PER_QUERY):
        try:
            handle = default_storage.open(job.audio_key, "rb")
        except FileNotFoundError:
            # Deleted by retention (or with its job) since the export began.
            if len(missing) < AUDIO_MISSING_LISTED:
                missing.append(str(job.pk))
            continue
        with (
            handle,
            archive.member(f"audio/{job.pk}{_audio_extension(job.audio_key)}", stored=True) as out,
        ):
            while chunk := handle.read(COPY_CHUNK_BYTES):
                written += len(chunk)
                if written > cap:  # files larger than their jobs say, or jobs added since
                    audio_cap_check(total=written)
                out.write(chunk)
        files += 1
    return files, missing
