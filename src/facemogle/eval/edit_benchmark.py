"""How well photo edits follow their mask: scripted edits of real masks, scored by the parser.

``facemogle bench edit`` (and the editing tests) take real photos with their ground-truth masks,
edit each mask in a scripted way, run :meth:`FaceMoGLEPipeline.edit` and read the result back
with the shipped parser. The score of an edit kind is the mean IoU, over the *changed* pixels
(where the edited mask differs from the ground truth), of each class the edit paints there,
between the parser's reading and the edited mask; the same for the unedited photo is the baseline
(it still shows what the old mask said, so it scores low by construction). Edit kinds
(``amount`` in pixels of a 512 px mask, scaled with the mask):

* ``hair-grown``: hair spreads ``amount`` px into the background around it, and the whole hair is
  regenerated (``regions=("hair",)``, as a user asking for longer hair would; regenerating the new
  band alone leaves the bundled model too little context to draw hair in it);
* ``hair-shrunk``: hair within ``amount`` px of the background becomes background;
* ``eyeglasses-removed``: eyeglasses become face skin (photos with eyeglasses only);
* ``mouth-opened``: the middle third of the lips' height becomes inner mouth (photos whose mouth
  is closed only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facemogle.editing import grow_region
from facemogle.errors import InputError
from facemogle.labels import class_id

EDIT_KINDS = ("hair-grown", "hair-shrunk", "eyeglasses-removed", "mouth-opened")
#: Classes each kind regenerates on top of the changed pixels (``pipe.edit(regions=...)``).
EDIT_REGIONS: dict[str, tuple[str, ...]] = {"hair-grown": ("hair",)}
DEFAULT_AMOUNT = 40
#: Smallest number of changed pixels (at 512 px) for an edit to count: smaller ones are skipped.
MIN_CHANGED = 400

HAIR, BACKGROUND, SKIN, GLASSES = class_id("hair"), class_id("background"), class_id("face skin"), class_id("eyeglasses")
INNER_MOUTH, UPPER_LIP, LOWER_LIP = class_id("inner mouth"), class_id("upper lip"), class_id("lower lip")


def scripted_edit(ids: np.ndarray, kind: str, amount: int = DEFAULT_AMOUNT) -> np.ndarray | None:
    """The edited copy of an (H, W) official-id mask, or None when the mask does not allow the
    edit (no hair, no eyeglasses, an open mouth, or fewer than ``MIN_CHANGED`` changed pixels)."""
    if kind not in EDIT_KINDS:
        raise InputError(f"unknown edit kind {kind!r}; known: {', '.join(EDIT_KINDS)}")
    scale = ids.shape[0] / 512
    pixels = max(1, int(round(amount * scale)))
    edited = ids.copy()
    if kind == "hair-grown":
        edited[grow_region(ids == HAIR, pixels) & (ids == BACKGROUND)] = HAIR
    elif kind == "hair-shrunk":
        edited[(ids == HAIR) & grow_region(ids == BACKGROUND, pixels)] = BACKGROUND
    elif kind == "eyeglasses-removed":
        edited[ids == GLASSES] = SKIN
    else:
        lips = (ids == UPPER_LIP) | (ids == LOWER_LIP)
        if not lips.any() or (ids == INNER_MOUTH).sum() > 0.1 * lips.sum():
            return None
        rows, cols = np.nonzero(lips)
        top, bottom = rows.min(), rows.max()
        band = np.zeros_like(lips)
        band[top + (bottom - top + 1) // 3 : bottom + 1 - (bottom - top + 1) // 3, cols.min() : cols.max() + 1] = True
        edited[band & lips] = INNER_MOUTH
    changed = int((edited != ids).sum())
    return edited if changed >= MIN_CHANGED * scale**2 else None


def changed_class_iou(parsed: np.ndarray, edited: np.ndarray, source: np.ndarray) -> float:
    """Mean IoU over the classes the edit paints, within the pixels it changes."""
    changed = edited != source
    scores = []
    for c in np.unique(edited[changed]):
        truth, read = changed & (edited == c), changed & (parsed == c)
        scores.append((truth & read).sum() / max((truth | read).sum(), 1))
    return float(np.mean(scores)) if scores else float("nan")


@dataclass
class EditScore:
    kind: str
    stem: str
    before: float  # the unedited photo's parse vs the edited mask, on the changed pixels
    after: float  # the edited photo's parse
    outside_identical: bool
    seconds: float


def bench_edit(pipe, parser, pairs: Sequence[tuple[str, Path, Path]], kinds: Sequence[str] = EDIT_KINDS, *,
               per_kind: int = 20, amount: int = DEFAULT_AMOUNT, seed: int = 0, progress: bool = True) -> dict:
    """Edit up to ``per_kind`` photos per kind (``pairs`` of (stem, photo, mask) in order; masks
    that do not allow an edit are skipped) and score them; returns a JSON-ready report."""
    from PIL import Image
    from tqdm.auto import tqdm

    from facemogle.masks import load_mask

    scores: list[EditScore] = []
    pipe.set_progress_bar_config(disable=True)
    for kind in kinds:
        done = 0
        bar = tqdm(total=per_kind, desc=f"editing ({kind})", unit="edit", disable=not progress)
        for stem, photo_path, mask_path in pairs:
            if done == per_kind:
                break
            source = load_mask(mask_path)
            edited = scripted_edit(source, kind, amount)
            if edited is None:
                continue
            photo = Image.open(photo_path).convert("RGB")
            started = time.perf_counter()
            out = pipe.edit(photo, edited, source_mask=source, regions=EDIT_REGIONS.get(kind), seed=seed,
                            watermark=False)  # the edit itself is scored; the mark is measured by bench watermark
            seconds = time.perf_counter() - started
            result = np.asarray(out.images[0])
            outside = ~out.region
            scores.append(EditScore(kind, stem, changed_class_iou(parser.parse(photo), edited, source),
                                    changed_class_iou(parser.parse(out.images[0]), edited, source),
                                    bool(np.array_equal(result[outside], np.asarray(photo)[outside])), seconds))
            done += 1
            bar.update()
        bar.close()
    report = {"amount_px_at_512": amount, "seed": seed, "kinds": {}}
    for kind in kinds:
        mine = [s for s in scores if s.kind == kind]
        if mine:
            report["kinds"][kind] = {
                "edits": len(mine),
                "iou_before": float(np.mean([s.before for s in mine])),
                "iou_after": float(np.mean([s.after for s in mine])),
                "improved_fraction": float(np.mean([s.after > s.before for s in mine])),
                "outside_identical_fraction": float(np.mean([s.outside_identical for s in mine])),
                "seconds_median": float(np.median([s.seconds for s in mine])),
            }
    report["edits"] = [vars(s) for s in scores]
    return report


def example_rows(pipe, pairs: Sequence[tuple[str, Path, Path]], kinds: Sequence[str] = EDIT_KINDS, *,
                 amount: int = DEFAULT_AMOUNT, seed: int = 0, side: int = 192):
    """One picture row per edit kind (the first of ``pairs`` that allows it): photo | source mask |
    edited mask | result, each ``side`` px, as one RGB PIL image."""
    from PIL import Image

    from facemogle.masks import load_mask, render_mask

    rows = []
    for kind in kinds:
        for _, photo_path, mask_path in pairs:
            source = load_mask(mask_path)
            edited = scripted_edit(source, kind, amount)
            if edited is not None:
                break
        else:
            continue
        photo = Image.open(photo_path).convert("RGB")
        result = pipe.edit(photo, edited, source_mask=source, regions=EDIT_REGIONS.get(kind), seed=seed).images[0]
        cells = [photo, Image.fromarray(render_mask(source)), Image.fromarray(render_mask(edited)), result]
        rows.append([cell.resize((side, side), Image.Resampling.LANCZOS) for cell in cells])
    sheet = Image.new("RGB", (4 * side, len(rows) * side))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            sheet.paste(cell, (c * side, r * side))
    return sheet
