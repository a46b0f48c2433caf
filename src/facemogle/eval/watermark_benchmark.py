"""How robust the watermark is, and how often it is seen where there is none (``facemogle bench watermark``).

Faces are generated with a model (unmarked, ``watermark=False``), then marked with
:func:`facemogle.provenance.mark_image` exactly as the pipeline marks its outputs (the bundled
model's 128 px faces are upscaled to 512 px for it), then altered the ways images travel and read
back with :func:`facemogle.provenance.read_mark`:

* ``none``; ``jpeg90`` / ``jpeg75`` / ``jpeg50``: JPEG re-encoding at that quality;
* ``resize50``: down to 50 % and back up (bicubic); ``crop10``: 10 % cut from the right and
  bottom; ``screenshot``: a round trip through RGBA and a plain PNG re-save (no metadata).

At the generated size itself (128 px for the bundled model) the library cannot mark or read at
all (it needs sides above 256 px); the report says so. False positives: every photo given (the
shared real faces and fixtures) is read as it is. The report also gives the PSNR of marked vs
unmarked images.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from facemogle.provenance import MIN_READABLE_SIDE, mark_image, read_mark


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def attack(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return attack


def _resize50(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.resize((w // 2, h // 2), Image.Resampling.BICUBIC).resize((w, h), Image.Resampling.BICUBIC)


def _crop10(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((0, 0, round(w * 0.9), round(h * 0.9)))


def _screenshot(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGBA").save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


ATTACKS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda image: image, "jpeg90": _jpeg(90), "jpeg75": _jpeg(75), "jpeg50": _jpeg(50),
    "resize50": _resize50, "crop10": _crop10, "screenshot": _screenshot,
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def bench_watermark(pipe, masks: Sequence[str | Path], prompts: Sequence[str], real_photos: Sequence[str | Path], *,
                    seed: int = 0, batch_size: int = 8, progress: bool = True) -> dict:
    """Generate one face per mask (with its prompt), mark, attack and read them; read every real photo."""
    from tqdm.auto import tqdm

    pipe.set_progress_bar_config(disable=True)
    detected = {name: 0 for name in ATTACKS}
    psnrs, generated_side, seconds_mark, seconds_read = [], None, [], []
    bar = tqdm(total=len(masks), desc="generate + mark + read", unit="face", disable=not progress)
    for start in range(0, len(masks), batch_size):
        part = list(range(start, min(start + batch_size, len(masks))))
        faces = pipe(mask=[masks[i] for i in part], prompt=[prompts[i] for i in part],
                     seed=[seed + i for i in part], watermark=False).images
        for face in faces:
            generated_side = min(face.size)
            began = time.perf_counter()
            marked = mark_image(face, pipe.model_spec)
            seconds_mark.append(time.perf_counter() - began)
            psnrs.append(psnr(marked, face.resize(marked.size, Image.Resampling.LANCZOS)))
            for name, attack in ATTACKS.items():
                began = time.perf_counter()
                detected[name] += read_mark(attack(marked)).present
                seconds_read.append(time.perf_counter() - began)
        bar.update(len(part))
    bar.close()
    false_positives = [str(p) for p in tqdm(real_photos, desc="real photos", unit="photo", disable=not progress)
                       if read_mark(Image.open(p)).present]
    count = len(masks)
    return {
        "faces": count, "model": pipe.model_spec, "generated_side_px": generated_side,
        "marked_side_px": max(generated_side or 0, 512),
        "at_generated_size": ("not markable: the library needs sides above 256 px"
                              if generated_side is not None and generated_side < MIN_READABLE_SIDE else "marked as is"),
        "detection_rate": {name: hits / count for name, hits in detected.items()},
        "psnr_marked_vs_unmarked_db": {"min": float(np.min(psnrs)), "median": float(np.median(psnrs))},
        "real_photos": len(real_photos), "false_positives": len(false_positives), "false_positive_files": false_positives,
        "seconds_per_mark": float(np.median(seconds_mark)), "seconds_per_read": float(np.median(seconds_read)),
    }
