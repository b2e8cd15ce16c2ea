"""Build report contents: data (dicts) first, then one renderer per format."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.template.loader import render_to_string
from django.utils import timezone

from . import analytics


class ReportInputError(ValueError):
    """The report cannot be built from what exists (never worth a retry)."""


def timestamp(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---- Transcript report --------------------------------------------------------------------------
def transcript_data(job) -> dict[str, Any]:
    from apps.audio_jobs.models import Transcript

    try:
        transcript = job.transcript
    except Transcript.DoesNotExist:
        raise ReportInputError("The job has no transcript (it has not completed).") from None
    words = analytics.words_from_segments(transcript.segments)
    data: dict[str, Any] = {
        "metadata": {
            "job_id": str(job.pk),
            "file": job.original_filename,
            "duration_seconds": transcript.duration,
            "duration": timestamp(transcript.duration),
            "language": transcript.language,
            "language_probability": round(transcript.language_probability, 3),
            "model": job.model_used or job.model_profile,
            "engine": job.engine,
            "task": job.task,
            "processing_seconds": round(job.processing_seconds or 0, 2),
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            # 0: the machine's transcript; more: edited by people (the text below is theirs).
            "transcript_revision": transcript.revision,
            "edited_at": transcript.edited_at,
        },
        "quality": _quality_data(job.quality),
        "analytics": analytics.analyse(
            words,
            bin_seconds=settings.REPORT_WPM_BIN_SECONDS,
            pause_seconds=settings.REPORT_LONG_PAUSE_SECONDS,
            low_confidence_below=settings.REPORT_LOW_CONFIDENCE_BELOW,
        ),
        "segments": [
            {
                "start": round(float(s.get("start", 0)), 2),
                "end": round(float(s.get("end", 0)), 2),
                "text": (s.get("text") or "").strip(),
            }
            for s in transcript.segments
        ],
    }
    speakers = analytics.speaker_analytics(words)
    if speakers:  # a diarized transcript; one without speakers is reported as before
        _add_speakers(data, job, transcript.segments, speakers)
    return data


def _add_speakers(
    data: dict[str, Any], job, segments: list[dict[str, Any]], speakers: list[dict[str, Any]]
) -> None:
    """The per-speaker analytics (`data["speakers"]`, each with the name it is shown under), the
    diarization model, and each transcript segment's speaker (`analytics.segment_speaker`)."""
    from apps.audio_jobs.formats import speaker_display

    names = job.speaker_names if isinstance(job.speaker_names, dict) else {}
    data["speakers"] = [{"name": speaker_display(s["label"], names), **s} for s in speakers]
    diarization = job.diarization if isinstance(job.diarization, dict) else {}
    if isinstance(diarization.get("model"), str):
        data["metadata"]["diarization_model"] = diarization["model"]
    for segment, row in zip(segments, data["segments"], strict=True):
        label = analytics.segment_speaker(segment)
        if label is not None:
            row["speaker"] = label
            row["speaker_name"] = speaker_display(label, names)


def _quality_data(quality: Any) -> dict[str, Any] | None:
    """The machine transcript's automatic checks for a report: a summary line and each flag with
    where it is (the stored spans, at most 20 a flag); None when the job was not checked."""
    from apps.audio_jobs.quality import quality_summary

    if not isinstance(quality, dict):
        return None

    def items(value: Any) -> list[dict]:  # stored JSON read defensively, as quality.py does
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    flags = []
    for flag in items(quality.get("flags")):
        spans = [
            {"start": span.get("start"), "end": span.get("end")}
            for span in items(flag.get("spans"))
        ]
        flags.append(
            {
                "code": flag.get("code"),
                "severity": flag.get("severity"),
                "message": flag.get("message"),
                "spans": spans,
                "span_count": flag.get("span_count")
                if isinstance(flag.get("span_count"), int)
                else len(spans),
            }
        )
    return {"summary": quality_summary(quality), "flags": flags}


def transcript_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False, indent=1).encode()


# With a byte-order mark: Excel reads a CSV without one in the machine's legacy code page, which
# garbles accented and non-Latin text (names, transcripts in other languages).
CSV_ENCODING = "utf-8-sig"
TRANSCRIPT_CSV_COLUMNS = ["start_seconds", "end_seconds", "start", "end", "speaker", "text"]


def transcript_csv(data: dict[str, Any]) -> bytes:
    """The timed transcript as a table, one row a segment, for spreadsheets and review tools:
    times in seconds and as hh:mm:ss.mmm, the speaker's name (empty without diarization) and the
    text, both neutralised against formula injection. The analytics are in the PDF and JSON."""
    from apps.audio_jobs.formats import format_timestamp  # WebVTT's hh:mm:ss.mmm

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(TRANSCRIPT_CSV_COLUMNS)
    for row in data["segments"]:
        writer.writerow(
            [
                f"{row['start']:.2f}",
                f"{row['end']:.2f}",
                format_timestamp(row["start"], decimal_marker="."),
                format_timestamp(row["end"], decimal_marker="."),
                _cell(row.get("speaker_name", "")),
                _cell(row["text"]),
            ]
        )
    return out.getvalue().encode(CSV_ENCODING)


def _pdf(template: str, context: dict[str, Any]) -> bytes:
    from weasyprint import HTML

    html = render_to_string(template, context)
    return HTML(string=html, base_url=str(settings.BASE_DIR)).write_pdf()


def _quality_pdf(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    if quality is None:
        return None
    flags = [
        {
            **flag,
            "at": ", ".join(
                timestamp(float(span["start"] or 0))
                for span in flag["spans"][:5]
                if isinstance(span.get("start"), int | float)
            ),
        }
        for flag in quality["flags"]
    ]
    return {**quality, "flags": flags}


def transcript_pdf(data: dict[str, Any]) -> bytes:
    segments = [{**s, "at": timestamp(s["start"])} for s in data["segments"]]
    a = data["analytics"]
    return _pdf(
        "reports/transcript.html",
        {
            "m": data["metadata"],
            "a": a,
            "segments": segments,
            "wpm_bins": [
                {**b, "at": timestamp(b["start"])} for b in a["words_per_minute_over_time"]
            ],
            "pauses": [{**p, "at": timestamp(p["start"])} for p in a["long_pauses"][:100]],
            "low": [{**p, "at": timestamp(p["start"])} for p in a["low_confidence_passages"][:100]],
            "quality": _quality_pdf(data.get("quality")),
            "speakers": data.get("speakers"),
            "generated_at": timezone.now(),
        },
    )


# ---- Usage report -------------------------------------------------------------------------------
USAGE_COLUMNS = ["jobs", "completed", "failed", "audio_minutes", "processing_seconds"]


def _aggregate(queryset, *group: str) -> list[dict[str, Any]]:
    rows = (
        queryset.values(*group)
        .annotate(
            jobs=Count("id"),
            completed=Count("id", filter=Q(status="completed")),
            failed=Count("id", filter=Q(status="failed")),
            audio=Coalesce(Sum("duration_seconds"), 0.0),
            processing=Coalesce(Sum("processing_seconds"), 0.0),
        )
        .order_by(*group)
    )
    return [
        {
            **{g: r[g] for g in group},
            "jobs": r["jobs"],
            "completed": r["completed"],
            "failed": r["failed"],
            "audio_minutes": round(r["audio"] / 60, 2),
            "processing_seconds": round(r["processing"], 1),
        }
        for r in rows
    ]


def usage_data(organisation, period_start: date, period_end: date) -> dict[str, Any]:
    from apps.audio_jobs import selectors
    from apps.audio_jobs.models import TranscriptionJob

    start = timezone.make_aware(datetime.combine(period_start, time.min), UTC)
    end = timezone.make_aware(datetime.combine(period_end, time.min), UTC)
    jobs = TranscriptionJob.objects.filter(
        organisation=organisation, created_at__gte=start, created_at__lt=end
    ).annotate(day=TruncDate("created_at", tzinfo=UTC), member=F("created_by__email"))
    by_day_member = _aggregate(jobs, "day", "member")
    for row in by_day_member:
        row["member"] = row["member"] or "(deleted user or API key)"
    by_member = _aggregate(jobs, "member")
    for row in by_member:
        row["member"] = row["member"] or "(deleted user or API key)"
    totals = _aggregate(jobs.annotate(all=F("organisation_id")), "all")
    total: dict[str, Any] = totals[0] if totals else dict.fromkeys(USAGE_COLUMNS, 0)
    # What the plan's quota counted for the period (the usage ledger): it keeps jobs deleted
    # since, and leaves out jobs that failed or were cancelled before any worker started them.
    counted = selectors.audio_seconds_used_by_day(organisation=organisation, since=start, until=end)
    by_day = {row["day"]: row for row in _aggregate(jobs, "day")}
    for day in counted.keys() - by_day.keys():
        by_day[day] = {"day": day, **dict.fromkeys(USAGE_COLUMNS, 0)}
    for day, row in by_day.items():
        row["quota_minutes"] = round(counted.get(day, 0.0) / 60, 2)
    total["quota_minutes"] = round(sum(counted.values()) / 60, 2)
    return {
        "organisation": organisation.name,
        "period_start": period_start,
        "period_end": period_end,
        "last_day": period_end - timedelta(days=1),
        "by_day_member": by_day_member,
        "by_member": by_member,
        "by_day": [by_day[day] for day in sorted(by_day)],
        "total": total,
    }


def usage_csv(data: dict[str, Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", "member", *USAGE_COLUMNS])
    for row in data["by_day_member"]:
        writer.writerow(
            [row["day"].isoformat(), _cell(row["member"]), *[row[c] for c in USAGE_COLUMNS]]
        )
    writer.writerow(["total", "", *[data["total"][c] for c in USAGE_COLUMNS]])
    writer.writerow(_quota_row(data))
    return out.getvalue().encode(CSV_ENCODING)


def _quota_row(data: dict[str, Any]) -> list[Any]:
    """The period's minutes counted against the quota, under the audio_minutes column."""
    cells: list[Any] = ["counted_against_quota", "", *[""] * len(USAGE_COLUMNS)]
    cells[2 + USAGE_COLUMNS.index("audio_minutes")] = data["total"]["quota_minutes"]
    return cells


def _cell(value: str) -> str:
    """Neutralise spreadsheet formulas in user-controlled text (CSV/formula injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def usage_xlsx(data: dict[str, Any]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    sheets = [
        ("By day and member", ["day", "member"], data["by_day_member"], USAGE_COLUMNS),
        ("By member", ["member"], data["by_member"], USAGE_COLUMNS),
        ("By day", ["day"], data["by_day"], [*USAGE_COLUMNS, "quota_minutes"]),
    ]
    for index, (title, keys, rows, columns) in enumerate(sheets):
        sheet = book.active if index == 0 else book.create_sheet()
        sheet.title = title
        sheet.append([*keys, *columns])
        for row in rows:
            sheet.append(
                [_cell(str(row[k])) if k == "member" else row[k] for k in keys]
                + [row[c] for c in columns]
            )
    first = book["By day and member"]
    first.append(["total", "", *[data["total"][c] for c in USAGE_COLUMNS]])
    first.append(_quota_row(data))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def usage_pdf(data: dict[str, Any]) -> bytes:
    return _pdf("reports/usage.html", {"d": data, "generated_at": timezone.now()})
