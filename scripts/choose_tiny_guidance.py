"""How the bundled model's guidance and step count were chosen, on TRAINING faces only (never the
validation split).

    python scripts/choose_tiny_guidance.py [--faces 16] [--per-colour 8] [--setting 4,text,16 ...]
    python scripts/choose_tiny_guidance.py --text-only-scale 4 --text-only-scale 6 --faces 100 --per-colour 16

For each setting (mask guidance w, with or without text guidance, sampling steps): mIoU(parse(generated), mask)
over ``--faces`` training faces (their own masks and first captions, seeds 0..), the smallest IoU of
the small parts, and text-only hair-colour agreement vs chance (``--per-colour`` faces per colour,
read back by the project's parser + captioner). Prints one JSON line per setting. ``--text-only-scale``
instead measures text-only calls alone at each guidance scale (text guidance on, the model's steps,
seeds 1000..): the share of faces with every part (the first captions of ``--faces`` training faces,
every 7th from the 4th; at most 114) and hair-colour agreement, with what the captioner read for each
asked colour. ``--schedule-shift S`` samples with FLUX's schedule shifted by S (the scheduler's
``base_shift`` set to ln S: at the tiny model's 256 tokens the shift is exactly S; the shipped config's
is e^0.5 = 1.65). The numbers in ``facemogle.specs`` (TINY_MASK_GUIDANCE_SCALE, TINY_NUM_INFERENCE_STEPS,
TINY_TEXT_ONLY_GUIDANCE_SCALE) come from this measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ((2.0, False, 20), (3.0, True, 20), (4.0, True, 20))
SMALL = ("left eye", "right eye", "left eyebrow", "right eyebrow", "nose", "inner mouth", "upper lip", "lower lip",
         "left ear", "right ear")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default=str(REPO / "runs" / "tiny-model"), help="the recipe's work dir (split, captions)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "celebamask-hq-mini"))
    p.add_argument("--faces", type=int, default=16)
    p.add_argument("--per-colour", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--setting", action="append", default=None, metavar="W,TEXT,STEPS",
                   help="mask guidance, 'text' or 'plain', steps (repeatable; default: the three of SETTINGS)")
    p.add_argument("--text-only-scale", type=float, action="append", default=None, metavar="W",
                   help="text-only study at this guidance scale (repeatable)")
    p.add_argument("--schedule-shift", type=float, default=None, metavar="S",
                   help="sample with the schedule shifted by S (default: the weights' scheduler config)")
    p.add_argument("--weights", default=None, help="an exported tiny model folder (default: the shipped weights)")
    args = p.parse_args()
    settings = SETTINGS if not args.setting else [
        (float(w), t == "text", int(n)) for w, t, n in (item.split(",") for item in args.setting)]

    import numpy as np
    import torch

    from facemogle.eval.metrics import confusion_matrix, iou_per_class
    from facemogle.eval.text_control import HAIR_COLOURS, PROMPTS, read_attributes
    from facemogle.labels import class_id
    from facemogle.masks import load_mask, resize_mask
    from facemogle.parser import load_parser
    from facemogle.specs import load_pipeline

    torch.set_num_threads(args.threads)
    pipe, parser = load_pipeline("tiny", weights=args.weights), load_parser()
    if args.schedule_shift is not None:
        if args.schedule_shift <= 0:
            raise SystemExit(f"error: --schedule-shift must be positive, got {args.schedule_shift}")
        import math

        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, base_shift=math.log(args.schedule_shift))
    work = Path(args.work_dir)
    split = json.loads((work / "split.json").read_text())
    captions = json.loads((work / "captions" / "text.json").read_text())
    stems = sorted(split["train"])[5::50][: args.faces]
    masks = [resize_mask(load_mask(Path(args.data) / "masks" / f"{s}.png"), 128) for s in stems]
    prompts = [captions[f"{s}.jpg"][0] for s in stems]
    k = args.per_colour
    if args.text_only_scale:
        text_only_prompts = [captions[f"{s}.jpg"][0] for s in sorted(split["train"])[3::7][: args.faces]]
        return text_only_study(pipe, parser, text_only_prompts, args.text_only_scale, k)
    for scale, text, steps in settings:
        started = time.time()
        confusion = np.zeros((19, 19), np.int64)
        for i in range(0, len(stems), 4):
            images = pipe(mask=masks[i:i + 4], prompt=prompts[i:i + 4], seed=list(range(i, i + len(masks[i:i + 4]))),
                          mask_guidance_scale=scale, text_guidance=text, num_inference_steps=steps,
                          watermark=False).images
            for image, mask in zip(images, masks[i:i + 4]):
                confusion += confusion_matrix(parser.parse(image), mask)
        iou = iou_per_class(confusion)
        reads = {c: read_attributes(parser, pipe(mask=None, prompt=[PROMPTS["hair_colour"][c]] * k, seed=list(range(k)),
                                                 mask_guidance_scale=scale, text_only_guidance_scale=scale, text_guidance=text,
                                                 num_inference_steps=steps, watermark=False).images)
                 for c in HAIR_COLOURS}
        hair = {c: {"agreement": float(np.mean([r["hair_colour"] == c for r in reads[c]])),
                    "chance": float(np.mean([r["hair_colour"] == c for o in HAIR_COLOURS if o != c for r in reads[o]]))}
                for c in HAIR_COLOURS}
        print(json.dumps({"mask_guidance": scale, "text_guidance": text, "steps": steps, "miou": round(float(np.nanmean(iou)), 4),
                          "small_parts_min_iou": round(float(np.nanmin(iou[[class_id(n) for n in SMALL]])), 3),
                          "hair_colour_text_only": hair, "seconds": round(time.time() - started, 1)}), flush=True)


def text_only_study(pipe, parser, prompts: list[str], scales: list[float], per_colour: int) -> None:
    """One JSON line per guidance scale: text-only faces with every part, hair-colour agreement."""
    from collections import Counter

    import numpy as np

    from facemogle.eval.text_control import HAIR_COLOURS, PROMPTS, Sampler, read_attributes, text_only_faces

    for scale in scales:
        started = time.time()
        sampler = Sampler(pipe, seed=1000, options={"text_only_guidance_scale": scale, "text_guidance": True})
        faces = text_only_faces(sampler, parser, prompts)
        reads = {c: [r["hair_colour"] for r in read_attributes(parser, sampler.draw([PROMPTS["hair_colour"][c]] * per_colour))]
                 for c in HAIR_COLOURS}
        print(json.dumps({
            "text_only_scale": scale, "faces": faces["samples"], "all_parts": round(faces["all_parts"], 3),
            "per_part": {p: round(v, 3) for p, v in faces["per_part"].items()},
            "hair_agreement": {c: round(float(np.mean([v == c for v in reads[c]])), 3) for c in HAIR_COLOURS},
            "hair_read": {c: dict(Counter(str(v) for v in reads[c])) for c in HAIR_COLOURS},
            "seconds": round(time.time() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
