"""Does the text reach the face? Text-only faces and per-attribute text control, read back.

Two measurements of a model, both read back with the project's own face parser and captioner
(:func:`facemogle.data.captions.attributes.describe`), nothing taken on trust:

* :func:`text_only_faces`: faces from prompts alone (the empty mask, the paper's text-only mode);
  the share of them in which the parser finds every part of :data:`FACE_PARTS`.
* :func:`text_control`: for every attribute the captioner reads (hair colour and length,
  eyeglasses, hat, earrings, necklace, smile, open mouth, background colour), faces from prompts
  that name one of its values, text-only and, for the colours no mask fixes (hair, background),
  over masks as well. **Agreement** = how often the read-back value is the prompted one;
  **chance** = how often it comes out that value when the prompt names another (another colour;
  for an attribute with one prompt, a prompt about something else). Samples are paired: sample
  ``k`` of every prompt uses seed ``seed + k`` (and, with masks, mask ``k``).

Two diagnoses beside them: :func:`readback_ceiling` (how often the parser + captioner read a value
back from real photos shrunk to the model's size: the table's ceiling) and :func:`share_showing`
(how often a set of parses or masks shows a part at all, e.g. the ear an earring needs).

Generated images are marked nowhere (``watermark=False``): they are scored and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from facemogle.face_parts import FACE_PARTS, MIN_PART_PIXELS, parts_found  # noqa: F401 (re-exported)
from facemogle.labels import class_id

#: Hair colours asked for: the ones with more than 50 training faces (the captioner also names
#: red, grey and white, each on a handful of the 800).
HAIR_COLOURS = ("black", "brown", "blond")
#: Background colours asked for: the three most common of the training captions (white, black,
#: grey: 46 % of the 900 faces together; blue next with 6 %).
BACKGROUND_COLOURS = ("white", "black", "grey")
#: attribute -> {value: prompt}, in the captioner's first-sentence wording. Yes/no attributes have
#: one prompt (value True); so has hair length (the captioner says "long" or nothing).
PROMPTS: dict[str, dict] = {
    "hair_colour": {c: f"This person has {c} hair." for c in HAIR_COLOURS},
    "hair_length": {"long": "This person has long hair."},
    "eyeglasses": {True: "This person wears eyeglasses."},
    "hat": {True: "This person wears a hat."},
    "earrings": {True: "This person wears earrings."},
    "necklace": {True: "This person wears a necklace."},
    "smiling": {True: "This person is smiling."},
    "mouth_open": {True: "This person has an open mouth."},
    "background_colour": {c: f"This person is in front of a {c} background." for c in BACKGROUND_COLOURS},
}
#: Attributes a mask leaves free (it fixes where hair and background are, not their colour):
#: measured over masks as well.
MASK_FREE = ("hair_colour", "background_colour")
#: Images per pipeline call.
BATCH = 4
#: The ear classes: an earring hangs on an ear, so a face must show one to wear earrings
#: (:func:`share_showing`, ``scripts/ear_visibility.py``).
EAR_CLASSES = ("left ear", "right ear")


@dataclass(frozen=True)
class Sampler:
    """How images are drawn: the pipeline, the image side, the steps; ``seed`` of sample 0;
    ``options``: other pipeline arguments (e.g. ``{"mask_guidance_scale": 6.0}``; default: none);
    ``bar``: a tqdm-style bar that :meth:`draw` advances by one per image (None: silent)."""

    pipe: object
    size: int = 128
    steps: int | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    bar: object = None

    def draw(self, prompts: list[str], masks: list | None = None, first_seed: int | None = None) -> list[Image.Image]:
        """One image per prompt (and mask; ``None``: text-only), seeds ``first_seed + k``."""
        first = self.seed if first_seed is None else first_seed
        images: list[Image.Image] = []
        for start in range(0, len(prompts), BATCH):
            part = prompts[start:start + BATCH]
            mask = None if masks is None else masks[start:start + BATCH]
            out = self.pipe(mask=mask, prompt=part, height=self.size, width=self.size,
                            num_inference_steps=self.steps, seed=[first + start + k for k in range(len(part))],
                            watermark=False, **self.options)
            images.extend(out.images)
            if self.bar is not None:
                self.bar.update(len(part))
        return images


def share_with_every_part(parser, images: list[Image.Image]) -> float:
    """Share of ``images`` in which the parser finds every one of :data:`FACE_PARTS` (the
    ceiling of :func:`text_only_faces` when ``images`` are real photos at the same size)."""
    found = [all(parts_found(ids).values()) for ids in parser.parse(images)]
    return float(np.mean(found)) if found else float("nan")


def share_showing(id_maps, classes: tuple[str, ...] = EAR_CLASSES, min_pixels: int = MIN_PART_PIXELS) -> float:
    """Share of (H, W) class-id maps in which ``classes`` together cover at least ``min_pixels``
    (NaN for none): e.g. the parses of text-only faces with an ear showing, against real masks."""
    ids = [class_id(name) for name in classes]
    shown = [int(np.isin(np.asarray(m), ids).sum()) >= min_pixels for m in id_maps]
    return float(np.mean(shown)) if shown else float("nan")


def counting(sampler: Sampler, total: int, description: str, progress: bool):
    """A tqdm bar of ``total`` images (hidden unless ``progress``) and ``sampler`` advancing it."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="image", disable=not progress)
    return bar, replace(sampler, bar=bar)


def text_only_faces(sampler: Sampler, parser, prompts: list[str], progress: bool = False) -> dict:
    """Text-only faces from ``prompts``: the share with every face part, and per part
    (``progress``: a bar over the images drawn)."""
    bar, sampler = counting(sampler, len(prompts), "text-only faces", progress)
    with bar:
        images = sampler.draw(prompts)
    found = [parts_found(ids) for ids in parser.parse(images)]
    parts = list(found[0]) if found else []
    return {
        "samples": len(images),
        "all_parts": float(np.mean([all(f.values()) for f in found])) if found else float("nan"),
        "per_part": {p: float(np.mean([f[p] for f in found])) for p in parts},
        "size": sampler.size,
    }


def read_attributes(parser, images: list[Image.Image]) -> list[dict]:
    """The captioner's attribute values of generated images (parsed by ``parser`` first)."""
    from facemogle.data.captions.attributes import describe

    return [{k: v.get("value") for k, v in describe(np.asarray(image), ids).items()}
            for image, ids in zip(images, parser.parse(images))]


def text_control(sampler: Sampler, parser, samples: int = 16, masks: list | None = None,
                 progress: bool = False) -> dict:
    """Agreement vs chance per attribute value (module docstring): text-only, and over ``masks``
    (at least ``samples`` of them) for the :data:`MASK_FREE` attributes; ``progress``: a bar over
    the images drawn.

    Returns ``{"text_only": {attribute: {value: {"agreement", "chance"}}}, "with_masks": {...},
    "samples_per_prompt": samples}``.
    """
    if masks is not None and len(masks) < samples:
        raise ValueError(f"text_control needs {samples} masks, got {len(masks)}")
    result = {"samples_per_prompt": samples, "text_only": {}, "with_masks": {}}
    prompts = sum(len(values) for values in PROMPTS.values())
    if masks is not None:
        prompts += sum(len(PROMPTS[attribute]) for attribute in MASK_FREE)
    bar, sampler = counting(sampler, prompts * samples, "text control", progress)
    with bar:
        read = {}  # (attribute, value) -> attribute values of its samples, text-only
        for attribute, values in PROMPTS.items():
            for value, prompt in values.items():
                read[attribute, value] = read_attributes(parser, sampler.draw([prompt] * samples))
        result["text_only"] = agreement_table(read)
        if masks is not None:
            over_masks = {(attribute, value): read_attributes(
                parser, sampler.draw([prompt] * samples, masks=list(masks[:samples])))
                for attribute in MASK_FREE for value, prompt in PROMPTS[attribute].items()}
            result["with_masks"] = agreement_table(over_masks)
    return result


def value_key(value) -> str:
    """An attribute value as the tables key it: yes/no values as ``"true"`` / ``"false"`` (JSON-safe)."""
    return str(value).lower() if isinstance(value, bool) else value


def agreement_table(read: dict) -> dict:
    """``read``: (attribute, prompted value) -> read-back attribute dicts. Per (attribute, value):
    agreement = share read back as the value; chance = share read back as it among the samples of
    the other prompts (another value of the attribute, or for an attribute prompted with one value
    only, such as a yes/no one, every other prompt)."""
    table: dict = {}
    values_asked = {}
    for attribute, _ in read:
        values_asked[attribute] = values_asked.get(attribute, 0) + 1
    for (attribute, value), rows in read.items():
        single = values_asked[attribute] == 1
        others = [r for (a, v), rs in read.items() if (a, v) != (attribute, value)
                  and (a == attribute or single) for r in rs]
        match = lambda r: r.get(attribute) == value  # noqa: E731
        table.setdefault(attribute, {})[value_key(value)] = {
            "agreement": float(np.mean([match(r) for r in rows])) if rows else float("nan"),
            "chance": float(np.mean([match(r) for r in others])) if others else float("nan"),
            "samples": len(rows),
        }
    return table


def readback_table(full_size: list[dict], shrunk: list[dict]) -> dict:
    """Per attribute value that :data:`PROMPTS` asks for: ``faces`` = photos read as that value at full
    size; ``read_when_true`` = the share of them read as it again when shrunk (the captioner's recall at
    that size, taking its full-size reading as the truth); ``read_when_not`` = the share of the other
    photos read as it when shrunk (false alarms). ``full_size`` and ``shrunk``: the attribute dicts of
    the same photos, in the same order (:func:`read_attributes`)."""
    if len(full_size) != len(shrunk):
        raise ValueError(f"readback_table needs the same photos twice, got {len(full_size)} and {len(shrunk)}")
    table: dict = {}
    for attribute, values in PROMPTS.items():
        for value in values:
            true = [s.get(attribute) == value for f, s in zip(full_size, shrunk) if f.get(attribute) == value]
            other = [s.get(attribute) == value for f, s in zip(full_size, shrunk) if f.get(attribute) != value]
            table.setdefault(attribute, {})[value_key(value)] = {
                "faces": len(true),
                "read_when_true": float(np.mean(true)) if true else float("nan"),
                "read_when_not": float(np.mean(other)) if other else float("nan"),
            }
    return table


def readback_ceiling(parser, photos, size: int, batch: int = 16, progress: bool = False) -> dict:
    """The ceiling of text-control agreement at ``size`` px: how often the project's parser + captioner
    read each attribute back from REAL photos shrunk to ``size`` x ``size`` (Lanczos), against their
    reading of the same photos at full size (:func:`readback_table`). A value the captioner seldom sees
    in a real photo of that size (a thin necklace) cannot be shown to follow the prompt there either.
    ``photos``: image paths or PIL images (opened one batch at a time)."""
    from tqdm.auto import tqdm

    full_size, shrunk = [], []
    for start in tqdm(range(0, len(photos), batch), desc="read-back", unit="batch", disable=not progress):
        images = [p if isinstance(p, Image.Image) else Image.open(p) for p in photos[start:start + batch]]
        images = [image.convert("RGB") for image in images]
        full_size += read_attributes(parser, images)
        shrunk += read_attributes(parser, [image.resize((size, size), Image.Resampling.LANCZOS) for image in images])
    return readback_table(full_size, shrunk)
