"""Editing a transcript: PATCH /jobs/{id}/transcript, its revisions, revert and ?revision=."""

from __future__ import annotations

import itertools
import json
import threading
import unicodedata

import pytest
from django.db import connection, transaction
from drf_spectacular.generators import SchemaGenerator

from apps.accounts.models import Role
from apps.audio_jobs import editing
from apps.audio_jobs.models import JobStatus, Transcript, TranscriptRevision
from apps.audit.models import AuditEvent
from apps.core.exceptions import ConflictError
from apps.feed.models import FeedEvent
from apps.reports import analytics
from tests.audio_jobs.factories import SEGMENTS, TEXT, JobFactory, TranscriptFactory
from tests.factories import ApiKeyFactory, api_key_header, bearer, member

JOBS = "/api/v1/jobs"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def transcript(org) -> Transcript:
    return TranscriptFactory(job__organisation=org)


def patch(client, headers, job_id, body):
    return client.patch(
        f"{JOBS}/{job_id}/transcript", json.dumps(body), content_type="application/json", **headers
    )


def revert(client, headers, job_id, body):
    return client.post(
        f"{JOBS}/{job_id}/transcript/revert",
        json.dumps(body),
        content_type="application/json",
        **headers,
    )


def edit_body(revision=0, **segment_texts):
    return {
        "revision": revision,
        "segments": [{"id": int(k[1:]), "text": v} for k, v in segment_texts.items()],
    }


# ---- who may edit ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.MEMBER])
def test_members_from_member_up_edit_a_transcript(api_client, org, transcript, role):
    editor = member(role, organisation=org)

    response = patch(
        api_client, bearer(editor.user, org), transcript.job_id, edit_body(s0="The annual report.")
    )

    assert response.status_code == 200, response.content
    assert response["X-Transcript-Revision"] == "1"
    body = response.json()
    assert body["revision"] == 1
    assert [s["id"] for s in body["segments"]] == [0]
    assert body["segments"][0]["text"] == " The annual report."
    transcript.refresh_from_db()
    assert transcript.revision == 1
    assert transcript.edited_at is not None
    assert transcript.text == "The annual report. Revenue grew <fast> & well."
    assert transcript.word_count == 8
    row = TranscriptRevision.objects.get(transcript=transcript)
    assert (row.revision, row.edited_by, row.api_key, row.editor_type) == (
        1,
        editor.user,
        None,
        "user",
    )


def test_an_api_key_edits_and_is_recorded_as_the_editor(api_client, org, transcript):
    key = ApiKeyFactory(organisation=org, role=Role.MEMBER)

    response = patch(api_client, api_key_header(key), transcript.job_id, edit_body(s1="Hi."))

    assert response.status_code == 200, response.content
    row = TranscriptRevision.objects.get(transcript=transcript)
    assert (row.api_key, row.edited_by, row.editor_type) == (key, None, "api_key")
    assert row.editor_repr == f"API key {key.prefix}"
    event = AuditEvent.objects.get(action="transcript.edited")
    assert (event.actor_type, event.api_key_id) == ("api_key", key.pk)


def test_viewers_and_viewer_keys_cannot_edit_or_revert(api_client, org, transcript):
    viewer = member(Role.VIEWER, organisation=org)
    key = ApiKeyFactory(organisation=org, role=Role.VIEWER)

    for headers in (bearer(viewer.user, org), api_key_header(key)):
        assert_error(
            patch(api_client, headers, transcript.job_id, edit_body(s0="x")),
            403,
            "insufficient_role",
        )
        assert_error(
            revert(api_client, headers, transcript.job_id, {"revision": 0, "current_revision": 0}),
            403,
            "insufficient_role",
        )
        listed = api_client.get(f"{JOBS}/{transcript.job_id}/transcript/revisions", **headers)
        assert listed.status_code == 200

    transcript.refresh_from_db()
    assert transcript.revision == 0
    assert not TranscriptRevision.objects.exists()


def test_another_organisation_gets_404_on_every_editing_endpoint(api_client, transcript):
    stranger = member(Role.OWNER)
    headers = bearer(stranger.user, stranger.organisation)
    job_id = transcript.job_id

    assert_error(patch(api_client, headers, job_id, edit_body(s0="x")), 404, "job_not_found")
    assert_error(
        revert(api_client, headers, job_id, {"revision": 0, "current_revision": 0}),
        404,
        "job_not_found",
    )
    listed = api_client.get(f"{JOBS}/{job_id}/transcript/revisions", **headers)
    assert_error(listed, 404, "job_not_found")
    original = api_client.get(f"{JOBS}/{job_id}/transcript", {"revision": 0}, **headers)
    assert_error(original, 404, "job_not_found")
    transcript.refresh_from_db()
    assert (transcript.revision, transcript.segments) == (0, SEGMENTS)


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.FAILED])
def test_a_job_that_is_not_completed_cannot_be_edited(api_client, auth, org, status):
    job = JobFactory(organisation=org, status=status)

    assert_error(patch(api_client, auth, job.pk, edit_body(s0="x")), 409, "transcript_not_ready")
    assert_error(
        revert(api_client, auth, job.pk, {"revision": 0, "current_revision": 0}),
        409,
        "transcript_not_ready",
    )


# ---- optimistic concurrency ------------------------------------------------------------------


def test_a_stale_revision_is_a_conflict_naming_the_current_one(api_client, auth, transcript):
    assert patch(api_client, auth, transcript.job_id, edit_body(s0="First.")).status_code == 200

    error = assert_error(
        patch(api_client, auth, transcript.job_id, edit_body(0, s1="Second.")),
        409,
        "transcript_revision_conflict",
    )

    assert error["details"] == {"current_revision": 1}
    transcript.refresh_from_db()
    assert transcript.segments[1]["text"] == SEGMENTS[1]["text"]
    assert TranscriptRevision.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_edits_of_one_revision_cannot_both_apply():
    transcript = TranscriptFactory()
    job = transcript.job
    first_locked, outcome = threading.Event(), {}

    def first() -> None:
        try:
            with transaction.atomic():
                editing.transcript_edit(
                    job=job, revision=0, segments=[{"id": 0, "text": "First wins."}]
                )
                first_locked.set()
                # The row lock is held until this commits: the second edit waits for it.
                threading.Event().wait(0.5)
            outcome["first"] = "applied"
        finally:
            first_locked.set()
            connection.close()

    def second() -> None:
        first_locked.wait(5)
        try:
            editing.transcript_edit(
                job=job, revision=0, segments=[{"id": 1, "text": "Second loses."}]
            )
            outcome["second"] = "applied"
        except ConflictError as exc:
            outcome["second"] = (exc.code, exc.details)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert outcome == {
        "first": "applied",
        "second": ("transcript_revision_conflict", {"current_revision": 1}),
    }
    transcript.refresh_from_db()
    assert transcript.revision == 1
    assert transcript.segments[0]["text"] == " First wins."
    assert transcript.segments[1]["text"] == SEGMENTS[1]["text"]
    assert list(TranscriptRevision.objects.values_list("revision", flat=True)) == [1]


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"segments": [{"id": 0, "text": "x"}]}, "revision"),
        ({"revision": -1, "segments": [{"id": 0, "text": "x"}]}, "revision"),
        ({"revision": "one", "segments": [{"id": 0, "text": "x"}]}, "revision"),
        ({"revision": 2**40, "segments": [{"id": 0, "text": "x"}]}, "revision"),
        ({"revision": 0}, "segments"),
        ({"revision": 0, "segments": []}, "segments"),
        ({"revision": 0, "segments": "text"}, "segments"),
        ({"revision": 0, "segments": [{"text": "x"}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": ""}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": " \n\t "}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": None}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "a" * 2001}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "nul\x00"}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "bell\x07"}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "half \ud800"}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "x", "start": 1}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "x"}, {"id": 0, "text": "y"}]}, "segments"),
        ({"revision": 0, "segments": [{"id": 0, "text": "x"}], "note": "n" * 501}, "note"),
        ({"revision": 0, "segments": [{"id": 0, "text": "x"}], "note": ["x"]}, "note"),
        ({"revision": 0, "segments": [{"id": 0, "text": "x"}], "words": []}, "words"),
    ],
)
def test_invalid_edit_bodies_are_refused_naming_the_field(
    api_client, auth, transcript, body, field
):
    response = patch(api_client, auth, transcript.job_id, body)

    error = assert_error(response, 400, "validation_error")
    assert field in error["details"]
    transcript.refresh_from_db()
    assert transcript.revision == 0


def test_more_segments_than_the_limit_are_refused(api_client, auth, transcript, settings):
    settings.TRANSCRIPT_EDIT_MAX_SEGMENTS = 1

    response = patch(api_client, auth, transcript.job_id, edit_body(s0="a", s1="b"))

    error = assert_error(response, 400, "validation_error")
    assert error["details"]["segments"] == ["At most 1 segments can be changed in one request."]


def test_a_segment_id_the_transcript_does_not_have_is_refused(api_client, auth, transcript):
    error = assert_error(
        patch(api_client, auth, transcript.job_id, edit_body(s0="ok", s7="no such")),
        400,
        "unknown_segment",
    )

    assert error["details"] == {"segment_ids": [7]}
    assert not TranscriptRevision.objects.exists()


def test_an_edit_that_changes_nothing_is_refused(api_client, auth, transcript):
    response = patch(
        api_client, auth, transcript.job_id, edit_body(s0="  The quarterly   report is ready. ")
    )

    assert_error(response, 400, "transcript_unchanged")
    assert not TranscriptRevision.objects.exists()


def test_a_form_body_is_refused_unread(api_client, auth, transcript):
    response = api_client.patch(
        f"{JOBS}/{transcript.job_id}/transcript", {"revision": "0"}, format="multipart", **auth
    )

    assert_error(response, 415, "unsupported_media_type")


def test_the_revision_limit_is_enforced(api_client, auth, transcript, settings):
    settings.TRANSCRIPT_MAX_REVISIONS = 1
    assert patch(api_client, auth, transcript.job_id, edit_body(s0="One.")).status_code == 200

    error = assert_error(
        patch(api_client, auth, transcript.job_id, edit_body(1, s0="Two.")),
        409,
        "transcript_revision_limit",
    )

    assert error["details"] == {"limit": 1, "revert_limit": 2}
    assert "reverted" in error["message"]


def test_a_transcript_at_the_revision_limit_can_still_be_reverted_up_to_twice_it(
    api_client, auth, transcript, settings
):
    # Regression: at the limit, reverts were refused too, freezing the transcript.
    settings.TRANSCRIPT_MAX_REVISIONS = 2
    patch(api_client, auth, transcript.job_id, edit_body(s0="One."))
    patch(api_client, auth, transcript.job_id, edit_body(1, s0="Two."))

    back = revert(api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 2})

    assert back.status_code == 200, back.content
    assert back["X-Transcript-Revision"] == "3"
    transcript.refresh_from_db()
    assert transcript.segments == SEGMENTS
    # Edits stay refused past the limit; reverts go on until twice it.
    assert_error(
        patch(api_client, auth, transcript.job_id, edit_body(3, s0="Three.")),
        409,
        "transcript_revision_limit",
    )
    assert (
        revert(
            api_client, auth, transcript.job_id, {"revision": 2, "current_revision": 3}
        ).status_code
        == 200
    )
    error = assert_error(
        revert(api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 4}),
        409,
        "transcript_revision_limit",
    )
    assert error["details"] == {"limit": 4}
    transcript.refresh_from_db()
    assert transcript.revision == 4


# ---- word timings ----------------------------------------------------------------------------


def test_surviving_words_keep_their_exact_timestamps():
    old = SEGMENTS[0]["words"]

    words = editing.retime_words(old, "The annual report is ready.", start=0.52, end=3.1)

    assert [w["word"] for w in words] == [" The", " annual", " report", " is", " ready."]
    assert words[0] == old[0]
    assert words[2:] == old[2:]
    assert words[1]["edited"] is True
    assert "probability" not in words[1]
    assert 0.7 <= words[1]["start"] <= words[1]["end"] <= 1.32


def test_new_words_are_timed_inside_the_gap_between_their_neighbours_in_order():
    old = SEGMENTS[0]["words"]

    words = editing.retime_words(
        old, "So the big quarterly sales report is finally ready now", start=0.52, end=3.1
    )

    texts = [w["word"].strip() for w in words]
    assert texts == [
        "So",
        "the",
        "big",
        "quarterly",
        "sales",
        "report",
        "is",
        "finally",
        "ready",
        "now",
    ]
    kept = {w["word"].strip(): w for w in words if "edited" not in w}
    assert (kept["quarterly"]["start"], kept["quarterly"]["end"]) == (0.7, 1.32)
    assert (kept["report"]["start"], kept["is"]["end"]) == (1.32, 2.1)
    # Case and punctuation changes keep the engine's times but are marked edited.
    the, ready = words[1], words[8]
    assert (the["start"], the["end"], the["edited"]) == (0.52, 0.7, True)
    assert (ready["start"], ready["end"], ready["edited"]) == (2.1, 3.1, True)
    # "So" before the first surviving word, "big" inside its gap, "now" after the last one.
    assert words[0]["start"] == words[0]["end"] == 0.52
    assert 0.7 <= words[2]["start"] <= words[2]["end"] <= 0.7
    assert words[9]["start"] == words[9]["end"] == 3.1
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    for previous, word in itertools.pairwise(words):
        assert previous["end"] <= word["start"] + 1e-9
        assert 0.52 <= word["start"] <= word["end"] <= 3.1


def test_a_rewritten_segment_spreads_its_words_over_the_segment():
    words = editing.retime_words(SEGMENTS[0]["words"], "Completely new words", start=0.52, end=3.1)

    assert [w["word"] for w in words] == [" Completely", " new", " words"]
    assert words[0]["start"] == 0.52 and words[-1]["end"] == 3.1
    assert all(w["edited"] and "probability" not in w for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


def test_unspaced_languages_match_characters_and_keep_whole_old_words():
    old = [
        {"word": "今天", "start": 0.0, "end": 0.4, "probability": 0.9},
        {"word": "天气", "start": 0.4, "end": 0.8, "probability": 0.8},
        {"word": "很好", "start": 0.8, "end": 1.2, "probability": 0.7},
    ]

    words = editing.retime_words(old, "今天天气非常好", start=0.0, end=1.2)

    assert "".join(w["word"] for w in words) == "今天天气非常好"
    assert words[0] == old[0] and words[1] == old[1]
    assert all(w.get("edited") for w in words[2:])
    assert all(0.8 <= w["start"] <= w["end"] <= 1.2 for w in words[2:])


def test_a_second_edit_keeps_the_edited_mark_of_words_already_corrected(
    api_client, auth, transcript
):
    # Regression: a surviving word got the old word's probability if any and nothing else, so
    # a word corrected by the first edit came out of the second as a plain engine word.
    patch(api_client, auth, transcript.job_id, edit_body(s0="The annual report is ready."))
    patch(api_client, auth, transcript.job_id, edit_body(1, s0="The annual report is now ready."))

    transcript.refresh_from_db()
    words = transcript.segments[0]["words"]
    assert words[1] == {"start": 0.7, "end": 1.32, "word": " annual", "edited": True}
    assert words[0] == SEGMENTS[0]["words"][0]
    assert [w["word"] for w in words] == [" The", " annual", " report", " is", " now", " ready."]


def test_a_word_inserted_between_adjacent_survivors_stays_in_order_inside_the_segment():
    old = SEGMENTS[0]["words"]  # " is" ends at 2.1 where " ready." starts: no room at all

    words = editing.retime_words(old, "The quarterly report is now ready.", start=0.52, end=3.1)

    now = words[4]
    assert (now["word"], now["start"], now["end"], now["edited"]) == (" now", 2.1, 2.1, True)
    assert words[:4] + words[5:] == old


def test_inserted_words_get_a_positive_length_when_the_gap_has_room():
    old = [
        {"word": " a", "start": 0.0, "end": 0.5, "probability": 0.9},
        {"word": " b", "start": 0.502, "end": 1.0, "probability": 0.9},
    ]

    words = editing.retime_words(old, "a x y b", start=0.0, end=1.0)

    assert [(w["word"], w["start"], w["end"]) for w in words[1:3]] == [
        (" x", 0.5, 0.501),
        (" y", 0.501, 0.502),
    ]
    assert (words[0], words[3]) == (old[0], old[1])


def test_rounding_never_puts_a_new_word_before_the_previous_word_ends():
    old = [
        {"word": " a", "start": 0.0, "end": 2.1004, "probability": 0.9},
        {"word": " b", "start": 2.1016, "end": 3.0, "probability": 0.9},
        {"word": " c", "start": 3.0004, "end": 3.0006, "probability": 0.9},
        {"word": " d", "start": 3.0006, "end": 4.0, "probability": 0.9},
    ]

    words = editing.retime_words(old, "a x b c y d", start=0.0, end=4.0)

    x, y = words[1], words[4]
    # Less than two whole milliseconds between a and b: unrounded, never before a's end.
    assert (x["start"], x["end"]) == (2.1004, 2.1016)
    # No room at all between c and d: zero length at c's end.
    assert y["start"] == y["end"] == 3.0006
    for previous, word in itertools.pairwise(words):
        assert previous["end"] <= word["start"]


def test_an_engine_word_starting_before_the_segment_does_not_make_times_go_backwards():
    old = [{"word": " b", "start": -0.2, "end": 0.3}]

    words = editing.retime_words(old, "new b", start=0.0, end=1.0)

    assert words[1] == old[0]
    assert words[0]["start"] <= words[0]["end"] <= words[1]["start"]


def test_an_unchanged_first_word_without_a_leading_space_is_not_marked_edited():
    old = [
        {"word": "Hello", "start": 0.0, "end": 0.4, "probability": 0.9},
        {"word": " world", "start": 0.4, "end": 0.9, "probability": 0.9},
    ]

    words = editing.retime_words(old, "Hello world again", start=0.0, end=1.5)

    assert words[:2] == old
    assert words[2]["word"] == " again" and words[2]["edited"] is True
    # A case change keeps the engine's spacing too.
    assert editing.retime_words(old, "hello world", start=0.0, end=1.5)[0]["word"] == "hello"


def test_unspaced_scripts_split_into_grapheme_clusters_not_lone_marks():
    # Regression: Thai was split by code point, so tone marks and vowels became words.
    thai = [{"word": "สวัสดี", "start": 0.0, "end": 0.5}, {"word": "ครับ", "start": 0.5, "end": 1.0}]

    words = editing.retime_words(thai, "สวัสดีค่ะ", start=0.0, end=1.0)

    assert words[0] == thai[0]
    assert "".join(w["word"] for w in words) == "สวัสดีค่ะ"
    assert [w["word"] for w in words[1:]] == ["ค่", "ะ"]
    for word in words:
        assert not unicodedata.category(word["word"].strip()[0]).startswith("M"), words
    # Kana with a combining voiced mark (decomposed) stays one unit.
    kana = editing.retime_words(
        [{"word": "か", "start": 0.0, "end": 0.5}], "か\u3099き", start=0.0, end=1.0
    )
    assert [w["word"] for w in kana] == ["か\u3099", "き"]


def test_a_latin_word_in_a_cjk_segment_does_not_switch_it_to_space_splitting():
    # Regression: one word with a leading space (Whisper's " OK" in Chinese) made the whole
    # segment split at spaces, so a one-character fix lost every surviving word's times.
    old = [
        {"word": "我们", "start": 0.0, "end": 0.4, "probability": 0.9},
        {"word": " OK", "start": 0.4, "end": 0.6, "probability": 0.8},
        {"word": "明天", "start": 0.6, "end": 0.9, "probability": 0.7},
        {"word": "见", "start": 1.0, "end": 1.2, "probability": 0.6},
    ]

    words = editing.retime_words(old, "我们 OK明天再见", start=0.0, end=1.2)

    assert [w["word"] for w in words] == ["我们", " OK", "明天", "再", "见"]
    assert words[:3] == old[:3] and words[4] == old[3]
    assert words[3]["edited"] is True and 0.9 <= words[3]["start"] < words[3]["end"] <= 1.0


def test_the_schema_requires_revision_and_segments_and_declares_the_revision_header():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]

    edit = paths["/api/v1/jobs/{job_id}/transcript"]["patch"]
    ref = edit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert not ref.rsplit("/", 1)[-1].startswith("Patched")
    assert set(component["required"]) == {"revision", "segments"}
    assert component["properties"]["segments"]["minItems"] == 1
    assert edit["requestBody"]["required"] is True
    for path, method in [
        ("/api/v1/jobs/{job_id}/transcript", "get"),
        ("/api/v1/jobs/{job_id}/transcript", "patch"),
        ("/api/v1/jobs/{job_id}/transcript/revert", "post"),
    ]:
        header = paths[path][method]["responses"]["200"]["headers"]["X-Transcript-Revision"]
        assert header["schema"] == {"type": "integer"}, (path, method)
        assert header["required"] is True
    # A response header, not a request parameter.
    assert all(p["name"] != "X-Transcript-Revision" for p in edit.get("parameters", []))


def test_edited_words_render_and_count_in_reports(api_client, auth, transcript):
    patch(api_client, auth, transcript.job_id, edit_body(s1="Revenue grew quickly and well."))
    transcript.refresh_from_db()

    words = analytics.words_from_segments(transcript.segments)

    assert [w.text.strip() for w in words][5:] == ["Revenue", "grew", "quickly", "and", "well."]
    assert all(w.probability == 1.0 for w in words if w.text in (" quickly", " and"))
    assert transcript.segments[1]["edited"] is True
    assert "tokens" not in transcript.segments[1]
    assert transcript.segments[0] == SEGMENTS[0]


# ---- renders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["srt", "vtt", "json", "txt"])
def test_every_format_shows_the_edit_even_after_a_cached_render(api_client, auth, transcript, fmt):
    url = f"{JOBS}/{transcript.job_id}/transcript"
    before = api_client.get(url, {"format": fmt}, **auth)
    assert b"quarterly" in before.content
    assert before["X-Transcript-Revision"] == "0"
    assert before["Cache-Control"] == "private, no-cache"

    patch(api_client, auth, transcript.job_id, edit_body(s0="The Quarterly Report is late."))
    after = api_client.get(url, {"format": fmt}, **auth)

    assert after.status_code == 200
    assert after["X-Transcript-Revision"] == "1"
    assert b"Quarterly Report is late." in after.content
    assert b"quarterly report is ready" not in after.content
    if fmt == "json":
        body = after.json()
        assert body["text"] == "The Quarterly Report is late. Revenue grew <fast> & well."
        assert [w["word"] for w in body["words"][:5]] == [
            "The",
            "Quarterly",
            "Report",
            "is",
            "late.",
        ]


def test_revision_zero_serves_the_machine_output_in_any_format(api_client, auth, transcript):
    url = f"{JOBS}/{transcript.job_id}/transcript"
    original = {f: api_client.get(url, {"format": f}, **auth).content for f in ("srt", "json")}
    patch(api_client, auth, transcript.job_id, edit_body(s0="Changed once."))
    patch(api_client, auth, transcript.job_id, edit_body(1, s0="Changed twice.", s1="And here."))

    for fmt, content in original.items():
        response = api_client.get(url, {"format": fmt, "revision": 0}, **auth)
        assert response.status_code == 200
        assert response["X-Transcript-Revision"] == "0"
        assert response.content == content
    middle = api_client.get(url, {"format": "txt", "revision": 1}, **auth)
    assert middle.content.decode() == "Changed once.\nRevenue grew <fast> & well.\n"
    current = api_client.get(url, {"format": "txt", "revision": 2}, **auth)
    assert current.content.decode() == "Changed twice.\nAnd here.\n"


@pytest.mark.parametrize("revision", ["3", "-1", "x", str(2**40)])
def test_a_revision_that_does_not_exist_is_a_400(api_client, auth, transcript, revision):
    response = api_client.get(
        f"{JOBS}/{transcript.job_id}/transcript", {"revision": revision}, **auth
    )

    error = assert_error(
        response, 400, "invalid_revision" if revision == "3" else "validation_error"
    )
    if revision == "3":
        assert error["details"] == {"revision": 3, "current_revision": 0}
        assert "0 (the machine output) to 0" in error["message"]


# ---- revert ------------------------------------------------------------------------------------


def test_revert_to_the_machine_output_restores_it_exactly_as_a_new_revision(
    api_client, auth, transcript
):
    patch(api_client, auth, transcript.job_id, edit_body(s0="One."))
    patch(api_client, auth, transcript.job_id, edit_body(1, s1="Two.", s0="Three."))

    response = revert(
        api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 2, "note": "undo"}
    )

    assert response.status_code == 200, response.content
    assert response.json()["revision"] == 3
    transcript.refresh_from_db()
    assert transcript.segments == SEGMENTS
    assert (transcript.text, transcript.word_count, transcript.revision) == (TEXT, 10, 3)
    row = TranscriptRevision.objects.get(revision=3)
    assert (row.kind, row.reverted_to, row.segment_ids, row.note) == ("revert", 0, [0, 1], "undo")
    assert TranscriptRevision.objects.count() == 3


def test_revert_to_an_intermediate_revision(api_client, auth, transcript):
    patch(api_client, auth, transcript.job_id, edit_body(s0="One."))
    at_one = Transcript.objects.get(pk=transcript.pk)
    patch(api_client, auth, transcript.job_id, edit_body(1, s1="Two."))

    assert (
        revert(
            api_client, auth, transcript.job_id, {"revision": 1, "current_revision": 2}
        ).status_code
        == 200
    )

    transcript.refresh_from_db()
    assert transcript.segments == at_one.segments
    assert (transcript.text, transcript.word_count) == (at_one.text, at_one.word_count)
    assert TranscriptRevision.objects.get(revision=3).segment_ids == [1]


def test_a_transcript_whose_text_is_not_its_segments_joined_reverts_to_that_text(
    api_client, auth, org
):
    transcript = TranscriptFactory(job__organisation=org, text="Engine's own text.")
    patch(api_client, auth, transcript.job_id, edit_body(s0="Edited."))

    revert(api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 1})

    transcript.refresh_from_db()
    assert transcript.text == "Engine's own text."
    assert transcript.segments == SEGMENTS


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"revision": 0, "current_revision": 0}, 409, "transcript_revision_conflict"),
        ({"revision": 1, "current_revision": 1}, 400, "invalid_revision"),
        ({"revision": 5, "current_revision": 1}, 400, "invalid_revision"),
        ({"revision": 0}, 400, "validation_error"),
        ({"revision": -1, "current_revision": 1}, 400, "validation_error"),
        ({"revision": 0, "current_revision": 1, "extra": 1}, 400, "validation_error"),
    ],
)
def test_invalid_reverts_are_refused(api_client, auth, transcript, body, status, code):
    patch(api_client, auth, transcript.job_id, edit_body(s0="One."))

    assert_error(revert(api_client, auth, transcript.job_id, body), status, code)
    transcript.refresh_from_db()
    assert transcript.revision == 1


def test_a_revert_to_the_text_it_already_has_is_refused(api_client, auth, transcript):
    patch(api_client, auth, transcript.job_id, edit_body(s0="One."))
    revert(api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 1})

    response = revert(api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 2})

    assert_error(response, 400, "transcript_unchanged")


# ---- side effects ------------------------------------------------------------------------------


def test_an_edit_and_a_revert_write_audit_and_feed_events_without_the_text(
    api_client, org, owner, auth, transcript
):
    patch(api_client, auth, transcript.job_id, edit_body(s0="Secret words."))
    revert(api_client, auth, transcript.job_id, {"revision": 0, "current_revision": 1})

    audit = list(
        AuditEvent.objects.filter(action__startswith="transcript.").order_by("occurred_at")
    )
    assert [(e.action, e.metadata) for e in audit] == [
        (
            "transcript.edited",
            {"job_id": str(transcript.job_id), "revision": 1, "segments_changed": 1},
        ),
        (
            "transcript.reverted",
            {
                "job_id": str(transcript.job_id),
                "revision": 2,
                "segments_changed": 1,
                "reverted_to": 0,
            },
        ),
    ]
    assert all(e.actor == owner.user and e.organisation_id == org.pk for e in audit)
    assert all(e.target_id == str(transcript.job_id) for e in audit)
    feed = list(FeedEvent.objects.filter(type__startswith="transcript.").order_by("id"))
    assert [(e.type, e.subject_id, e.data["revision"]) for e in feed] == [
        ("transcript.edited", transcript.job_id, 1),
        ("transcript.reverted", transcript.job_id, 2),
    ]
    assert feed[0].data["segment_ids"] == [0]
    assert feed[1].data["reverted_to"] == 0
    assert "Secret" not in json.dumps([e.metadata for e in audit] + [e.data for e in feed])


def test_the_feed_lists_transcript_events(api_client, auth, transcript):
    patch(api_client, auth, transcript.job_id, edit_body(s0="Seen live."))

    events = api_client.get("/api/v1/events", {"after": 0}, **auth).json()["results"]

    assert [e["type"] for e in events] == ["transcript.edited"]
    assert events[0]["subject_id"] == str(transcript.job_id)


# ---- history -----------------------------------------------------------------------------------


def test_revisions_are_listed_newest_first_in_pages(api_client, org, owner, auth, transcript):
    key = ApiKeyFactory(organisation=org, role=Role.MEMBER)
    for revision in range(3):
        headers = api_key_header(key) if revision == 1 else auth
        body = {**edit_body(revision, s0=f"Edit {revision}."), "note": f"note {revision}"}
        assert patch(api_client, headers, transcript.job_id, body).status_code == 200
    url = f"{JOBS}/{transcript.job_id}/transcript/revisions"

    first = api_client.get(url, {"page_size": 2}, **auth).json()
    second = api_client.get(url, {"page_size": 2, "page": 2}, **auth).json()

    assert first["count"] == 3
    assert [r["revision"] for r in first["results"]] == [3, 2]
    assert [r["revision"] for r in second["results"]] == [1]
    newest, by_key = first["results"]
    assert newest == {
        "revision": 3,
        "kind": "edit",
        "reverted_to": None,
        "segment_ids": [0],
        "note": "note 2",
        "editor_type": "user",
        "editor_id": str(owner.user.public_id),
        "editor": owner.user.email,
        "api_key_prefix": None,
        "created_at": newest["created_at"],
    }
    assert (by_key["editor_type"], by_key["api_key_prefix"], by_key["editor_id"]) == (
        "api_key",
        key.prefix,
        None,
    )
    assert_error(api_client.get(url, {"page": 3, "page_size": 2}, **auth), 404, "not_found")


def test_a_job_without_edits_has_no_revisions(api_client, auth, transcript):
    response = api_client.get(f"{JOBS}/{transcript.job_id}/transcript/revisions", **auth)

    assert response.json()["count"] == 0


def test_deleting_a_job_deletes_its_revisions(api_client, auth, transcript):
    patch(api_client, auth, transcript.job_id, edit_body(s0="One."))

    assert api_client.delete(f"{JOBS}/{transcript.job_id}", **auth).status_code == 204

    assert not TranscriptRevision.objects.exists()


def test_the_job_admin_shows_the_history_read_only(client, transcript):
    from django.contrib import admin
    from django.urls import reverse

    from apps.accounts.models import User

    editing.transcript_edit(
        job=transcript.job, revision=0, segments=[{"id": 1, "text": "x"}], note="fix <b>"
    )
    client.force_login(User.objects.create_superuser("root@example.com", "a-long-Passphrase-42"))

    response = client.get(
        reverse("admin:audio_jobs_transcriptionjob_change", args=[transcript.job_id])
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "1: edit by system at" in page
    assert "segments 1 (fix &lt;b&gt;)" in page
    # No page of its own: history cannot be added, changed or deleted there.
    assert TranscriptRevision not in admin.site._registry
