"""Pattern-based redaction of personal data in a machine transcript, before anything is stored.

`redact_result` runs in the worker on the engine's result (``TranscriptionResult.to_dict()``)
and rewrites it in place, so the unredacted text is never written anywhere. It is self-hosted
and uses patterns only, no model: it finds numbers, e-mail addresses and IBANs, never names,
addresses or other free-text personal data. Only the entities whose policy is asked for are
redacted (`ENTITY_TYPES`).

What is scanned, per segment (a match never spans two segments; cue words may come from the end
of the segment before): the text of its words, or its ``text`` when its words hold none (a word
that is no dict, or whose ``"word"`` is missing or no string, counts as empty text and is left
as it is unless it lies inside a match). Characters are matched as their ASCII counterparts, one
for one: hyphens, en and em dashes (U+2010 to U+2015) and minus signs as ``-``, no-break, thin
and other fixed-width spaces as a space, full-width forms (digits, letters, punctuation) as
ASCII; the offsets stay, and only redacted text is rewritten.

- Digit runs, the shape Whisper gives spoken numbers: groups of digits ("555-120-34,567", "4,111,
  111", "100, 23, 4") joined by one separator (a space, ``-``, ``.``, ``/``, parentheses, a comma
  between groups of 1-3 digits, or of 1-4 digits when "number", "phone", "call", "mobile",
  "cell", "fax", "ssn", "card", "account" or "social security" is among the 6 words before the
  run: "call 555, 123, 4567"), with a leading ``+``; spelled digits ("five five five", "oh" only
  next to another spelled digit) count as digits. A run needs 7 digits. Not runs: ISO and
  day/month/year dates, year ranges ("2019-2020"), two groups joined by a dot (a decimal),
  amounts next to a currency sign or ``%``, sequences of years (every group a 4-digit number
  1900-2099: "2019 2020 2021"), round thousands (3 or more groups joined by the same ``,``,
  ``, ``, ``.`` or space, the first of 1-3 digits not starting with 0, the others of exactly 3,
  ending in "000": "1,500,000", "1.000.000", "2 500 000"), and groups joined only by dots right
  after "version", "v", "windows", "release" or "build", a colon allowed between ("Windows
  10.0.19045"). A run is, the first that applies:

  1. ``ip_address``: a clean dotted quad, or 1-3-digit groups joined by dots and commas with at
     least three dots (Whisper wrote "192.168.1.20" as "192.16, 8.1.2, 0.2, 0.2, 0.8");
  2. ``credit_card_number``: 13-19 digits with "card", "visa", "mastercard" or "amex" among the
     6 words before;
  3. ``us_social_security_number``: 9 digits in the 3-2-4 shape with a valid area, or 7-15
     digits after "social security" or "ssn" (Whisper pads a spoken SSN: "123 45 6789" came out
     as 13 digits, so such a run is tried as a phone number when SSNs are not asked for);
  4. ``credit_card_number``: 13-19 Luhn-valid digits, or more than 19 after a card word;
  5. ``phone_number``: 7-15 digits; else ``number_sequence``.

- ``ip_address``: a dotted quad inside a word ("10.0.0.1,"), IPv6 addresses, and the spoken form
  "192 dot 168 dot 1 dot 1" (four numbers of 0-255 joined by a spoken "dot", not part of a longer
  chain); a quad right after a version word (above) is none.
- ``email_address``: ``local@domain.tld`` (also spaced "john @ example.com"), and the spoken form
  "jane at example dot com", "jane dot doe at example dot co dot uk", "jane at example.org": the
  domain is labels joined by written dots or up to 4 spoken "dot"s, the last a known top-level
  domain (`EMAIL_TLDS`; a final spoken "dot at" is Austria's), so "look at this" is not one; the
  local part is the word before "at" and, back from it, words joined by a spoken "dot", "dash",
  "hyphen" or "underscore" and spelled letters ("j o h n"), 32 words at most, stopping at an
  opening quote or bracket. A local part of one word, and the domain's first label, must not be
  in `COMMON_WORDS` (determiners, pronouns, prepositions, "was", "works", "home", ...): "we
  looked at the dot com era", "she works at home dot com", "I was at Google dot com" are not
  addresses.
- ``iban``: two letters, two digits and 11-30 letters or digits (spaces allowed between groups,
  and between the country and the check digits when the country is in capitals: "GB 82 WEST
  ..."), valid under the ISO 13616 mod-97 check in upper case; one written loosely (a letter in
  lower case, or that space) must also have its country's registered length (`IBAN_LENGTHS`).
  Digit runs inside a valid IBAN are part of it.

A match whose entity was not asked for is redacted as ``number_sequence`` when that was asked
for and it holds at least 7 digits (an SSN-cued run tries ``phone_number`` first); an e-mail
address never falls back. Overlapping matches (of entities redacted) are one match over their
union, named for the longest ("call 555 1234 at example dot com": one e-mail address from
"555"), so each character is redacted at most once and nothing of a shorter match is left.

How it is replaced: with ``entity_name`` the matched text becomes ``[PHONE_NUMBER]``; with
``hash`` it keeps its shape but not its content: written forms have each letter and digit as
``#`` and keep their punctuation ("###-###-####", "####.###@#######.###"), except that a spelled
digit in a digit run is one ``#`` ("five five five" as "# # #"); a spoken e-mail or IP address
has each spoken part (the words between a spoken "at", "dot", "dash", "hyphen" or
"underscore", spelled letters together, a written "jane.doe" whole) as ``###``, whatever its
length, keeping those words and the punctuation around it ("### dot ### at ### dot ###"); a
union is hashed as its longest match. With word timings, a match covers whole words: the covered
words of one match (or of two matches sharing a word) become one word, timed from the first's
start to the last's end, with the lowest probability and ``"redacted": <entity>``, keeping the
first word's leading space and the sentence punctuation after the match ("555-1234567." ends in
"."). Without words the matched characters are replaced in the segment's text. A redacted
segment's ``tokens`` are emptied (they decode back to the text) and its text becomes its words;
the transcript's text is joined again from the segments.

Redacting twice changes nothing: replacements match no pattern, and a segment is scanned again
after each redaction until nothing more is found (redacting words can bring a cue word within
reach of a later number). Every scan is linear in the text (no backtracking pattern; the scans
back from an "at" and along an IBAN are bounded), so a four-hour transcript takes a fraction of
a second.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .editing import join_text, segment_key

ENTITY_TYPES: tuple[str, ...] = (
    "email_address",
    "phone_number",
    "credit_card_number",
    "us_social_security_number",
    "iban",
    "ip_address",
    "number_sequence",
)
SUBSTITUTIONS: tuple[str, ...] = ("entity_name", "hash")

MIN_RUN_DIGITS = 7  # fewer is a time, a year, a price, a quantity
MAX_PHONE_DIGITS = 15  # E.164
CARD_DIGITS = (13, 19)
SSN_DIGITS = 9
CUE_WORDS = 6  # how far back a cue word ("card", "ssn") is looked for
CARD_CUES = frozenset({"card", "visa", "mastercard", "amex"})
# Words that let dictated groups of 4 digits be joined by commas ("555, 123, 4567"); and the
# pair "social security".
DICTATION_CUES = frozenset(
    {"number", "phone", "call", "mobile", "cell", "fax", "ssn", "card", "account"}
)
EMAIL_TLDS = frozenset(
    {"com", "org", "net", "edu", "gov", "io", "co", "uk", "de", "fr", "es", "it", "nl", "eu"}
    | {"info", "biz", "us", "ca", "au", "ai", "me", "app", "dev", "ch", "se", "in", "at", "be"}
    | {"dk", "no", "fi", "pl", "pt", "ie", "nz", "jp", "cn", "br", "mx", "tv", "xyz", "tech"}
    | {"online"}
)
# Words that are no spoken e-mail address's local part (the one word before "at") nor its
# domain's first label: determiners, pronouns, prepositions, the verbs and adjectives said
# before "at" and the places said after it ("looked at the dot com era", "works at home dot com").
COMMON_WORDS = frozenset(
    {"the", "a", "an", "this", "that", "these", "those", "my", "our", "your", "his", "her"}
    | {"their", "its", "it", "me", "us", "him", "them", "you", "i", "we", "he", "she", "they"}
    | {"some", "any", "all", "each", "every", "no", "what", "which", "who", "where", "when"}
    | {"how", "there", "here", "least", "most", "first", "last", "once", "to", "in", "on", "of"}
    | {"for", "with", "by", "from", "about", "into", "over", "under", "after", "before"}
    | {"around", "and", "or", "but", "as", "than", "then", "so", "if", "is", "was", "are"}
    | {"were", "am", "be", "been", "being", "look", "looks", "looked", "looking", "work"}
    | {"works", "worked", "working", "live", "lives", "lived", "stay", "stays", "stayed"}
    | {"meet", "met", "arrive", "arrived", "aim", "aimed", "point", "pointed", "stare"}
    | {"stared", "laugh", "laughed", "good", "bad", "better", "best", "not", "just", "even"}
    | {"only", "still", "also", "right", "back", "up", "down", "out", "home", "school"}
    | {"night", "noon", "lunch", "dinner", "breakfast", "church", "sea", "war", "peace"}
    | {"rest", "risk", "times", "large", "length", "present", "heart", "hand", "stake"}
)
# Words right before a dotted number that make it a version, not an address or a phone number.
VERSION_WORDS = frozenset({"version", "v", "windows", "release", "build"})
# ISO 13616 IBAN lengths by country (SWIFT's IBAN registry): what an IBAN written loosely (lower
# case, or a space between the country and the check digits) must measure.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# Scans of one segment: one, and one more after each redaction; a fixed point comes at the second.
MAX_PASSES = 4

_SPELLED = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_ATOM = re.compile(r"\d+|\b(?:" + "|".join(_SPELLED) + r")\b", re.IGNORECASE)
_SPELLED_WORD = re.compile(r"\b(?:" + "|".join(_SPELLED) + r")\b", re.IGNORECASE)
# What may join two digit groups, and two atoms when one is a spelled digit.
_NUMBER_GAPS = frozenset({" ", "-", " -", "- ", " - ", ".", "/", "(", " (", ")", ") ", ")-"})
_SPELLED_GAPS = frozenset({" ", "-", " -", "- ", " - "})
_COMMA_GAPS = frozenset({",", ", "})
_DATE_GAPS = frozenset({"-", "/", "."})
_CURRENCY = frozenset("$\u00a2\u00a3\u00a5\u20ac\u20b9\u20bd\u20a9")  # $ ¢ £ ¥ € ₹ ₽ ₩

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.[0-9])")
_HEXISH = re.compile(r"[0-9A-Fa-f:.]+")
_IBAN_START = re.compile(r"(?<![0-9A-Za-z])([A-Za-z]{2})( ?)([0-9]{2})")
_IBAN_MAX_BBAN = 30
_IBAN_MIN_BBAN = 11
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"\w+")
_SPOKEN_LOCAL = re.compile(r"[\w+-]+(?:\.[\w+-]+)*")
_SPOKEN_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)*")
_SPOKEN_HOPS = 4  # "dot"s followed after "at": e.f.g.h.i
_SPOKEN_LOCAL_TOKENS = 32  # words of a spoken local part at most ("j o h n dot s m i t h")
_LOCAL_JOINERS = frozenset({"dot", "dash", "hyphen", "underscore"})
_SPOKEN_CONNECTORS = _LOCAL_JOINERS | {"at"}
_SPOKEN_IPV4 = re.compile(
    r"(?<![\w.])(?<!dot )([0-9]{1,3}) dot ([0-9]{1,3}) dot ([0-9]{1,3}) dot ([0-9]{1,3})"
    r"(?!\w|\.[0-9]| dot [0-9])",
    re.IGNORECASE,
)
_PIECE = re.compile(r"\s+|\S+")

# Characters matched as their ASCII counterparts, one for one (offsets stay): dashes and the
# minus sign as "-", no-break and other fixed-width spaces as " ", full-width forms (digits,
# letters, punctuation) as themselves.
_ASCII_FORMS: dict[int, int] = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_ASCII_FORMS.update(dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015"), ord("-")))
_ASCII_FORMS.update(dict.fromkeys(map(ord, "\u2212\ufe58\ufe63"), ord("-")))
_ASCII_FORMS.update(dict.fromkeys(range(0x2000, 0x200B), ord(" ")))
_ASCII_FORMS.update(dict.fromkeys(map(ord, "\u00a0\u202f\u205f\u3000"), ord(" ")))

# How a match is hashed: one "#" per letter and digit; a spelled digit as one "#"; each spoken
# part as "###".
_WRITTEN, _DIGITS, _SPOKEN = "written", "digits", "spoken"

# Sentence punctuation kept after a replacement, with closing quotes and brackets (and their
# full-width forms and CJK stops).
_TRAILING = (
    ".,!?;:\"')]}\u2019\u201d\u00bb"
    + "\u3001\u3002\u300d\u300f\u3011"
    + "\uff01\uff09\uff0c\uff0e\uff1a\uff1b\uff1f"
)
_OPENING = "\"'([{\u2018\u201c\u00ab"


@dataclass(frozen=True)
class RedactedSpan:
    entity: str  # one of ENTITY_TYPES
    segment_id: int
    start: float  # seconds: the first covered word's start (the segment's without words)
    end: float  # the last covered word's end (the segment's without words)
    timed: bool  # from words: precise enough to silence the audio


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    entities: tuple[str, ...]  # what it is, then what it may be redacted as instead
    style: str = _WRITTEN  # how it is hashed


@dataclass(frozen=True)
class _Chosen:
    start: int
    end: int
    entity: str
    style: str


@dataclass(frozen=True)
class _Atom:
    start: int
    end: int
    digits: str
    spelled: str  # the spelled word, lower-cased ("" for a digit group)


def redact_result(
    data: dict[str, Any], policies: Iterable[str], substitution: str = "entity_name"
) -> list[RedactedSpan]:
    """Redact `data` (a result's dict form) in place for `policies` (names from `ENTITY_TYPES`);
    return the spans redacted, in time order. No policies: nothing changes."""
    wanted = _policies(policies)
    if substitution not in SUBSTITUTIONS:
        raise ValueError(
            f"Unknown substitution {substitution!r}; expected one of {', '.join(SUBSTITUTIONS)}."
        )
    segments = data.get("segments")
    if not wanted or not isinstance(segments, list):
        return []
    spans: list[RedactedSpan] = []
    previous = ""
    for index, segment in enumerate(segments):
        if not isinstance(segment, dict):
            previous = ""
            continue
        spans.extend(_redact_segment(segment, index, wanted, substitution, previous))
        previous = str(segment.get("text") or "")
    if spans:
        data["text"] = join_text(segments)
    return sorted(spans, key=lambda span: (span.start, span.end))


def summarise(spans: Iterable[RedactedSpan]) -> dict[str, int]:
    """How many spans of each entity, entities sorted: ``{"email_address": 1, ...}``."""
    counts = Counter(span.entity for span in spans)
    return {entity: counts[entity] for entity in sorted(counts)}


def _policies(policies: Iterable[str]) -> frozenset[str]:
    if isinstance(policies, str):
        raise ValueError("Policies are a collection of entity names, not one string.")
    wanted = frozenset(policies)
    unknown = sorted(str(p) for p in wanted - set(ENTITY_TYPES))
    if unknown:
        raise ValueError(
            f"Unknown redaction policy {', '.join(unknown)}; expected some of "
            f"{', '.join(ENTITY_TYPES)}."
        )
    return wanted


# ---- one segment -----------------------------------------------------------------------------


def _redact_segment(
    segment: dict[str, Any], index: int, wanted: frozenset[str], substitution: str, previous: str
) -> list[RedactedSpan]:
    segment_id = segment_key(segment, index)
    seg_start = _seconds(segment.get("start"), 0.0)
    seg_end = _seconds(segment.get("end"), seg_start)
    spans: list[RedactedSpan] = []
    for _ in range(MAX_PASSES):
        raw = segment.get("words")
        words: list[Any] = raw if isinstance(raw, list) else []
        texts = [_word_text(word) for word in words]
        timed = bool("".join(texts).strip())
        text = "".join(texts) if timed else str(segment.get("text") or "")
        chosen = _chosen(text, wanted, previous)
        if not chosen:
            break
        if timed:
            offsets, position = [], 0
            for piece in texts:
                offsets.append(position)
                position += len(piece)
            new_words, found = _redact_words(words, texts, offsets, chosen, substitution, seg_start)
            segment["words"] = new_words
            segment["text"] = "".join(_word_text(word) for word in new_words)
            spans.extend(
                RedactedSpan(entity, segment_id, start, end, True) for entity, start, end in found
            )
        else:
            segment["text"] = _redact_text(text, chosen, substitution)
            spans.extend(
                RedactedSpan(match.entity, segment_id, seg_start, seg_end, False)
                for match in chosen
            )
        segment["tokens"] = []  # the engine's token ids decode back to the text
    return spans


def _word_text(word: Any) -> str:
    """A word's text: "" for an entry that is no dict or has no string "word"."""
    text = word.get("word") if isinstance(word, dict) else None
    return text if isinstance(text, str) else ""


def _field(word: Any, key: str) -> Any:
    return word.get(key) if isinstance(word, dict) else None


def _seconds(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _replacement(text: str, entity: str, substitution: str, style: str) -> str:
    if substitution != "hash":
        return f"[{entity.upper()}]"
    if style == _SPOKEN:
        return _hash_spoken(text)
    if style == _DIGITS:
        pieces, position = [], 0
        for word in _SPELLED_WORD.finditer(text):
            pieces.append(_hash_written(text[position : word.start()]))
            pieces.append("#")
            position = word.end()
        pieces.append(_hash_written(text[position:]))
        return "".join(pieces)
    return _hash_written(text)


def _hash_written(text: str) -> str:
    return "".join("#" if ch.isalnum() else ch for ch in text)


def _hash_spoken(text: str) -> str:
    """ "jane dot doe at example dot com" as "### dot ### at ### dot ###": each spoken part
    (words between the spoken "at", "dot", "dash", "hyphen", "underscore", the spelled letters
    "j o h n" together) is "###", whatever its length; opening and closing punctuation stay."""
    pieces: list[str] = []
    joins = False  # whether the last piece is a bare "###" that a next one joins
    after_dot = False  # "dot at": "at" is a label (Austria's), not a connector
    for found in _PIECE.finditer(text):
        piece = found.group()
        if piece.isspace():
            pieces.append(piece)
            continue
        word = piece.lower()
        connector = word in _SPOKEN_CONNECTORS and not (after_dot and word == "at")
        after_dot = word == "dot"
        if connector:
            pieces.append(piece)
            joins = False
            continue
        core = piece.lstrip(_OPENING)
        lead = piece[: len(piece) - len(core)]
        bare = core.rstrip(_TRAILING)
        tail = core[len(bare) :]
        if not bare:
            pieces.append(piece)
            joins = False
        elif joins and not lead and pieces and pieces[-1].isspace():
            pieces.pop()  # "j o h n": one part
            joins = not tail
            pieces[-1] += tail
        else:
            pieces.append(lead + "###" + tail)
            joins = not tail
    return "".join(pieces)


def _redact_text(text: str, chosen: list[_Chosen], substitution: str) -> str:
    pieces, previous_end = [], 0
    for match in chosen:
        pieces.append(text[previous_end : match.start])
        pieces.append(
            _replacement(text[match.start : match.end], match.entity, substitution, match.style)
        )
        previous_end = match.end
    pieces.append(text[previous_end:])
    return "".join(pieces)


def _redact_words(
    words: list[Any],
    texts: list[str],
    offsets: list[int],
    chosen: list[_Chosen],
    substitution: str,
    seg_start: float,
) -> tuple[list[Any], list[tuple[str, float, float]]]:
    """The words with each match's words merged into one; and (entity, start, end) of each.
    Entries that are no words (no dict, no text) stay where they are, unless inside a match."""
    # [first word, last word, end of the last match, entity, length of the longest match, style]
    groups: list[list[Any]] = []
    for match in chosen:
        first = bisect.bisect_right(offsets, match.start) - 1
        last = bisect.bisect_right(offsets, match.end - 1) - 1
        length = match.end - match.start
        if groups and first <= groups[-1][1]:  # two matches in one word: one redaction
            group = groups[-1]
            group[1], group[2] = max(group[1], last), max(group[2], match.end)
            if length > group[4]:
                group[3], group[4], group[5] = match.entity, length, match.style
        else:
            groups.append([first, last, match.end, match.entity, length, match.style])

    new_words: list[Any] = []
    found: list[tuple[str, float, float]] = []
    kept_from = 0
    for first, last, end, entity, _, style in groups:
        new_words.extend(words[kept_from:first])
        covered = texts[first : last + 1]
        joined = "".join(covered)
        lead = covered[0][: len(covered[0]) - len(covered[0].lstrip())]
        # Sentence punctuation at the end of the last word stays when the match stops before it.
        tail_from = max(len(covered[-1].rstrip(_TRAILING + " \t\n")), end - offsets[last])
        tail = covered[-1][tail_from:]
        core = joined[len(lead) : len(joined) - len(tail)]
        start_s = _seconds(_field(words[first], "start"), seg_start)
        end_s = _seconds(_field(words[last], "end"), start_s)
        merged: dict[str, Any] = {
            "start": start_s,
            "end": end_s,
            "word": lead + _replacement(core, entity, substitution, style) + tail,
        }
        probabilities = [
            float(p)
            for p in (_field(w, "probability") for w in words[first : last + 1])
            if isinstance(p, int | float) and not isinstance(p, bool)
        ]
        if probabilities:
            merged["probability"] = min(probabilities)
        merged["redacted"] = entity
        new_words.append(merged)
        found.append((entity, start_s, end_s))
        kept_from = last + 1
    new_words.extend(words[kept_from:])
    return new_words, found


# ---- what to redact --------------------------------------------------------------------------


def _chosen(text: str, wanted: frozenset[str], previous: str) -> list[_Chosen]:
    """What to redact in `text`, in order, none overlapping: overlapping matches are one, over
    their union, named (and hashed) as the longest."""
    if not text.strip():
        return []
    plain = text.translate(_ASCII_FORMS)  # the same length: offsets hold in `text`
    candidates: list[tuple[int, int, str, str]] = []
    for match in _matches(plain, wanted, previous.translate(_ASCII_FORMS)):
        entity = next((e for e in match.entities if e in wanted), None)
        if entity is not None:
            candidates.append((match.start, match.end, entity, match.style))
    candidates.sort()
    chosen: list[_Chosen] = []
    best: tuple[int, int, int] = (0, 0, 0)  # the longest of the last union: its sort key
    for start, end, entity, style in candidates:
        key = (start - end, ENTITY_TYPES.index(entity), start)
        if chosen and start < chosen[-1].end:
            last = chosen[-1]
            if key < best:
                best, entity_, style_ = key, entity, style
            else:
                entity_, style_ = last.entity, last.style
            chosen[-1] = _Chosen(last.start, max(last.end, end), entity_, style_)
        else:
            best = key
            chosen.append(_Chosen(start, end, entity, style))
    return chosen


def _matches(text: str, wanted: frozenset[str], previous: str) -> list[_Match]:
    """Every candidate in `text`, overlapping ones included (only the scans `wanted` needs)."""
    numbers = bool(wanted - {"email_address"})
    matches: list[_Match] = []
    if "email_address" in wanted:
        matches.extend(_emails(text))
        matches.extend(_spoken_emails(text))
    if numbers:
        ibans = _ibans(text)
        matches.extend(ibans)
        runs = _digit_runs(text, _Cues(text, previous))
        if ibans:  # a valid IBAN wins over the digit runs inside it
            inside = bytearray(len(text))
            for iban in ibans:
                inside[iban.start : iban.end] = b"\x01" * (iban.end - iban.start)
            runs = [run for run in runs if inside.find(1, run.start, run.end) == -1]
        matches.extend(runs)
        matches.extend(_ip_addresses(text))
        matches.extend(_spoken_ip_addresses(text))
    return matches


def _numeric(entity: str, text: str) -> tuple[str, ...]:
    """`entity`, then ``number_sequence`` when `text` holds enough digits for one."""
    if sum(ch.isdigit() for ch in text) >= MIN_RUN_DIGITS:
        return (entity, "number_sequence")
    return (entity,)


# ---- digit runs ------------------------------------------------------------------------------


def _glues(char: str) -> bool:
    """Whether a letter next to digits makes them part of a word ("mp3", "GB82", "4th"): Latin,
    Greek and Cyrillic ones. Scripts written without spaces (and Korean particles) attach to
    numbers without making them one word."""
    return char.isalpha() and (ord(char) < 0x0530 or 0x1E00 <= ord(char) <= 0x1FFF)


def _atoms(text: str) -> list[_Atom | None]:
    """Digit groups and spelled digits in order; None for a group glued to letters (a barrier)."""
    atoms: list[_Atom | None] = []
    for found in _ATOM.finditer(text):
        start, end, value = found.start(), found.end(), found.group()
        if value[0].isdigit():
            before = text[start - 1] if start else ""
            after = text[end] if end < len(text) else ""
            if _glues(before) or _glues(after):
                atoms.append(None)
                continue
            digits = value if value.isascii() else "".join(str(int(ch)) for ch in value)
            atoms.append(_Atom(start, end, digits, ""))
        else:
            atoms.append(_Atom(start, end, _SPELLED[value.lower()], value.lower()))
    return atoms


def _joins(text: str, run: list[_Atom], right: _Atom, cues: _Cues) -> bool:
    left = run[-1]
    gap = text[left.end : right.start]
    if gap in _COMMA_GAPS:
        if len(left.digits) <= 3 and len(right.digits) <= 3:
            return True
        # Dictated in groups of up to 4 after a cue word: "call 555, 123, 4567".
        return len(left.digits) <= 4 and len(right.digits) <= 4 and cues.dictation(run[0].start)
    if left.spelled or right.spelled:
        return gap in _SPELLED_GAPS
    return gap in _NUMBER_GAPS


def _runs(text: str, cues: _Cues) -> list[list[_Atom]]:
    runs: list[list[_Atom]] = []
    current: list[_Atom] = []
    for atom in _atoms(text):
        if atom is not None and current and _joins(text, current, atom, cues):
            current.append(atom)
            continue
        if current:
            runs.append(current)
        current = [atom] if atom is not None else []
    if current:
        runs.append(current)
    return runs


def _is_year(group: str, low: int = 1000, high: int = 2999) -> bool:
    return len(group) == 4 and low <= int(group) <= high


def _day_month(day: str, month: str) -> bool:
    return len(day) <= 2 and len(month) <= 2 and 1 <= int(day) <= 31 and 1 <= int(month) <= 12


def _date_length(text: str, run: list[_Atom], i: int) -> int:
    """How many atoms from `i` make a date (3: 2024-01-15, 15/01/2024, 01.15.2024) or a year
    range (2: 2019-2020); 0 when they do not."""
    if i + 1 < len(run) and not run[i].spelled and not run[i + 1].spelled:
        a, b = run[i].digits, run[i + 1].digits
        gap = text[run[i].end : run[i + 1].start]
        if i + 2 < len(run) and not run[i + 2].spelled:
            c = run[i + 2].digits
            same_gap = gap in _DATE_GAPS and text[run[i + 1].end : run[i + 2].start] == gap
            if same_gap and (
                (_is_year(a) and _day_month(c, b))
                or (_is_year(c) and (_day_month(a, b) or _day_month(b, a)))
            ):
                return 3
        if gap in ("-", "/") and _is_year(a, 1800, 2199) and _is_year(b, 1800, 2199) and a < b:
            return 2
    return 0


def _without_dates(text: str, run: list[_Atom]) -> list[list[_Atom]]:
    pieces: list[list[_Atom]] = [[]]
    i = 0
    while i < len(run):
        length = _date_length(text, run, i)
        if length:
            pieces.append([])
            i += length
        else:
            pieces[-1].append(run[i])
            i += 1
    return [piece for piece in pieces if piece]


def _trim_oh(text: str, run: list[_Atom]) -> list[_Atom]:
    """Drop the "oh"s at either end of a run unless a spelled digit other than "oh" follows them
    with no comma: "five oh five" is 505, "Oh, 555 1234" and "oh oh oh" are not digits."""
    for _ in range(2):
        count = 0
        while count < len(run) and run[count].spelled == "oh":
            count += 1
        if count:
            oh, neighbour = run[count - 1], run[count] if count < len(run) else None
            keep = neighbour is not None and neighbour.spelled not in ("", "oh")
            if keep and neighbour is not None:
                first, second = sorted((oh, neighbour), key=lambda atom: atom.start)
                keep = "," not in text[first.end : second.start]
            if not keep:
                run = run[count:]
        run = run[::-1]  # the other end, the same way
    return run


def _skipped(text: str, run: list[_Atom], digits: str) -> bool:
    """Numbers that are not personal data: decimals, amounts, round thousands, years, versions."""
    gaps = [text[a.end : b.start] for a, b in pairwise(run)]
    if len(run) == 2 and gaps == ["."]:
        return True
    before = text[max(0, run[0].start - 2) : run[0].start].rstrip(" ")
    after = text[run[-1].end : run[-1].end + 2].lstrip(" ")
    if (before and before[-1] in _CURRENCY) or (after and after[0] in _CURRENCY | {"%"}):
        return True
    if any(atom.spelled for atom in run):
        return False
    if len(set(gaps)) == 1 and gaps[0] == "." and _after_version(text, run[0].start):
        return True  # "version 1.2.3.4", "Windows 10.0.19045"
    if all(_is_year(atom.digits, 1900, 2099) for atom in run):
        return True  # "the years 2019 2020 2021"
    return (  # round thousands: "1,500,000", "1.000.000", "2 500 000"
        len(run) >= 3
        and len(set(gaps)) == 1
        and gaps[0] in (",", ", ", ".", " ")
        and len(run[0].digits) <= 3
        and not run[0].digits.startswith("0")
        and all(len(atom.digits) == 3 for atom in run[1:])
        and digits.endswith("000")
    )


def _after_version(text: str, start: int) -> bool:
    """Whether a version word ("version", "v", "windows", "release", "build") comes right before
    `start`, maybe with a colon: a look at a few characters only."""
    end = start
    while end > 0 and start - end < 3 and text[end - 1] in " :":
        end -= 1
    if end == start:
        return False
    begin = end
    while begin > 0 and end - begin < 8 and text[begin - 1].isalpha():
        begin -= 1
    if begin > 0 and text[begin - 1].isalnum():
        return False
    return text[begin:end].lower() in VERSION_WORDS


def _digit_runs(text: str, cues: _Cues) -> list[_Match]:
    matches: list[_Match] = []
    for whole in _runs(text, cues):
        for part in _without_dates(text, whole):
            run = _trim_oh(text, part)
            digits = "".join(atom.digits for atom in run)
            if len(digits) < MIN_RUN_DIGITS or _skipped(text, run, digits):
                continue
            start = run[0].start
            if not run[0].spelled:
                if start and text[start - 1] == "(":
                    start -= 1
                if start and text[start - 1] == "+":
                    start -= 1
            entities = _classify(text, run, digits, cues)
            matches.append(_Match(start, run[-1].end, entities, _DIGITS))
    return matches


def _classify(text: str, run: list[_Atom], digits: str, cues: _Cues) -> tuple[str, ...]:
    """What a run is, then what it may be redacted as when that is not asked for."""
    count = len(digits)
    numeric = not any(atom.spelled for atom in run)
    gaps = [text[a.end : b.start] for a, b in pairwise(run)]
    if (
        numeric
        and len(run) == 4
        and all(gap == "." for gap in gaps)
        and all(len(atom.digits) <= 3 and int(atom.digits) <= 255 for atom in run)
    ):
        return ("ip_address", "number_sequence")
    if (
        numeric
        and gaps.count(".") >= 3
        and all(gap in (".", ",", ", ") for gap in gaps)
        and all(len(atom.digits) <= 3 for atom in run)
    ):  # a spoken address as Whisper writes it: "192.16, 8.1.2, 0.2, 0.2, 0.8"
        return ("ip_address", "number_sequence")
    low, high = CARD_DIGITS
    card_cue = cues.card(run[0].start) if count >= low else False
    if low <= count <= high and card_cue:
        return ("credit_card_number", "number_sequence")
    ssn_cue = cues.ssn(run[0].start) if count <= MAX_PHONE_DIGITS else False
    if count == SSN_DIGITS and (ssn_cue or _ssn_shape(run)):
        return ("us_social_security_number", "number_sequence")
    if ssn_cue:  # Whisper pads a spoken SSN ("123 45 6789" came out as 13 digits)
        return ("us_social_security_number", "phone_number", "number_sequence")
    if (low <= count <= high and _luhn(digits)) or (count > high and card_cue):
        return ("credit_card_number", "number_sequence")
    if count <= MAX_PHONE_DIGITS:
        return ("phone_number", "number_sequence")
    return ("number_sequence",)


def _ssn_shape(run: list[_Atom]) -> bool:
    if len(run) != 3 or any(atom.spelled for atom in run):
        return False
    area, group, serial = (atom.digits for atom in run)
    return (
        (len(area), len(group), len(serial)) == (3, 2, 4)
        and area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


class _Cues:
    """The words before a position (letters in them: not numbers, nor `[ENTITY]` markers as cue
    words), reaching back into the previous segment; computed only when a run needs them."""

    def __init__(self, text: str, previous: str) -> None:
        self._text, self._previous = text, previous
        self._starts: list[int] | None = None
        self._words: list[str] = []
        self._earlier: list[str] | None = None

    def _before(self, position: int) -> list[str]:
        if self._starts is None:
            found = [(m.start(), m.group().lower()) for m in _WORD.finditer(self._text)]
            found = [(start, word) for start, word in found if _has_letter(word)]
            self._starts = [start for start, _ in found]
            self._words = [word for _, word in found]
        index = bisect.bisect_left(self._starts, position)
        words = self._words[max(0, index - CUE_WORDS) : index]
        if len(words) < CUE_WORDS and self._previous:
            if self._earlier is None:
                earlier = _WORD.findall(self._previous)
                self._earlier = [w.lower() for w in earlier if _has_letter(w)][-CUE_WORDS:]
            words = self._earlier[max(0, len(self._earlier) - CUE_WORDS + len(words)) :] + words
        return words

    def card(self, position: int) -> bool:
        return any(word in CARD_CUES for word in self._before(position))

    def ssn(self, position: int) -> bool:
        words = self._before(position)
        return "ssn" in words or any(a == "social" and b == "security" for a, b in pairwise(words))

    def dictation(self, position: int) -> bool:
        words = self._before(position)
        return any(word in DICTATION_CUES for word in words) or any(
            a == "social" and b == "security" for a, b in pairwise(words)
        )


def _has_letter(word: str) -> bool:
    return any(ch.isalpha() for ch in word)


# ---- IP addresses, IBANs ---------------------------------------------------------------------


def _ip_addresses(text: str) -> list[_Match]:
    matches = [
        _Match(m.start(), m.end(), _numeric("ip_address", m.group()))
        for m in _IPV4.finditer(text)
        if not _after_version(text, m.start())
    ]
    if text.count(":") >= 2:
        for found in _HEXISH.finditer(text):
            candidate = found.group().rstrip(".")
            start, end = found.start(), found.start() + len(candidate)
            if candidate.count(":") < 2 or len(candidate) > 45:
                continue
            if (start and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum()):
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            if sum(1 for part in candidate.split(":") if part) >= 2:
                matches.append(_Match(start, end, _numeric("ip_address", candidate)))
    return matches


def _spoken_ip_addresses(text: str) -> list[_Match]:
    """ "192 dot 168 dot 1 dot 1": four numbers of 0-255 joined by a spoken "dot"."""
    if " dot " not in text.lower():
        return []
    return [
        _Match(m.start(), m.end(), _numeric("ip_address", m.group()), _SPOKEN)
        for m in _SPOKEN_IPV4.finditer(text)
        if all(int(octet) <= 255 for octet in m.groups()) and not _after_version(text, m.start())
    ]


def _is_iban_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _ibans(text: str) -> list[_Match]:
    """Country, check digits and 11-30 letters and digits, spaces allowed between groups, that
    pass the mod-97 check; written loosely (a letter in lower case, or a space between country and
    check digits, only after a country in capitals), also the country's registered length."""
    matches: list[_Match] = []
    for found in _IBAN_START.finditer(text):
        country, space, check = found.groups()
        if space and not country.isupper():
            continue
        bban: list[str] = []
        ends: list[tuple[int, int]] = []  # (end, characters) where a word ends
        position = found.end()
        while len(bban) < _IBAN_MAX_BBAN:
            if position < len(text) and _is_iban_char(text[position]):
                bban.append(text[position])
                position += 1
                if position == len(text) or not text[position].isalnum():
                    ends.append((position, len(bban)))
            elif text.startswith(" ", position) and _is_iban_char(
                text[position + 1 : position + 2]
            ):
                position += 1
            else:
                break
        # The first BBAN character in lower case: an IBAN through it is written loosely.
        lower = next((n for n, char in enumerate(bban) if char.islower()), len(bban))
        registered = IBAN_LENGTHS.get(country.upper(), 0) - 4
        for end, length in reversed(ends):
            if length < _IBAN_MIN_BBAN:
                break
            loose = bool(space) or not country.isupper() or lower < length
            if loose and length != registered:
                continue
            iban = country + check + "".join(bban[:length])
            if _iban_valid(iban):
                matches.append(
                    _Match(found.start(), end, _numeric("iban", text[found.start() : end]))
                )
                break
    return matches


def _iban_valid(iban: str) -> bool:
    """ISO 13616: the country and check digits moved to the end, letters as 10-35, mod 97 is 1
    (in upper case)."""
    iban = iban.upper()
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# ---- e-mail addresses ------------------------------------------------------------------------


def _is_local_char(char: str) -> bool:
    return char.isalnum() or char in "._%+-"


def _is_domain_char(char: str) -> bool:
    return char.isalnum() or char in ".-"


def _emails(text: str) -> list[_Match]:
    """``local@domain.tld``, a space allowed either side of the ``@``. Each character is read at
    most twice (the scans stop at the next ``@``)."""
    matches: list[_Match] = []
    at = text.find("@")
    while at != -1:
        local_end = at - 1 if at and text[at - 1] == " " else at
        local_start = local_end
        while local_start and _is_local_char(text[local_start - 1]):
            local_start -= 1
        while local_start < local_end and not text[local_start].isalnum():
            local_start += 1
        domain_start = at + 2 if text.startswith(" ", at + 1) else at + 1
        domain_end = domain_start
        while domain_end < len(text) and _is_domain_char(text[domain_end]):
            domain_end += 1
        while domain_end > domain_start and text[domain_end - 1] in ".-":
            domain_end -= 1
        labels = text[domain_start:domain_end].split(".")
        if (
            local_start < local_end
            and len(labels) >= 2
            and all(labels)
            and labels[-1].isalpha()
            and len(labels[-1]) >= 2
        ):
            matches.append(_Match(local_start, domain_end, ("email_address",)))
        at = text.find("@", at + 1)
    return matches


def _spoken_emails(text: str) -> list[_Match]:
    """ "jane at example dot com", "jane.doe at example.co.uk", "john dash smith at ...", "j o h n
    at ...": words around an "at", the last label after a dot (spoken or written) a known
    top-level domain, neither the local part's one word nor the domain's first label a common
    word ("looked at the dot com era")."""
    if " at " not in text.lower():
        return []
    tokens = [(m.start(), m.group()) for m in _TOKEN.finditer(text)]
    matches: list[_Match] = []
    for i, (_, token) in enumerate(tokens):
        if token.lower() != "at" or i == 0 or i + 1 >= len(tokens):
            continue
        end = _spoken_domain_end(tokens, i + 1)
        start = _spoken_local_start(tokens, i - 1) if end is not None else None
        if end is not None and start is not None:
            matches.append(_Match(start, end, ("email_address",), _SPOKEN))
    return matches


def _is_spoken_part(token: str, pattern: re.Pattern[str]) -> bool:
    return token.lower() not in ("at", "dot") and pattern.fullmatch(token) is not None


def _is_letter(token: str) -> bool:
    return len(token) == 1 and token.isalnum()


def _spoken_local_start(tokens: Sequence[tuple[int, str]], i: int) -> int | None:
    """Where the local part ending with token `i` starts: parts joined by a spoken "dot", "dash",
    "hyphen" or "underscore", and spelled letters ("j o h n"), as far back as that goes."""
    offset, token = tokens[i]
    bare = token.lstrip(_OPENING)
    if not _is_spoken_part(bare, _SPOKEN_LOCAL):
        return None
    if bare.lower() in COMMON_WORDS and not _is_joined(tokens, i):
        return None  # "looked at", "works at": a local part of one common word is none
    start = offset + len(token) - len(bare)
    count = 1
    while bare == token and count < _SPOKEN_LOCAL_TOKENS and _is_joined(tokens, i):
        step = 2 if tokens[i - 1][1].lower() in _LOCAL_JOINERS else 1
        offset, token = tokens[i - step]
        bare = token.lstrip(_OPENING)
        i -= step
        count += step
        start = offset + len(token) - len(bare)
    return start


def _is_joined(tokens: Sequence[tuple[int, str]], i: int) -> bool:
    """Whether token `i` of a spoken local part continues one before it: after a spoken "dot",
    "dash", "hyphen" or "underscore" and a part, or a spelled letter after another."""
    if i >= 2 and tokens[i - 1][1].lower() in _LOCAL_JOINERS:
        return _is_spoken_part(tokens[i - 2][1].lstrip(_OPENING), _SPOKEN_LOCAL)
    return i >= 1 and _is_letter(tokens[i][1]) and _is_letter(tokens[i - 1][1].lstrip(_OPENING))


def _spoken_domain_end(tokens: Sequence[tuple[int, str]], i: int) -> int | None:
    offset, token = tokens[i]
    bare = token.rstrip(_TRAILING)
    if not _is_spoken_part(bare, _SPOKEN_DOMAIN) or bare.split(".")[0].lower() in COMMON_WORDS:
        return None
    end = None
    hops = 0
    while True:
        if (hops or "." in bare) and bare.rsplit(".", 1)[-1].lower() in EMAIL_TLDS:
            end = offset + len(bare)
        if bare != token or hops == _SPOKEN_HOPS or i + 2 >= len(tokens):
            break
        if tokens[i + 1][1].lower() != "dot":
            break
        i += 2
        hops += 1
        offset, token = tokens[i]
        bare = token.rstrip(_TRAILING)
        if bare.lower() == "at":  # "dot at": Austria's domain, the last label
            end = offset + len(bare)
            break
        if not _is_spoken_part(bare, _SPOKEN_DOMAIN):
            break
    return end
