"""`GET /api/v1/jobs?q=`: transcripts found by what was said (and files by name), on PostgreSQL
full-text search with web-search syntax on the stored vector, served by the GIN index of
migration 0011."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.accounts.models import Role
from apps.audio_jobs import selectors
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptionJob
from tests.audio_jobs.factories import CompletedJobFactory, JobFactory, TranscriptFactory
from tests.factories import member

JOBS = "/api/v1/jobs"


def said(organisation, text: str, **job) -> str:
    """A completed job of `organisation` whose transcript says `text`; returns its id."""
    job.setdefault("original_filename", "recording.mp3")
    return str(
        TranscriptFactory(
            job=CompletedJobFactory(organisation=organisation, **job), text=text
        ).job_id
    )


def found(client, headers, q: str, **query) -> list[str]:
    response = client.get(JOBS, {"q": q, **query}, **headers)
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["results"]]


@pytest.fixture
def recordings(org) -> dict[str, str]:
    """Four recordings, created in this order (the list is newest first)."""
    return {
        "budget": said(org, "The quarterly budget was approved by the board."),
        "revenue": said(org, "Quarterly revenue grew; the budget stays the same."),
        "cafe": said(org, "Nous avons pris un CAFÉ à Genève."),
        "named": said(org, "Nothing relevant here.", original_filename="Board meeting 2024.mp3"),
    }


# ---- matching ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("approved", ["budget"]),
        ("quarterly", ["revenue", "budget"]),  # newest first
        ("QUARTERLY Budget", ["revenue", "budget"]),  # every word, any case, any order
        ("quarterly approved", ["budget"]),
        ('"quarterly revenue"', ["revenue"]),  # a phrase
        ('"budget quarterly"', []),  # its words, not in this order
        ("quarterly -approved", ["revenue"]),  # minus excludes
        ("approved or genève", ["cafe", "budget"]),
        ("café", ["cafe"]),
        ("Café", ["cafe"]),
        ("cafe", ["cafe"]),  # accents are folded (lexiscore_search: unaccent)
        ("geneve", ["cafe"]),
        ("quart", []),  # whole words, not prefixes
    ],
)
def test_transcripts_are_found_by_web_search_syntax(api_client, auth, recordings, q, expected):
    assert found(api_client, auth, q) == [recordings[name] for name in expected]


def test_file_names_are_found_by_any_part_of_them(api_client, auth, recordings):
    assert found(api_client, auth, "board meet") == [recordings["named"]]
    assert found(api_client, auth, "2024") == [recordings["named"]]


def test_a_word_in_the_transcript_or_the_file_name_finds_both_newest_first(
    api_client, auth, recordings
):
    # "board" is said in one recording and part of another's file name.
    assert found(api_client, auth, "board") == [recordings["named"], recordings["budget"]]


def test_the_search_combines_with_the_other_filters(api_client, auth, org, recordings):
    flagged = said(org, "The quarterly numbers again.", quality_warnings=2)
    JobFactory(organisation=org, original_filename="quarterly.mp3")  # queued, no transcript
    yesterday = (timezone.now() - timedelta(days=1)).isoformat()

    assert found(api_client, auth, "quarterly", flagged="true") == [flagged]
    assert found(api_client, auth, "quarterly", status="queued") != []
    assert found(api_client, auth, "quarterly", status="completed", created_before=yesterday) == []
    assert len(found(api_client, auth, "quarterly", status="completed")) == 3


def test_another_organisations_transcripts_and_files_never_match(api_client, auth, org):
    other = member(Role.OWNER).organisation
    said(other, "The secret merger with Initech.", original_filename="merger.mp3")

    assert found(api_client, auth, "merger") == []
    assert found(api_client, auth, "Initech") == []


def test_jobs_without_a_transcript_are_found_by_file_name_only(api_client, auth, org):
    job = JobFactory(organisation=org, original_filename="interview.wav", status=JobStatus.QUEUED)

    assert found(api_client, auth, "interview") == [str(job.pk)]
    assert found(api_client, auth, "quarterly") == []


# ---- odd input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "q",
    [
        '"',
        '"unclosed phrase',
        "\\",
        "back\\slash",
        "&|!:*()",
        "a & b | !c:* (d)",
        "'; DROP TABLE audio_jobs_transcript; --",
        "%_%",
        "-",
        "or",
        "<fast>",
        "日本語の会議",
        "x" * 200,
        " ".join(["word"] * 40),
    ],
)
def test_odd_input_never_fails(api_client, auth, recordings, q):
    response = api_client.get(JOBS, {"q": q}, **auth)

    assert response.status_code == 200, response.json()


def test_special_characters_match_literally_in_file_names(api_client, auth, org):
    job = JobFactory(organisation=org, original_filename="100%_done.mp3")
    JobFactory(organisation=org, original_filename="100 percent.mp3")

    assert found(api_client, auth, "100%_") == [str(job.pk)]


@pytest.mark.parametrize("q", ["   ", "\t\n", "x" * 201])
def test_a_blank_or_too_long_query_is_refused(api_client, auth, q):
    response = api_client.get(JOBS, {"q": q}, **auth)

    assert response.status_code == 400
    assert "q" in response.json()["error"]["details"]


def test_an_empty_query_is_no_filter_like_the_other_empty_filters(api_client, auth, recordings):
    """`?q=` is what a form with an empty search box sends."""
    response = api_client.get(JOBS, {"q": ""}, **auth)

    assert response.json()["count"] == 4


def test_a_nul_character_is_refused_not_a_server_error(api_client, auth):
    response = api_client.get(JOBS, {"q": "a\x00b"}, **auth)

    assert response.status_code == 400


# ---- edits and the read cache ------------------------------------------------------------------
def test_an_edited_transcript_is_found_by_its_new_text_at_once(api_client, auth, org):
    transcript = TranscriptFactory(job__organisation=org, job__original_filename="call.mp3")
    job_id = str(transcript.job_id)
    assert found(api_client, auth, "quarterly") == [job_id]  # cached from here on
    assert found(api_client, auth, "Globex") == []

    response = api_client.patch(
        f"{JOBS}/{job_id}/transcript",
        {"revision": 0, "segments": [{"id": 0, "text": "The Globex report is ready."}]},
        format="json",
        **auth,
    )

    assert response.status_code == 200, response.json()
    assert found(api_client, auth, "Globex") == [job_id]
    assert found(api_client, auth, "quarterly") == []


def test_each_query_is_cached_on_its_own(api_client, auth, recordings):
    assert found(api_client, auth, "approved") == [recordings["budget"]]

    assert found(api_client, auth, "genève") == [recordings["cafe"]]
    assert found(api_client, auth, "approved") == [recordings["budget"]]


# ---- the index ---------------------------------------------------------------------------------
def test_the_search_index_exists_after_migrate_on_the_query_expression(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'audio_jobs_transcript' "
            "AND indexname = 'transcript_text_search'"
        )
        [(definition,)] = cursor.fetchall()

    assert "USING gin (search_vector)" in definition


def test_the_stored_vector_follows_the_text_and_rows_written_before_the_trigger_are_filled(org):
    """The trigger fills `search_vector` on insert and on a change of text; the migration's
    backfill fills rows that have none (written before the trigger existed)."""
    import importlib

    backfill = importlib.import_module(
        "apps.audio_jobs.migrations.0011_transcript_text_search_index"
    ).backfill
    job_id = said(org, "The quarterly budget was approved.")
    transcript = Transcript.objects.get(job_id=job_id)
    transcript.text = "Revenue grew in spring."
    transcript.save(update_fields=["text"])
    old_id = said(org, "Old minutes of the board.")
    with connection.cursor() as cursor:
        # As if written before the trigger existed: triggers off for this one update.
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "UPDATE audio_jobs_transcript SET search_vector = NULL WHERE job_id = %s", [old_id]
        )
        cursor.execute("SET LOCAL session_replication_role = origin")

    def ids(q: str) -> list[str]:
        return [str(j.pk) for j in selectors.job_list(organisation=org, q=q)]

    assert (ids("revenue"), ids("budget"), ids("minutes")) == ([job_id], [], [])

    backfill(None, connection.schema_editor())

    assert ids("minutes") == [old_id]


def test_the_planner_serves_the_search_from_the_index(org):
    """An organisation with 2,000 transcripts: the GIN index finds the few that match rather
    than every transcript being read (the index's expression is the query's, or it could not)."""
    jobs = TranscriptionJob.objects.bulk_create(
        TranscriptionJob(organisation=org, status=JobStatus.COMPLETED, original_filename="a.mp3")
        for _ in range(2000)
    )
    Transcript.objects.bulk_create(
        Transcript(
            job=job,
            text=f"Routine status update number {n}.",
            language="en",
            language_probability=1.0,
            duration=1.0,
            segments=[],
        )
        for n, job in enumerate(jobs)
    )
    target = said(org, "The zeppelin landed on the roof.")
    queryset = selectors.job_list(organisation=org, q="zeppelin")

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audio_jobs_transcript")
        cursor.execute("ANALYZE audio_jobs_transcriptionjob")
        # Rule out a scan of the table (still cheap at this size) as a choice.
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "Bitmap Index Scan on transcript_text_search" in plan, plan
    assert [str(job.pk) for job in queryset] == [target]


def test_sqlite_falls_back_to_a_substring_match_of_the_text(org, monkeypatch):
    """The embedded defaults (SQLite) have no full-text search: `q` is a substring of the text."""
    said(org, "The quarterly report.")
    part = said(org, "Headquarters moved.")

    class SQLite:
        vendor = "sqlite"

    monkeypatch.setattr(selectors, "connection", SQLite())

    assert [str(job.pk) for job in selectors.job_list(organisation=org, q="QUARTERS")] == [part]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("quarterly budget", ["budget"]),  # every word, in any order
        ("budget quarterly", ["budget"]),
        ('"quarterly budget"', ["budget"]),  # a phrase, quotes not matched literally
        ('"budget quarterly"', []),
        ("quarterly -budget", ["revenue"]),  # minus excludes
        ('quarterly -"budget was"', ["revenue"]),
        ("- -- quarterly", ["revenue", "budget"]),  # operators alone are dropped
    ],
)
def test_sqlite_matches_words_phrases_and_exclusions(org, monkeypatch, q, expected):
    ids = {
        "budget": said(org, "The quarterly budget was approved."),
        "revenue": said(org, "Quarterly revenue grew."),
    }

    class SQLite:
        vendor = "sqlite"

    monkeypatch.setattr(selectors, "connection", SQLite())

    assert [str(j.pk) for j in selectors.job_list(organisation=org, q=q)] == [
        ids[name] for name in expected
    ]


@pytest.mark.parametrize(
    "q",
    ["-" * 200, "- " * 80, "-- " * 60 + "x", "!" * 100, "-!x " * 40, '"' * 50, "or " * 60],
)
def test_runs_of_operators_are_no_error(client, owner, auth, q):
    """33 lone "-" made websearch_to_tsquery fail ("tsquery stack too small"): a 500."""
    said(owner.organisation, "x marks the spot")

    response = client.get(JOBS, {"q": q[:200]}, **auth)

    assert response.status_code == 200, response.json()


def test_only_operators_match_no_transcript_but_still_file_names(org):
    said(org, "Anything at all.", original_filename="--.mp3")
    said(org, "Anything else.")

    assert [j.original_filename for j in selectors.job_list(organisation=org, q="--")] == ["--.mp3"]


def test_transcript_reads_leave_the_stored_vector_out_and_saves_never_write_it(org):
    """`search_vector` is SQL's alone: no read loads it (a few KB a row), no save writes it back
    (a save of a row read without it writes only what it loaded)."""
    from django.test.utils import CaptureQueriesContext

    job_id = said(org, "The quarterly budget was approved.")
    job = TranscriptionJob.objects.get(pk=job_id)

    with CaptureQueriesContext(connection) as reads:
        by_manager = Transcript.objects.get(job_id=job_id)
        by_relation = job.transcript
        [*Transcript.objects.filter(job__organisation=org).select_related("job")]
    with CaptureQueriesContext(connection) as saves:
        by_relation.text = "Revenue grew in spring."
        by_relation.save()

    assert by_manager.text and by_relation.text
    assert all("search_vector" not in query["sql"] for query in reads.captured_queries)
    assert all("search_vector" not in query["sql"] for query in saves.captured_queries)
    found = [str(j.pk) for j in selectors.job_list(organisation=org, q="revenue")]
    assert found == [job_id]  # the trigger made the vector of the new text


@pytest.mark.parametrize(
    ("q", "expected"),
    [("cafe", ["cafe", "accent"]), ("café", ["cafe", "accent"]), ("zurich", ["zurich"])],
)
def test_accents_are_folded_either_way(org, q, expected):
    ids = {
        "accent": said(org, "Meet me at the café."),
        "cafe": said(org, "The cafe opens at nine."),
        "zurich": said(org, "Our office in Zürich."),
    }

    found = {str(j.pk) for j in selectors.job_list(organisation=org, q=q)}

    assert found == {ids[name] for name in expected}


def test_sqlite_folds_accents_and_any_case():
    import sqlite3

    from apps.audio_jobs.search_index import fold, register_sqlite_fold

    class SQLiteConnection:
        vendor = "sqlite"
        connection = sqlite3.connect(":memory:")

    register_sqlite_fold(sender=None, connection=SQLiteConnection)
    cursor = SQLiteConnection.connection.execute(
        "SELECT lexiscore_fold(?), lexiscore_fold(?), lexiscore_fold(NULL)", ["Zürich", "STRASSE"]
    )

    assert cursor.fetchone() == ("zurich", "strasse", None)
    assert fold("Straße Ärger ÉCOLE Łódź Øresund") == "strasse arger ecole lodz oresund"


def test_file_names_and_words_with_digits_fold_accents_on_postgresql(org):
    named = said(org, "Nothing here.", original_filename="Réunion Zürich.mp3")
    numbered = said(org, "Table café2 is free.")

    def ids(q: str) -> list[str]:
        return [str(j.pk) for j in selectors.job_list(organisation=org, q=q)]

    assert ids("reunion zurich") == [named]
    assert ids("cafe2") == [numbered]
    with connection.cursor() as cursor:
        cursor.execute("SELECT lexiscore_fold('Łódź ÉCOLE')")
        assert cursor.fetchone()[0] == "lodz ecole"


def test_search_reindex_rebuilds_every_vector(org):
    from io import StringIO

    from django.core.management import call_command

    job_id = said(org, "Réunion à Genève.")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audio_jobs_transcript SET search_vector = to_tsvector('')")
    out = StringIO()

    call_command("search_reindex", "--batch", "1", stdout=out)

    assert "accents folded" in out.getvalue()
    assert [str(j.pk) for j in selectors.job_list(organisation=org, q="geneve")] == [job_id]
