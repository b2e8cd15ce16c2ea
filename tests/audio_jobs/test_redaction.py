"""Pattern-based PII redaction of a transcript (`apps.audio_jobs.redaction`): pure functions of
a result's dict form, no database.

The word lists marked "tiny.en" are what the tiny.en model wrote for synthesized speech of the
sentence quoted next to them, verbatim.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from apps.audio_jobs.editing import join_text
from apps.audio_jobs.redaction import (
    ENTITY_TYPES,
    SUBSTITUTIONS,
    RedactedSpan,
    redact_result,
    summarise,
)

ALL = ENTITY_TYPES

# "Please call me on 555 123 4567 tomorrow."
TINY_PHONE = [" Please", " call", " me", " on", " 555", "-120", "-34", ",567", " tomorrow"]
# "My card number is 4111 1111 1111 1111"
TINY_CARD = [" My", " car", " number", " is", " 4", ",111", ",111", ",101", ",111", ",101"]
TINY_CARD += [",111", ",101", ",111", " and"]
# "My social security number is 123 45 6789."
TINY_SSN = [" My", " social", " security", " number", " is", " 100,", " 23,", " 4,", " 5,"]
TINY_SSN += [" 6,", " 700,", " 80,", " I'm"]
# "The server is at 192.168.1.20"
TINY_IP = [" The", " server", " is", " at", " 192", ".16,", " 8", ".1", ".2,", " 0", ".2,"]
TINY_IP += [" 0", ".2,", " 0", ".8"]
# "john dot smith at example dot com"
TINY_EMAIL = [" john.mit.emple.com"]
IBAN_AND_EMAIL = " Pay GB82 WEST 1234 5698 7654 32 or jane at example dot com"
TWO_CARDS = " My card ends 4111 1111 1111 1111 and 4000 1234 5678 9010 too"
CHATTER = (
    " So we met in 2019, and she said call me on 555 123 4567 or write to jane@example.com"
    " and the meeting is at 10:30 in room 101 which cost $1,500 for one of the days."
)


def timed(
    tokens: list[str], *, start: float = 0.0, step: float = 0.4, probability: float = 0.9
) -> list[dict[str, Any]]:
    """Whisper-style words (each with its leading space) `step` seconds apart."""
    return [
        {
            "start": round(start + i * step, 3),
            "end": round(start + i * step + step * 0.8, 3),
            "word": token,
            "probability": probability,
        }
        for i, token in enumerate(tokens)
    ]


def segment(seg_id: int, words: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "id": seg_id,
        "seek": 0,
        "start": words[0]["start"],
        "end": words[-1]["end"],
        "text": "".join(w["word"] for w in words),
        "tokens": [50364, 1012, 2051, 50564],
        "temperature": 0.0,
        "avg_logprob": -0.3,
        "compression_ratio": 1.2,
        "no_speech_prob": 0.01,
        "words": words,
        **fields,
    }


def untimed(seg_id: int, text: str, start: float, end: float) -> dict[str, Any]:
    """A segment transcribed without word timestamps."""
    fields = segment(seg_id, [{"start": start, "end": end, "word": text}])
    return {**fields, "words": []}


def result(*segments: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": join_text(segments),
        "language": "en",
        "language_probability": 0.99,
        "duration": 60.0,
        "segments": list(segments),
        "task": "transcribe",
        "engine_info": {"engine": "faster-whisper"},
    }


def spoken(text: str) -> list[str]:
    """`text` in Whisper's words, each with its leading space."""
    return [f" {token}" for token in text.split()]


def said(text: str, **options: Any) -> tuple[str, list[RedactedSpan]]:
    """`text` as one timed segment, redacted (every policy unless `policies` says): its new text
    and the spans."""
    options.setdefault("policies", ALL)
    data = result(segment(0, timed(spoken(text))))
    spans = redact_result(data, **options)
    return data["text"], spans


def said_untimed(text: str, **options: Any) -> tuple[str, list[RedactedSpan]]:
    """`text` as one segment without word timings, redacted like `said`."""
    options.setdefault("policies", ALL)
    data = result(untimed(0, f" {text}", 0.0, 3.0))
    spans = redact_result(data, **options)
    return data["text"], spans


def with_check_digits(country: str, bban: str) -> str:
    """An IBAN of `country` and `bban` (of any length) with the check digits that make it pass."""
    digits = "".join(str(int(ch, 36)) for ch in (bban + country + "00").replace(" ", "").upper())
    return f"{country}{98 - int(digits) % 97:02d} {bban}"


# ---- Whisper's real output ------------------------------------------------------------------


def test_a_phone_number_as_tiny_en_wrote_it_becomes_one_redacted_word():
    words = timed(TINY_PHONE)
    words[5]["probability"] = 0.41
    data = result(segment(0, words))
    untouched = copy.deepcopy(words[:4] + words[8:])

    spans = redact_result(data, ["phone_number"])

    merged = data["segments"][0]["words"][4]
    assert merged == {
        "start": 1.6,
        "end": 3.12,
        "word": " [PHONE_NUMBER]",
        "probability": 0.41,
        "redacted": "phone_number",
    }
    assert data["segments"][0]["words"][:4] + data["segments"][0]["words"][5:] == untouched
    assert data["segments"][0]["text"] == " Please call me on [PHONE_NUMBER] tomorrow"
    assert data["text"] == "Please call me on [PHONE_NUMBER] tomorrow"
    assert spans == [RedactedSpan("phone_number", 0, 1.6, 3.12, True)]


def test_a_card_number_as_tiny_en_wrote_it_is_too_long_for_a_card_and_is_a_number_sequence():
    # 25 digits, and Whisper heard "car", not "card": no card, only a long number.
    data = result(segment(0, timed(TINY_CARD)))
    before = copy.deepcopy(data)

    assert redact_result(data, ["credit_card_number", "phone_number"]) == []
    assert data == before

    spans = redact_result(data, ["credit_card_number", "number_sequence"])

    assert data["text"] == "My car number is [NUMBER_SEQUENCE] and"
    assert [(s.entity, s.start, s.end) for s in spans] == [("number_sequence", 1.6, 5.12)]


def test_a_social_security_number_as_tiny_en_wrote_it_is_one_by_the_words_before_it():
    # 13 digits, not 9: the words "social security" say what it is.
    data = result(segment(0, timed(TINY_SSN)))

    spans = redact_result(data, ["us_social_security_number"])

    assert data["text"] == "My social security number is [US_SOCIAL_SECURITY_NUMBER], I'm"
    assert data["segments"][0]["words"][-2]["word"] == " [US_SOCIAL_SECURITY_NUMBER],"
    assert summarise(spans) == {"us_social_security_number": 1}


def test_a_padded_social_security_number_is_a_phone_number_when_only_those_are_redacted():
    data = result(segment(0, timed(TINY_SSN)))

    spans = redact_result(data, ["phone_number"])

    assert data["text"] == "My social security number is [PHONE_NUMBER], I'm"
    assert summarise(spans) == {"phone_number": 1}


def test_an_ip_address_as_tiny_en_wrote_it_is_an_ip_address():
    data = result(segment(0, timed(TINY_IP)))

    spans = redact_result(data, ["ip_address"])

    assert data["text"] == "The server is at [IP_ADDRESS]"
    assert [(s.entity, s.start, s.end) for s in spans] == [("ip_address", 1.6, 5.92)]
    assert len(data["segments"][0]["words"]) == 5


def test_a_spoken_email_address_that_tiny_en_mangled_is_not_found():
    data = result(segment(0, timed(TINY_EMAIL)))
    before = copy.deepcopy(data)

    assert redact_result(data, ALL) == []
    assert data == before


# ---- each entity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call 555-123-4567 now.", "Call [PHONE_NUMBER] now."),
        ("Call (555) 123-4567.", "Call [PHONE_NUMBER]."),
        ("Ring +44 (20) 7946 0958 today.", "Ring [PHONE_NUMBER] today."),
        ("It is 555.123.4567, thanks.", "It is [PHONE_NUMBER], thanks."),
        ("Dial five five five one two three four.", "Dial [PHONE_NUMBER]."),
        ("Dial Five-Five-Five, one, two, three, four.", "Dial [PHONE_NUMBER]."),
        ("Dial five oh five one two three four now.", "Dial [PHONE_NUMBER] now."),
        ("Oh, 555 123 4567 it is.", "Oh, [PHONE_NUMBER] it is."),
    ],
)
def test_phone_numbers(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert summarise(spans) == {"phone_number": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is 4111 1111 1111 1111.", "It is [CREDIT_CARD_NUMBER]."),  # Luhn
        ("It is 5500-0055-5555-5559 ok", "It is [CREDIT_CARD_NUMBER] ok"),  # Luhn
        ("My visa is 4000 1234 5678 9010.", "My visa is [CREDIT_CARD_NUMBER]."),  # a cue
        ("The card, it is 4000123456789012", "The card, it is [CREDIT_CARD_NUMBER]"),  # a cue
    ],
)
def test_credit_card_numbers(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert summarise(spans) == {"credit_card_number": 1}


def test_a_long_number_that_fails_luhn_and_has_no_card_word_is_not_a_card():
    redacted, spans = said("Order 4000 1234 5678 9010 shipped.")

    assert redacted == "Order [NUMBER_SEQUENCE] shipped."
    assert summarise(spans) == {"number_sequence": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is 123-45-6789.", "It is [US_SOCIAL_SECURITY_NUMBER]."),  # the 3-2-4 shape
        ("It is 123 45 6789 ok", "It is [US_SOCIAL_SECURITY_NUMBER] ok"),
        ("My SSN: 987654321.", "My SSN: [US_SOCIAL_SECURITY_NUMBER]."),  # a cue
        ("Social security no. 900-12-3456", "Social security no. [US_SOCIAL_SECURITY_NUMBER]"),
    ],
)
def test_social_security_numbers(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert summarise(spans) == {"us_social_security_number": 1}


@pytest.mark.parametrize("number", ["900-12-3456", "666-12-3456", "000-12-3456", "123-00-4567"])
def test_a_3_2_4_number_with_an_area_or_group_never_issued_is_no_ssn_without_a_cue(number):
    redacted, spans = said(f"Reference {number} please.")

    assert redacted == "Reference [PHONE_NUMBER] please."
    assert summarise(spans) == {"phone_number": 1}


@pytest.mark.parametrize(
    "iban", ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00"]
)
def test_ibans(iban):
    redacted, spans = said(f"Pay to {iban}. Thanks")

    assert redacted == "Pay to [IBAN]. Thanks"
    assert summarise(spans) == {"iban": 1}


def test_an_iban_failing_its_check_digits_is_no_iban():
    redacted, spans = said("Pay to GB83 WEST 1234 5698 7654 32 soon", policies=["iban"])

    assert "GB83 WEST" in redacted
    assert spans == []


def test_a_valid_iban_wins_over_the_digit_runs_inside_it():
    text = "Pay to GB82 WEST 1234 5698 7654 32 soon"

    assert said(text, policies=["iban", "phone_number"])[0] == "Pay to [IBAN] soon"
    # Its digits are no phone number, whatever is asked for...
    assert said(text, policies=["phone_number", "credit_card_number"]) == (text, [])
    # ... but they are a long number: the whole IBAN goes when those are redacted.
    assert said(text, policies=["number_sequence"])[0] == "Pay to [NUMBER_SEQUENCE] soon"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The server is at 192.168.1.20", "The server is at [IP_ADDRESS]"),
        ("Ping 10.0.0.1, then stop.", "Ping [IP_ADDRESS], then stop."),
        ("Use 2001:db8::8a2e:370:7334 now", "Use [IP_ADDRESS] now"),
        ("Use fe80::1ff:fe23:4567:890a.", "Use [IP_ADDRESS]."),
    ],
)
def test_ip_addresses(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert summarise(spans) == {"ip_address": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+news@example.co.uk.", "Write to [EMAIL_ADDRESS]."),
        ("Write to john @ example.com today", "Write to [EMAIL_ADDRESS] today"),
        ("Write to jane at example dot com.", "Write to [EMAIL_ADDRESS]."),
        ("Write to Jane Dot Doe at Example Dot Co Dot UK", "Write to [EMAIL_ADDRESS]"),
        ("Write to jane at example.org, ok", "Write to [EMAIL_ADDRESS], ok"),
        ("Email me at jane at example dot com", "Email me at [EMAIL_ADDRESS]"),
    ],
)
def test_email_addresses(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert summarise(spans) == {"email_address": 1}


def test_two_matches_in_one_word_are_one_redaction():
    data = result(segment(0, timed([" Hosts", " 10.0.0.1/10.0.0.2,", " bye"])))

    spans = redact_result(data, ["ip_address"])

    assert [w["word"] for w in data["segments"][0]["words"]] == [" Hosts", " [IP_ADDRESS],", " bye"]
    assert len(spans) == 1


# ---- dictated, spoken and loosely written forms -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call me on 555, 123, 4567.", "Call me on [PHONE_NUMBER]."),
        ("My mobile: 555, 1234, 5678 ok", "My mobile: [PHONE_NUMBER] ok"),
        (
            "my social security number is 123, 45, 6789",
            "my social security number is [US_SOCIAL_SECURITY_NUMBER]",
        ),
    ],
)
def test_comma_groups_of_up_to_4_digits_are_one_number_after_a_cue_word(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert len(spans) == 1


@pytest.mark.parametrize(
    "cue",
    [
        "number",
        "phone",
        "call",
        "mobile",
        "cell",
        "fax",
        "ssn",
        "card",
        "account",
        "social security",
    ],
)
def test_each_dictation_cue_word_joins_comma_groups_of_4_digits(cue):
    entity = "US_SOCIAL_SECURITY_NUMBER" if cue in ("ssn", "social security") else "PHONE_NUMBER"

    assert said(f"The {cue} is 555, 123, 4567 ok")[0] == f"The {cue} is [{entity}] ok"


@pytest.mark.parametrize(
    "text",
    [
        "It was 555, 123, 4567 then.",  # no cue word
        "In 2019, 300 people came.",
        "Call me, and then we will talk about 555, 123, 4567.",  # the cue is 8 words back
    ],
)
def test_comma_groups_of_4_digits_without_a_cue_word_are_no_number(text):
    assert said(text) == (text, [])


@pytest.mark.parametrize(
    "text",
    [
        "Write to john dash smith at gmail dot com.",
        "Write to john underscore smith at gmail dot com.",
        "Write to john hyphen smith at gmail dot com.",
        "Write to j o h n at gmail dot com.",
        "Write to john dot smith at gmail dot com.",
        "Write to j o h n dot s m i t h at gmail dot com.",
        "Write to john.smith at gmail dot com.",
    ],
)
def test_a_spoken_local_part_of_several_words_is_redacted_whole(text):
    redacted, spans = said(text)

    assert redacted == "Write to [EMAIL_ADDRESS]."
    assert summarise(spans) == {"email_address": 1}
    assert said_untimed(text)[0] == "Write to [EMAIL_ADDRESS]."


def test_a_spoken_local_part_stops_at_punctuation_and_at_an_opening_quote():
    assert said("Well, dot john at gmail dot com")[0] == "Well, dot [EMAIL_ADDRESS]"
    quoted = 'It is john dash "smith at gmail dot com"'
    assert said_untimed(quoted)[0] == 'It is john dash "[EMAIL_ADDRESS]"'
    # With word timings a match covers whole words, the quote with it.
    assert said(quoted)[0] == 'It is john dash [EMAIL_ADDRESS]"'


@pytest.mark.parametrize(
    "tld",
    [
        *("ai", "me", "app", "dev", "ch", "se", "in", "at", "be", "dk", "no", "fi", "pl"),
        *("pt", "ie", "nz", "jp", "cn", "br", "mx", "tv", "xyz", "tech", "online"),
    ],
)
def test_spoken_email_addresses_under_more_top_level_domains(tld):
    assert said(f"Write to jane at example dot {tld} today")[0] == "Write to [EMAIL_ADDRESS] today"
    assert said(f"Write to jane at example.{tld} today")[0] == "Write to [EMAIL_ADDRESS] today"


def test_a_spoken_chain_of_labels_ends_at_its_last_known_top_level_domain():
    assert said("Write to jane at example dot org dot uk now")[0] == "Write to [EMAIL_ADDRESS] now"


@pytest.mark.parametrize(
    "iban",
    [
        "GB 82 WEST 1234 5698 7654 32",
        "DE 89 3704 0044 0532 0130 00",
        "gb82 west 1234 5698 7654 32",
        "de89 3704 0044 0532 0130 00",
        "gb82west12345698765432",
        "GB82 west 1234 5698 7654 32",
    ],
)
def test_ibans_written_loosely(iban):
    redacted, spans = said(f"Pay to {iban}. Thanks")

    assert redacted == "Pay to [IBAN]. Thanks"
    assert summarise(spans) == {"iban": 1}


def test_an_iban_written_loosely_needs_its_countrys_registered_length():
    short = with_check_digits("GB", "WEST 1234 5698 7654")  # valid, but 20 characters, not 22
    loose = [short.lower(), f"{short[:2]} {short[2:]}"]

    assert said(f"Pay to {short} soon", policies=["iban"])[0] == "Pay to [IBAN] soon"
    for text in [f"Pay to {iban} soon" for iban in loose]:
        assert said(text, policies=["iban"]) == (text, [])


def test_a_space_after_a_country_in_lower_case_makes_no_iban():
    text = "Pay to de 89 3704 0044 0532 0130 00 soon"

    assert said(text, policies=["iban"]) == (text, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The server is 192 dot 168 dot 1 dot 1.", "The server is [IP_ADDRESS]."),
        ("Ping 10 Dot 0 Dot 0 Dot 1 now", "Ping [IP_ADDRESS] now"),
    ],
)
def test_spoken_ip_addresses(text, expected):
    redacted, spans = said(text)

    assert redacted == expected
    assert summarise(spans) == {"ip_address": 1}
    assert said_untimed(text)[0] == expected


@pytest.mark.parametrize(
    "number",
    [
        "415\u2013555\u20132671",  # en dashes
        "415\u2014555\u20142671",  # em dashes
        "415\u2011555\u22122671",  # a no-break hyphen, a minus sign
        "415\u00a0555\u00a02671",  # no-break spaces
        "415\u2009555\u202f2671",  # a thin space, a narrow no-break space
        "\uff14\uff11\uff15\uff0d\uff15\uff15\uff15\uff0d\uff12\uff16\uff17\uff11",  # full width
        "\uff14\uff11\uff15 555 2671",
    ],
)
def test_dashes_spaces_and_full_width_digits_match_as_their_ascii_forms(number):
    text = f" Call \u2014 {number} \u2014 thanks."
    timed_data = result(
        segment(0, timed([" Call", " \u2014", f" {number}", " \u2014", " thanks."]))
    )
    untimed_data = result(untimed(0, text, 0.0, 3.0))

    for data in (timed_data, untimed_data):
        spans = redact_result(data, ["phone_number"])

        assert data["segments"][0]["text"] == " Call \u2014 [PHONE_NUMBER] \u2014 thanks."
        assert summarise(spans) == {"phone_number": 1}


def test_text_around_a_match_keeps_its_own_characters_and_hash_keeps_the_separators():
    data = result(untimed(0, " Ring\u00a0415\u2013555\u20132671\u3000now\uff0e", 0.0, 3.0))

    redact_result(data, ["phone_number"], substitution="hash")

    assert data["segments"][0]["text"] == " Ring\u00a0###\u2013###\u2013####\u3000now\uff0e"


@pytest.mark.parametrize("timed_words", [True, False])
def test_a_shorter_overlapping_match_leaves_nothing_of_itself_behind(timed_words):
    text = "call 555 1234 at example dot com"
    redact = said if timed_words else said_untimed

    redacted, spans = redact(text, policies=["email_address", "phone_number"])

    assert redacted == "call [EMAIL_ADDRESS]"
    assert summarise(spans) == {"email_address": 1}
    # Only what is asked for: the phone number alone, or the address alone.
    assert redact(text, policies=["phone_number"])[0] == "call [PHONE_NUMBER] at example dot com"
    assert redact(text, policies=["email_address"])[0] == "call 555 [EMAIL_ADDRESS]"


# ---- what is not personal data --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "It happened in 2019 and 2020.",
        "We met at 10:30 and left at 11:45:30.",
        "It cost $1,500 and then $1,500,000 more.",
        "It cost 1.500.000 \u20ac and grew by 1,234,567%.",
        "A population of 1,500,000 people.",
        "The meeting is on 2024-01-15 at noon.",
        "Born 15/01/2024, or 01.15.2024, or 2024/1/5.",
        "The 2019-2020 season.",
        "In 2019, 300 people came.",
        "Look at this.",
        "Count one two three.",
        "Oh oh oh oh oh oh oh oh.",
        "Pi is 3.14159265.",
        "Room 101, floor 3, building 12.",
        "Version 12.4.1 of mp3 1234567x.",
        "A value of 4,111 here.",
        "We looked at the dot com era.",
        "She works at home dot com.",
        "Look at that dot com bubble.",
        "Meet at noon dot com.",
        "I was at Google dot com for years.",
        "Es kostet 1.000.000 Euro.",
        "Il co\u00fbte 1 000 000 euros.",
        "Il y a 2 500 000 habitants.",
        "It was 1, 000, 000 then.",
        "The years 2019 2020 2021.",
        "The 2019\u20132020 season.",
        "Version 1.2.3.4 is out.",
        "Windows 10.0.19045 ships.",
        "Release 2.10.3.1 today, build 10.0.22631 tomorrow.",
        "Use v 1.2.3.4 or version: 1.2.3.5 please.",
        "Version 1 dot 2 dot 3 dot 4.",
        "It is 300 dot 1 dot 1 dot 1.",
        "Go 1 dot 2 dot 3 dot 4 dot 5.",
    ],
)
def test_ordinary_numbers_and_words_are_left_alone(text):
    data = result(segment(0, timed(spoken(text))))
    before = copy.deepcopy(data)

    spans = redact_result(data, ALL)

    assert spans == []
    assert data == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call 0 800 000 000.", "Call [PHONE_NUMBER]."),  # a leading 0: no amount
        ("Call 555 000 1000.", "Call [PHONE_NUMBER]."),  # a group of 4 digits
        ("Call 1,000, 000 now.", "Call [PHONE_NUMBER] now."),  # two separators
        ("Call 2019 2020 1234.", "Call [PHONE_NUMBER]."),  # not all years
        ("Server 1.2.3.4 is down.", "Server [IP_ADDRESS] is down."),  # no version word
        ("Conversion 555.123.4567 done.", "Conversion [PHONE_NUMBER] done."),  # ends in "version"
        ("Mail jane at example dot com now.", "Mail [EMAIL_ADDRESS] now."),
    ],
)
def test_the_rules_for_what_is_not_personal_data_are_narrow(text, expected):
    assert said(text)[0] == expected


def test_a_number_split_across_two_segments_is_not_looked_for():
    data = result(segment(0, timed([" Call", " 555", " 123"])), segment(1, timed([" 4567."])))
    before = copy.deepcopy(data)

    assert redact_result(data, ALL) == []
    assert data == before


def test_a_cue_word_at_the_end_of_the_previous_segment_counts():
    first = segment(0, timed([" My", " card", " number", " is"]))
    second = segment(1, timed([" 4000", " 1234", " 5678", " 9010."], start=2.0))
    data = result(first, second)

    spans = redact_result(data, ["credit_card_number"])

    assert data["text"] == "My card number is [CREDIT_CARD_NUMBER]."
    assert spans == [RedactedSpan("credit_card_number", 1, 2.0, 3.52, True)]


# ---- how it is replaced ---------------------------------------------------------------------


def test_hash_substitution_keeps_punctuation_and_the_shape():
    data = result(segment(0, timed([" Call", " 555-123-4567.", " Or", " jane.doe@example.com!"])))

    spans = redact_result(data, ALL, substitution="hash")

    words = data["segments"][0]["words"]
    assert [w["word"] for w in words] == [
        " Call",
        " ###-###-####.",
        " Or",
        " ####.###@#######.###!",
    ]
    assert [w.get("redacted") for w in words] == [None, "phone_number", None, "email_address"]
    assert data["text"] == "Call ###-###-####. Or ####.###@#######.###!"
    assert summarise(spans) == {"email_address": 1, "phone_number": 1}


def test_hash_substitution_of_merged_words_keeps_their_separators():
    data = result(segment(0, timed(TINY_PHONE)))

    redact_result(data, ["phone_number"], substitution="hash")

    assert data["text"] == "Please call me on ###-###-##,### tomorrow"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dial five five five one two three four.", "Dial # # # # # # #."),
        ("Dial seven seven seven three three three eight.", "Dial # # # # # # #."),
        ("Dial Five-Five-Five, one, two, three, four.", "Dial #-#-#, #, #, #, #."),
        ("Dial five oh five 1234 now.", "Dial # # # #### now."),
        ("Write to jane dot doe at example dot com.", "Write to ### dot ### at ### dot ###."),
        ("Write to al at x dot io.", "Write to ### at ### dot ###."),
        ("Write to alexandra at example dot online.", "Write to ### at ### dot ###."),
        ("Write to j o h n at gmail dot com.", "Write to ### at ### dot ###."),
        ("Mail alexandra underscore b at example.co.uk, ok", "Mail ### underscore ### at ###, ok"),
        ("Mail jane at example dot at today", "Mail ### at ### dot ### today"),
        ('Mail "jane dash doe at example dot com".', 'Mail "### dash ### at ### dot ###".'),
        ("Host 192 dot 168 dot 1 dot 1 now", "Host ### dot ### dot ### dot ### now"),
        ("Host 10 dot 0 dot 0 dot 1 now", "Host ### dot ### dot ### dot ### now"),
        ("Call 555 1234 at example dot com", "Call ### at ### dot ###"),
    ],
)
def test_hash_substitution_never_shows_the_length_of_a_spoken_word(text, expected):
    assert said(text, substitution="hash")[0] == expected
    assert said_untimed(text, substitution="hash")[0] == expected


def test_a_match_covers_whole_words_and_keeps_the_punctuation_after_it():
    words = timed([" Call", ' "tel:555', "-123", '-4567")."', " Bye"])
    words[1]["probability"], words[3]["probability"] = 0.7, 0.3
    data = result(segment(0, words))

    redact_result(data, ["phone_number"])

    assert data["segments"][0]["words"][1] == {
        "start": 0.4,
        "end": 1.52,
        "word": ' [PHONE_NUMBER]")."',
        "probability": 0.3,
        "redacted": "phone_number",
    }
    assert data["segments"][0]["words"][0] is words[0]
    assert data["segments"][0]["words"][2] is words[4]


def test_words_without_a_probability_give_a_merged_word_without_one():
    words = timed([" Call", " 555", " 123", " 4567"])
    for word in words[1:]:
        del word["probability"]
    data = result(segment(0, words))

    redact_result(data, ["phone_number"])

    assert data["segments"][0]["words"][1] == {
        "start": 0.4,
        "end": 1.52,
        "word": " [PHONE_NUMBER]",
        "redacted": "phone_number",
    }


def test_only_redacted_segments_lose_their_tokens():
    clean = segment(0, timed([" Hello", " there."]))
    secret = segment(1, timed([" Call", " 555-123-4567."], start=2.0))
    data = result(clean, secret)

    redact_result(data, ALL)

    assert data["segments"][0]["tokens"] == [50364, 1012, 2051, 50564]
    assert data["segments"][1]["tokens"] == []


def test_the_text_is_joined_again_only_when_something_was_redacted():
    data = result(segment(0, timed([" Hello", " there."])))
    data["text"] = "As the engine wrote it"

    redact_result(data, ALL)

    assert data["text"] == "As the engine wrote it"

    data["segments"].append(segment(1, timed([" Call", " 555-123-4567."], start=2.0)))

    redact_result(data, ALL)

    assert data["text"] == "Hello there. Call [PHONE_NUMBER]."
    assert data["text"] == join_text(data["segments"])


def test_a_segment_without_words_is_redacted_in_its_text_with_the_segments_times():
    data = result(
        untimed(0, " Call 555-123-4567 or write to jane@example.com.", 3.0, 7.5),
        untimed(1, " Nothing here.", 7.5, 9.0),
    )

    spans = redact_result(data, ALL)

    assert data["segments"][0]["text"] == " Call [PHONE_NUMBER] or write to [EMAIL_ADDRESS]."
    assert data["segments"][0]["words"] == []
    assert data["segments"][0]["tokens"] == []
    assert data["segments"][1]["tokens"] == [50364, 1012, 2051, 50564]
    assert spans == [
        RedactedSpan("phone_number", 0, 3.0, 7.5, False),
        RedactedSpan("email_address", 0, 3.0, 7.5, False),
    ]
    assert data["text"] == "Call [PHONE_NUMBER] or write to [EMAIL_ADDRESS]. Nothing here."


def test_spans_come_in_time_order_with_their_segment_ids():
    data = result(
        segment(7, timed([" Mail", " jane@example.com", " or", " 555-123-4567"])),
        segment(9, timed([" IP", " 10.0.0.1"], start=5.0)),
    )

    spans = redact_result(data, ALL)

    assert [(s.entity, s.segment_id, s.start) for s in spans] == [
        ("email_address", 7, 0.4),
        ("phone_number", 7, 1.2),
        ("ip_address", 9, 5.4),
    ]


def test_entries_of_words_without_text_are_kept_as_they_are_and_never_written_as_none():
    words: list[Any] = timed([" Call", " 555", " 123", " 4567", " now."])
    no_word = {"start": 0.3, "end": 0.35}
    none_word = {"start": 0.35, "end": 0.4, "word": None}
    odd: list[Any] = [no_word, none_word, None, "junk", 7, ["x"]]
    inside = {"start": 0.9, "end": 0.95, "word": None}
    words[1:1] = odd
    words.insert(len(odd) + 2, inside)  # between "555" and "123"
    data = result(segment(0, timed([" Call"])))
    data["segments"][0]["words"] = words
    data["segments"][0]["text"] = " Call 555 123 4567 now."

    spans = redact_result(data, ALL)

    new_words = data["segments"][0]["words"]
    assert data["segments"][0]["text"] == " Call [PHONE_NUMBER] now."
    assert data["text"] == "Call [PHONE_NUMBER] now."
    assert new_words[0] is words[0]
    assert new_words[1 : 1 + len(odd)] == odd
    assert all(new is old for new, old in zip(new_words[1 : 1 + len(odd)], odd, strict=True))
    assert no_word == {"start": 0.3, "end": 0.35} and none_word["word"] is None
    assert [w["word"] for w in new_words[-2:]] == [" [PHONE_NUMBER]", " now."]
    assert new_words[-2]["start"] == words[len(odd) + 1]["start"]
    assert inside not in new_words  # inside the number: merged into it
    assert summarise(spans) == {"phone_number": 1}


def test_a_word_without_a_word_key_or_with_none_is_empty_text_and_stays_as_it_is():
    words: list[Any] = timed([" Hello", " there", " Call", " 555-123-4567", " now."])
    del words[0]["word"]
    words[1]["word"] = None
    before = copy.deepcopy(words[:2])
    data = result(segment(0, timed([" there"])))
    data["segments"][0]["words"] = words

    spans = redact_result(data, ALL)

    assert data["segments"][0]["text"] == " Call [PHONE_NUMBER] now."
    assert "None" not in data["text"]
    assert data["segments"][0]["words"][:2] == before
    assert summarise(spans) == {"phone_number": 1}


def test_a_segment_whose_words_hold_no_text_is_redacted_in_its_text():
    words: list[Any] = [None, {"word": None}, "Call 555-123-4567", {"start": 1.0}]
    data = result(untimed(0, " Call 555-123-4567.", 0.0, 2.0))
    data["segments"][0]["words"] = words

    spans = redact_result(data, ALL)

    assert data["segments"][0]["text"] == " Call [PHONE_NUMBER]."
    assert data["segments"][0]["words"] is words
    assert words == [None, {"word": None}, "Call 555-123-4567", {"start": 1.0}]
    assert spans == [RedactedSpan("phone_number", 0, 0.0, 2.0, False)]


NEW_FORMS = (
    " Call me on 555, 123, 4567. Mail john dash smith at gmail dot com or j o h n at example dot"
    " ai. Host 192 dot 168 dot 1 dot 1, IBAN gb82 west 1234 5698 7654 32, ring"
    " 415\u2013555\u20132671 or call 555 1234 at example dot com."
)


@pytest.mark.parametrize("substitution", SUBSTITUTIONS)
@pytest.mark.parametrize("timed_words", [True, False])
def test_redacting_the_spoken_and_loose_forms_twice_changes_nothing(substitution, timed_words):
    if timed_words:
        data = result(segment(0, timed(spoken(NEW_FORMS))))
    else:
        data = result(untimed(0, NEW_FORMS, 0.0, 9.0))
    first = redact_result(data, ALL, substitution=substitution)
    once = copy.deepcopy(data)

    again = redact_result(data, ALL, substitution=substitution)

    assert summarise(first) == {"email_address": 3, "iban": 1, "ip_address": 1, "phone_number": 2}
    assert again == []
    assert data == once
    assert not any(ch.isdigit() for ch in data["text"])


# ---- policies -------------------------------------------------------------------------------


def test_only_the_entities_asked_for_are_redacted():
    text = "Call 555-123-4567 or jane@example.com"

    assert said(text, policies=["phone_number"])[0] == "Call [PHONE_NUMBER] or jane@example.com"
    assert said(text, policies=["email_address"])[0] == "Call 555-123-4567 or [EMAIL_ADDRESS]"
    assert said(text, policies=["iban", "ip_address"]) == (text, [])


def test_a_number_whose_entity_was_not_asked_for_falls_back_to_number_sequence():
    text = "Card 4111 1111 1111 1111, phone 555-123-4567, host 192.168.1.20, mail jane@example.com"

    redacted, spans = said(text, policies=["number_sequence"])

    assert redacted == (
        "Card [NUMBER_SEQUENCE], phone [NUMBER_SEQUENCE], host [NUMBER_SEQUENCE], "
        "mail jane@example.com"
    )
    assert summarise(spans) == {"number_sequence": 3}


def test_a_short_ip_address_is_no_number_sequence():
    assert said("Ping 10.0.0.1 now", policies=["number_sequence"]) == ("Ping 10.0.0.1 now", [])


def test_an_unknown_policy_or_substitution_is_refused():
    data = result(segment(0, timed([" Call", " 555-123-4567"])))
    before = copy.deepcopy(data)

    with pytest.raises(ValueError, match="person_name"):
        redact_result(data, ["phone_number", "person_name"])
    with pytest.raises(ValueError, match="stars"):
        redact_result(data, ["phone_number"], substitution="stars")
    with pytest.raises(ValueError, match="not one string"):
        redact_result(data, "phone_number")
    assert data == before


def test_no_policies_change_nothing():
    data = result(segment(0, timed([" Call", " 555-123-4567", " or", " jane@example.com"])))
    before = copy.deepcopy(data)

    assert redact_result(data, []) == []
    assert data == before


@pytest.mark.parametrize("substitution", SUBSTITUTIONS)
def test_redacting_twice_changes_nothing(substitution):
    data = result(
        segment(0, timed(TINY_PHONE)),
        segment(1, timed(TINY_CARD, start=4.0)),
        segment(2, timed(TINY_SSN, start=10.0)),
        segment(3, timed(TINY_IP, start=16.0)),
        segment(4, timed(spoken(IBAN_AND_EMAIL), start=22.0)),
        untimed(5, " Call 555-123-4567, mail a@b.io, ssn 123-45-6789, ip 10.0.0.1.", 30, 35),
    )
    first = redact_result(data, ALL, substitution=substitution)
    once = copy.deepcopy(data)

    again = redact_result(data, ALL, substitution=substitution)

    assert summarise(first) == {
        "email_address": 2,
        "iban": 1,
        "ip_address": 2,
        "number_sequence": 1,
        "phone_number": 2,
        "us_social_security_number": 2,
    }
    assert again == []
    assert data == once


def test_redacting_twice_with_some_policies_changes_nothing():
    data = result(segment(0, timed(spoken(TWO_CARDS))))
    redact_result(data, ["credit_card_number"])
    once = copy.deepcopy(data)

    assert redact_result(data, ["credit_card_number"]) == []
    assert data == once
    assert data["text"] == "My card ends [CREDIT_CARD_NUMBER] and [CREDIT_CARD_NUMBER] too"


# ---- other languages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        [" Rendez-vous", " \u00e0", " dix", " heures", " et", " demie,", " \u00e7a", " va?"],
        ["\u4eca\u65e5", "\u306f", "\u3044\u3044", "\u5929\u6c17", "\u3067\u3059\u306d\u3002"],
        [" \u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435,", " 2024"],
    ],
)
def test_transcripts_in_other_languages_without_matches_are_unchanged(words):
    data = result(segment(0, timed(words)))
    before = copy.deepcopy(data)

    assert redact_result(data, ALL) == []
    assert data == before


def test_numbers_written_against_japanese_text_are_found():
    # "My phone number is 090-1234-5678." with no spaces, as Japanese is written.
    data = result(untimed(0, "\u96fb\u8a71\u306f090-1234-5678\u3067\u3059\u3002", 0.0, 3.0))

    spans = redact_result(data, ["phone_number"])

    assert data["text"] == "\u96fb\u8a71\u306f[PHONE_NUMBER]\u3067\u3059\u3002"
    assert summarise(spans) == {"phone_number": 1}


def test_a_french_phone_number_is_found():
    redacted, spans = said("Appelez le 06 12 34 56 78, merci.")

    assert redacted == "Appelez le [PHONE_NUMBER], merci."
    assert summarise(spans) == {"phone_number": 1}


# ---- cost -----------------------------------------------------------------------------------


CPU_SECONDS_LIMIT = 3.0


@pytest.mark.parametrize(
    ("text", "entities"),
    [
        ("1-1-" * 12_500, {"number_sequence": 1}),
        ("1,1," * 12_500, {"number_sequence": 1}),
        ("a.a.a.a@" * 6_250, {}),
        (" @" * 25_000, {}),
        ("a" * 50_000 + "@example.com", {"email_address": 1}),
        ("1:" * 25_000, {}),
        ("x at y dot " * 4_600, {}),
        ("at " * 16_700, {}),
        ("GB82 WEST " * 5_000, {}),
        ("one " * 12_500, {"number_sequence": 1}),
        ("j " * 25_000 + "at x dot com", {"email_address": 1}),
        ("a dash " * 7_000 + "at x dot com", {"email_address": 1}),
        ("j at " * 10_000, {}),
        ("192 dot " * 6_000, {}),
        ("gb82 " * 10_000, {}),
        ("GB 82 " * 8_000, {}),
        ("call 1234, " * 4_500, {}),
        ("number " + "1234, " * 8_000, {"number_sequence": 1}),
        ("2019 " * 10_000, {}),
        ("version 1.2.3.4 " * 3_000, {}),
        ("1\u20131\u2013" * 12_500, {"number_sequence": 1}),
        ("\uff11\uff0d" * 25_000, {"number_sequence": 1}),
    ],
)
def test_adversarial_text_takes_linear_time(text, entities):
    data = result(untimed(0, text, 0.0, 30.0))

    started = time.process_time()
    spans = redact_result(data, ALL)
    elapsed = time.process_time() - started

    # This process's CPU time, not the wall clock (the suite runs beside other work on two
    # cores): ~0.5 s here, where catastrophic backtracking on 50,000 characters takes minutes.
    assert elapsed < CPU_SECONDS_LIMIT
    assert summarise(spans) == entities


def test_a_four_hour_transcript_takes_seconds_of_cpu_not_minutes():
    sentence = spoken(CHATTER)
    segments, clock = [], 0.0
    while sum(len(s["words"]) for s in segments) < 40_000:
        segments.append(segment(len(segments), timed(sentence, start=clock)))
        clock += len(sentence) * 0.4
    data = result(*segments)

    started = time.process_time()
    spans = redact_result(data, ALL)
    elapsed = time.process_time() - started

    assert elapsed < CPU_SECONDS_LIMIT
    assert summarise(spans) == {"email_address": len(segments), "phone_number": len(segments)}


# ---- summarise ------------------------------------------------------------------------------


def test_summarise_counts_each_entity_in_name_order():
    spans = [
        RedactedSpan("phone_number", 0, 1.0, 2.0, True),
        RedactedSpan("email_address", 1, 3.0, 4.0, True),
        RedactedSpan("phone_number", 2, 5.0, 6.0, False),
    ]

    summary = summarise(spans)

    assert summary == {"email_address": 1, "phone_number": 2}
    assert list(summary) == ["email_address", "phone_number"]
    assert summarise([]) == {}
