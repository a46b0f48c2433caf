"""Sentences from the measured attributes: ``phrase`` and the forbidden-word scan.

The captions never guess gender, age or ethnicity: subjects are "This person", "The person" (also "The
person in the photo") and "They" only (``FORBIDDEN_WORDS`` lists words that must never appear; the tests scan for them).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from facemogle.errors import InputError

#: Sentences per image by default (MM-CelebA-HQ has about ten).
DEFAULT_SENTENCES = 10
#: Subjects of the sentences and whether they take a plural verb. Nothing else names the person.
SUBJECTS: tuple[tuple[str, bool], ...] = (
    ("This person", False),
    ("The person", False),
    ("The person in the photo", False),
    ("They", True),
)
#: Possessives for sentences about one thing (``{Their}`` at the start, ``{their}`` inside).
POSSESSIVES: tuple[str, ...] = ("This person's", "The person's", "Their")
_VERBS = {"is": "are", "has": "have", "wears": "wear"}
#: Most facts one generated sentence joins (the first sentence joins all facts about the face).
MAX_FACTS_PER_SENTENCE = 3
#: Inner-mouth area / face area from which an open mouth is "open" rather than "slightly open".
MOUTH_WIDE_OPEN_AREA = 0.03
#: Sentences used when nothing could be said with confidence.
FALLBACK_SENTENCES: tuple[str, ...] = (
    "A photo of the face of a person.",
    "This is a portrait photo of a person.",
    "The photo shows the face of a person.",
    "A close-up portrait of a person.",
    "This person is photographed in a close-up portrait.",
    "The person is seen in a face photo.",
    "The face of a person fills this photo.",
    "A headshot of a person.",
    "This is a headshot photo of a person.",
    "The photo is a close-up of the face of a person.",
)

#: Words no caption may contain (gender, age, ethnicity); checked by the tests.
FORBIDDEN_WORDS: frozenset[str] = frozenset(
    """
    he she him her hers his himself herself man men woman women boy boys girl girls guy guys gal
    lady ladies gentleman gentlemen male female masculine feminine mr mrs ms miss sir madam
    husband wife father mother son daughter brother sister
    young younger youth youthful old older elderly aged age teen teenager teenage child children
    kid kids baby adult senior middle-aged
    asian african caucasian european hispanic latino latina indian arab ethnic ethnicity race racial
    beard moustache mustache makeup lipstick
    """.split()
)


@dataclass(frozen=True)
class _Fact:
    """One thing to say. ``clauses`` follow a subject and use ``{is}``/``{has}``/``{wears}``
    (agreeing with it); ``sentences`` stand alone and use ``{Their}``/``{their}`` possessives."""

    group: str  # "face" (first sentence) or "scene" (clothing, background)
    clauses: tuple[str, ...]
    sentences: tuple[str, ...] = ()


def _facts(attributes: dict[str, dict[str, Any]]) -> list[_Fact]:
    """A ``_Fact`` for every attribute whose value is worth saying (not ``None``/``False``)."""

    def value(key: str) -> Any:
        return attributes.get(key, {}).get("value")

    facts: list[_Fact] = []
    hair, colour, length = value("hair"), value("hair_colour"), value("hair_length")
    if hair == "bald":
        facts.append(_Fact("face", ("{is} bald", "{has} no hair", "{has} a bald head"),
                           ("There is no hair on {their} head.", "{Their} head is bald.")))
    elif hair == "hair" and (colour or length):
        words = " ".join(word for word in (length, colour) if word)
        described = " and ".join(word for word in (length, colour) if word)
        facts.append(_Fact("face", (f"{{has}} {words} hair", f"{{has}} hair that is {described}"),
                           (f"{{Their}} hair is {described}.", f"{{Their}} hair looks {described}.")))
    if value("eyeglasses"):
        kind = "sunglasses" if attributes["eyeglasses"].get("sunglasses") else "eyeglasses"
        facts.append(_Fact("face", (f"{{wears}} {kind}", f"{{is}} wearing {kind}", f"{{has}} {kind} on"),
                           (f"{{Their}} eyes are behind {kind}.",)))
    if value("hat"):
        facts.append(_Fact("face", ("{wears} a hat", "{is} wearing a hat", "{has} a hat on"),
                           ("There is a hat on {their} head.",)))
    if value("earrings"):
        facts.append(_Fact("face", ("{wears} earrings", "{is} wearing earrings"),
                           ("Earrings are visible on {their} ears.",)))
    if value("necklace"):
        facts.append(_Fact("face", ("{wears} a necklace", "{is} wearing a necklace"),
                           ("A necklace is visible around {their} neck.",)))
    if value("smiling"):
        facts.append(_Fact("face", ("{is} smiling", "{has} a smile", "{has} a smiling face")))
    if value("mouth_open"):
        wide = (attributes["mouth_open"].get("inner_mouth_vs_face") or 0) >= MOUTH_WIDE_OPEN_AREA
        clauses = ("{has} an open mouth", "{has} the mouth open") if wide else (
            "{has} the mouth slightly open", "{has} slightly parted lips")
        facts.append(_Fact("face", clauses, ("{Their} mouth is open.",) if wide else ("{Their} mouth is slightly open.",)))
    clothing = value("clothing_colour")
    if clothing:
        facts.append(_Fact("scene", (f"{{wears}} {clothing} clothes", f"{{is}} dressed in {clothing}"),
                           (f"{{Their}} clothes are {clothing}.",)))
    background = value("background_colour")
    if background:
        facts.append(_Fact("scene", (f"{{is}} in front of a {background} background",
                                     f"{{is}} photographed against a {background} background"),
                           (f"The background is {background}.", f"The photo has a {background} background.")))
    return facts


def _join(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _sentence(clauses: list[str], subject: str, plural: bool) -> str:
    verbs = {singular: (plural_form if plural else singular) for singular, plural_form in _VERBS.items()}
    return f"{subject} {_join([clause.format(**verbs) for clause in clauses])}."


def _standalone(template: str, possessive: str) -> str:
    return template.format(Their=possessive, their=possessive[0].lower() + possessive[1:])


def phrase(attributes: dict[str, dict[str, Any]], n: int = DEFAULT_SENTENCES, seed: int = 0) -> list[str]:
    """``n`` caption sentences for the attributes ``describe`` measured; same seed, same sentences.

    The first sentence states every fact about the face (hair, accessories, mouth), the second
    (when there are any) the clothing and background; the others are random combinations of up to
    ``MAX_FACTS_PER_SENTENCE`` facts (or one fact in a sentence of its own) with random wordings and
    subjects. Sentences are distinct while the facts allow it. Attributes whose value is ``None`` or
    ``False`` are never mentioned; with nothing to say, ``FALLBACK_SENTENCES`` are used.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the number of sentences must be a positive integer, got {n!r}")
    rng = random.Random(seed)
    facts = _facts(attributes)
    if not facts:
        start = rng.randrange(len(FALLBACK_SENTENCES))
        return [FALLBACK_SENTENCES[(start + i) % len(FALLBACK_SENTENCES)] for i in range(n)]

    def make(chosen: list[_Fact], subject: tuple[str, bool]) -> str:
        return _sentence([rng.choice(fact.clauses) for fact in chosen], *subject)

    sentences: list[str] = []
    for group in ("face", "scene"):  # the plainest wording: the first sentence is the one evaluated
        chosen = [fact.clauses[0] for fact in facts if fact.group == group]
        if chosen and len(sentences) < n:
            sentences.append(_sentence(chosen, *SUBJECTS[len(sentences)]))  # "This person", "The person"
    attempts = 0
    while len(sentences) < n:
        size = rng.randint(1, min(MAX_FACTS_PER_SENTENCE, len(facts)))
        chosen = [facts[i] for i in sorted(rng.sample(range(len(facts)), size))]
        if size == 1 and chosen[0].sentences and rng.random() < 0.5:
            candidate = _standalone(rng.choice(chosen[0].sentences), rng.choice(POSSESSIVES))
        else:
            candidate = make(chosen, rng.choice(SUBJECTS))
        attempts += 1
        # Distinct sentences while possible; repeats once the facts are exhausted.
        if candidate not in sentences or attempts > 50 * n:
            sentences.append(candidate)
    return sentences


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def forbidden_words_in(sentence: str) -> list[str]:
    """The words of ``sentence`` that are in ``FORBIDDEN_WORDS`` (gender, age, ethnicity)."""
    return [word for word in _WORD.findall(sentence.lower()) if word in FORBIDDEN_WORDS]
