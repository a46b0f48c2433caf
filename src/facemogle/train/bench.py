"""Training throughput: the latent cache against encoding everything every step.

:func:`bench_train` trains the tiny-random preset twice on the same synthetic folder dataset, in
one process, with the same config except ``cache.enabled``:

* **cached**: image latents, the 20 mask latents and text embeddings are read from the cache
  (built once before the timed steps; its build time is reported separately);
* **uncached**: every step runs the VAE on the image and the 20 condition images and both text
  encoders on the captions, as the reference implementation does.

Steps/s are measured after one warm-up step; the ratio cached / uncached is the speed-up.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facemogle.labels import class_id
from facemogle.masks import render_mask, save_mask

SYNTHETIC_CAPTIONS = ("She is smiling.", "He has a beard.", "The person wears glasses.", "Short black hair.")


def synthetic_face_mask(resolution: int, rng: np.random.Generator) -> np.ndarray:
    """A crude but plausible face label map: hair, skin, eyes, brows, nose, lips, neck, cloth."""
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    ids = np.zeros((resolution, resolution), dtype=np.uint8)
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.45 + rng.uniform(-0.05, 0.05)
    ids[yy > 0.8] = class_id("cloth")
    ids[(np.abs(xx - cx) < 0.12) & (yy > cy) & (yy <= 0.8)] = class_id("neck")
    ids[((xx - cx) / 0.3) ** 2 + ((yy - cy + 0.05) / 0.36) ** 2 < 1] = class_id("hair")
    ids[((xx - cx) / 0.24) ** 2 + ((yy - cy) / 0.3) ** 2 < 1] = class_id("face skin")
    for side, (eye, brow) in ((-1, ("left eye", "left eyebrow")), (1, ("right eye", "right eyebrow"))):
        ex = cx + side * 0.09
        ids[((xx - ex) / 0.04) ** 2 + ((yy - cy + 0.04) / 0.02) ** 2 < 1] = class_id(eye)
        ids[(np.abs(xx - ex) < 0.05) & (np.abs(yy - cy + 0.09) < 0.01)] = class_id(brow)
    ids[(np.abs(xx - cx) < 0.025) & (yy > cy - 0.03) & (yy < cy + 0.07)] = class_id("nose")
    ids[((xx - cx) / 0.07) ** 2 + ((yy - cy - 0.12) / 0.015) ** 2 < 1] = class_id("upper lip")
    ids[((xx - cx) / 0.06) ** 2 + ((yy - cy - 0.15) / 0.015) ** 2 < 1] = class_id("lower lip")
    return ids


def write_synthetic_dataset(root: str | Path, num_samples: int, resolution: int, seed: int = 0,
                            captions: bool = True) -> Path:
    """A folder dataset (images/, masks/, text/) of synthetic faces: mask colours + smooth noise."""
    root = Path(root)
    for name in ("images", "masks", "text"):
        (root / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_samples):
        ids = synthetic_face_mask(resolution, rng)
        noise = rng.normal(0, 30, (resolution // 8, resolution // 8, 3))
        noise = np.kron(noise, np.ones((8, 8, 1)))
        pixels = np.clip(0.7 * render_mask(ids) + 40 + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"face{i:04d}.png")
        save_mask(ids, root / "masks" / f"face{i:04d}.png")
        if captions:
            chosen = rng.choice(len(SYNTHETIC_CAPTIONS), size=2, replace=False)
            (root / "text" / f"face{i:04d}.txt").write_text("\n".join(SYNTHETIC_CAPTIONS[j] for j in chosen) + "\n")
    return root


def bench_config(root: Path, output_dir: Path, *, cache: bool, steps: int, resolution: int, batch_size: int) -> dict:
    return {
        "output_dir": str(output_dir),
        "mode": "adapter",
        "seed": 0,
        "model": {"spec": "tiny-random", "options": {"seed": 0}},
        "data": {"root": str(root), "layout": "folder", "num_val": 0, "resolution": resolution},
        "cache": {"enabled": cache, "shard_size": 64, "encode_batch_size": 16},
        "train": {"batch_size": batch_size, "max_steps": steps, "mixed_precision": "no",
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
        "checkpoint": {"every": steps},
        "log": {"every": steps, "tensorboard": False},
        "sample": {"every": 0},
    }


def bench_train(steps: int = 20, resolution: int = 64, batch_size: int = 2, num_samples: int = 16) -> dict:
    """Measure both variants (``steps`` + 1 warm-up step each) and return a JSON-able report."""
    from facemogle.train.config import config_from_dict
    from facemogle.train.trainer import Trainer

    report = {"model": "tiny-random", "mode": "adapter", "resolution": resolution, "batch_size": batch_size,
              "timed_steps": steps, "samples": num_samples, "torch_threads": torch.get_num_threads(),
              "device": "cpu"}
    with tempfile.TemporaryDirectory(prefix="facemogle-bench-") as tmp:
        root = write_synthetic_dataset(Path(tmp) / "data", num_samples, resolution)
        for variant, cached in (("cached", True), ("uncached", False)):
            config = config_from_dict(bench_config(root, Path(tmp) / variant, cache=cached, steps=steps + 1,
                                                   resolution=resolution, batch_size=batch_size))
            trainer = Trainer(config, progress=False)
            started = time.perf_counter()
            trainer.setup()
            setup_seconds = time.perf_counter() - started
            result = trainer.run()
            report[f"{variant}_steps_per_s"] = round(result.steps_per_second(skip=1), 3)
            report[f"{variant}_setup_s"] = round(setup_seconds, 3)
            report[f"{variant}_first_loss"] = round(result.losses[0], 6)
            if cached:
                report["cache_build_s"] = round(result.cache_stats.get("seconds", 0.0), 3)
    report["speedup_cached_vs_uncached"] = round(report["cached_steps_per_s"] / report["uncached_steps_per_s"], 2)
    return report
