"""Attribute-balanced sampling: rare caption attributes drawn more often in training.

Of the 800 training faces, about 4 % wear eyeglasses, 5 % a hat and 8 % have blond hair, so a
model trained on every face once per epoch rarely hears these words with a face that shows them,
and its text-only faces never show them. :func:`attribute_weights` gives every face a sampling
weight from the attributes its first caption sentence states (the captioner's sentence with every
fact about the face, :func:`facemogle.data.captions.phrasing.phrase`): a face showing an attribute
of training frequency ``f`` below ``target_share`` gets weight ``target_share / f`` (at most
``max_weight``); the others weight 1. Used with :class:`facemogle.data.stream.WeightedPositions`
(config ``data.balance_attributes``).

Two more options reshape the stream the same way (config ``data.balance_hair_colour``,
``data.complete_faces_only``): :func:`attribute_weights` ``equal_hair_colours`` draws every hair
colour as often as the commonest one (a text-only model hears "brown hair" as often as "black
hair"), and :func:`complete_face_weights` gives weight 0 to the faces whose mask lacks an eye,
the nose, the lips, the hair or the skin (7 % of the training masks: a face turned aside, eyes
under hair or glasses, hair under a hat), so that a run emphasising text-only faces draws whole
ones. Alone it drops accessory faces too (19 of the 48 with eyeglasses, 17 of the 44 with a hat);
``data.covered_parts_count`` keeps them (the accessory counts as the part it covers).
"""

from __future__ import annotations

import re
from collections import Counter

#: attribute name -> pattern over the first caption sentence (the phrasing module's first clauses).
ATTRIBUTE_PATTERNS: dict[str, re.Pattern] = {
    **{f"hair_colour={c}": re.compile(rf"\b{c} hair\b") for c in ("black", "brown", "blond", "grey", "red", "white")},
    "eyeglasses": re.compile(r"\b(?:eyeglasses|sunglasses)\b"),
    "hat": re.compile(r"\ba hat\b"),
    "smiling": re.compile(r"\bsmil(?:ing|e)\b"),
    "mouth_open": re.compile(r"\b(?:an open mouth|the mouth open)\b"),
}
#: Largest weight a face gets (the rarest attributes would otherwise dominate the stream).
MAX_WEIGHT = 6.0


def caption_attributes(sentence: str) -> frozenset[str]:
    """The :data:`ATTRIBUTE_PATTERNS` names a caption sentence states (lower-cased match)."""
    text = sentence.lower()
    return frozenset(name for name, pattern in ATTRIBUTE_PATTERNS.items() if pattern.search(text))


def attribute_weights(captions: list, target_share: float | None, max_weight: float = MAX_WEIGHT,
                      equal_hair_colours: bool = False) -> list[float]:
    """One sampling weight per face (``captions``: each face's caption sentences, first = all facts).

    A face's weight is the largest ``min(max_weight, target_share / f)`` over the attributes it
    shows whose training frequency ``f`` is below ``target_share`` (None: no such boost); 1 when
    it shows none. With ``equal_hair_colours`` a face whose hair colour has frequency ``f`` gets at
    least ``min(max_weight, f_top / f)``, ``f_top`` the commonest colour's frequency. Faces
    without captions weight 1.
    """
    stated = [caption_attributes(c[0]) if c else frozenset() for c in captions]
    counts = Counter(name for names in stated for name in names)
    n = max(len(captions), 1)
    boost = {}
    if target_share is not None:
        boost = {name: min(max_weight, target_share / (count / n)) for name, count in counts.items()
                 if count / n < target_share}
    if equal_hair_colours:
        hair = {name: count for name, count in counts.items() if name.startswith("hair_colour=")}
        top = max(hair.values(), default=0)
        for name, count in hair.items():
            boost[name] = max(boost.get(name, 1.0), min(max_weight, top / count))
    return [max([1.0] + [boost[name] for name in names if name in boost]) for names in stated]


def complete_face_weights(masks: list, covered_parts_count: bool = False) -> list[float]:
    """1 for every (H, W) id mask showing each :data:`facemogle.face_parts.FACE_PARTS`, else 0
    (``covered_parts_count``: eyeglasses stand in for the eyes, a hat for the hair)."""
    from facemogle.face_parts import is_complete_face

    return [1.0 if is_complete_face(mask, covered_parts_count) else 0.0 for mask in masks]


def attribute_shares(captions: list, weights: list[float] | None = None) -> dict[str, float]:
    """Expected share of drawn samples showing each attribute (uniform when ``weights`` is None)."""
    weights = [1.0] * len(captions) if weights is None else weights
    total = sum(weights) or 1.0
    shares: Counter = Counter()
    for caption, weight in zip(captions, weights):
        for name in (caption_attributes(caption[0]) if caption else ()):
            shares[name] += weight / total
    return {name: round(share, 4) for name, share in sorted(shares.items())}
