"""Reproduce the bundled "tiny" model in one command (``make tiny-model``).

Stages (each writes under ``--work-dir``; nothing is written into the dataset folder):

1. captions     ``facemogle caption`` of the dataset -> ``<work>/captions`` (skipped when present)
2. split        the deterministic val split (``facemogle.data.splits``) -> ``<work>/split.json``
3. autoencoder  the VAE (config ``stage: autoencoder``) -> ``<work>/autoencoder/vae``
4. text         the byte-level CLIP / T5 pair, contrastive on the captions -> ``<work>/text``
5. diffusion    transformer + condition LoRA + MoGLE from scratch (config ``mode: scratch``)
6. export       the whole pipeline in float16 + the text-image score weights + ``MODEL_CARD.md``
                -> ``--export``
7. evaluate     ``scripts/evaluate_tiny_model.py``: metrics on the validation faces into the card,
                sample grid and gate-weight plot into ``docs/images`` (a pilot evaluates 8 faces
                and leaves the docs alone)

Finished stages are reused when the script runs again with the same ``--work-dir`` (each writes
``<stage dir>/stage_report.json``; delete that file to train the stage again).

``--pilot-minutes M`` cuts every stage to a time share of M minutes (1 thread) to check the
recipe end to end and measure each stage's throughput; its export goes to ``<work>/export``
unless ``--export`` is given.

    python scripts/train_tiny_model.py                       # the full run (~2 h on 2 cores)
    python scripts/train_tiny_model.py --pilot-minutes 8 --work-dir /tmp/tiny-pilot
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
#: Share of a pilot's minutes per stage (autoencoder, text, diffusion); captions/cache/export extra.
PILOT_SHARES = {"autoencoder": 0.3, "text": 0.15, "diffusion": 0.55}
#: A pilot's diffusion stage caches only this many faces (the cache build time per face is reported).
PILOT_CACHED_FACES = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    p.add_argument("--data", default=None, help="dataset folder (default: the config's data.root)")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "tiny-model"))
    p.add_argument("--export", default=None, help="export directory (default: src/facemogle/weights/tiny; "
                                                      "<work>/export for a pilot)")
    p.add_argument("--num-val", type=int, default=100, help="faces held out for validation (default 100)")
    p.add_argument("--text-steps", type=int, default=1200, help="text-encoder steps (default 1200: ~8 min, 96 epochs)")
    p.add_argument("--text-batch-size", type=int, default=64)
    p.add_argument("--text-lr", type=float, default=1e-3, help="text-encoder learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's)")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel CPU processes (accelerate launch, gloo) for the autoencoder and diffusion stages; "
                        "each gets threads/processes threads and batch/processes samples, so the total batch stays "
                        "the config's")
    p.add_argument("--pilot-minutes", type=float, default=None, help="cut every stage to fit this many minutes")
    return p.parse_args(argv)


def stage_header(name: str) -> float:
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def run_training(config, processes: int, threads: int, name: str, work: Path, progress: bool):
    """``facemogle.train.trainer.train(config)`` here, or in ``processes`` data-parallel CPU processes.

    Several processes run ``accelerate launch -m facemogle train`` on the config written to
    ``<work>/<name>.yaml`` (per-process batch = the config's batch / processes, so the update is the
    same maths as one process; ``threads`` torch threads each) and read back its ``--result-json``.
    """
    from facemogle.train.launch import cpu_train_command
    from facemogle.train.trainer import TrainResult, train

    if processes == 1:
        return train(config, progress=progress)
    values = config.to_dict()
    for section in ("train", "autoencoder"):
        batch = values[section]["batch_size"]
        if batch % processes:
            sys.exit(f"{section}.batch_size {batch} does not split over {processes} processes")
        values[section]["batch_size"] = batch // processes
    values["train"]["cpu_threads"] = threads
    config_file, result_file = work / f"{name}.yaml", work / f"{name}.result.json"
    config_file.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    command = cpu_train_command(config_file, processes, "--result-json", str(result_file))
    environment = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS=str(threads))
    subprocess.run(command + ([] if progress else ["--no-progress"]), env=environment, check=True)
    return TrainResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))


def steps_in(budget_s: float, seconds_per_step: float, at_least: int = 2) -> int:
    return max(at_least, int(budget_s / seconds_per_step))


def time_per_step(run_steps, probe_steps: int = 3) -> float:
    """Seconds per step of a short probe run (``run_steps(n)`` runs n steps, returns step seconds)."""
    seconds = run_steps(probe_steps)
    return sum(seconds[1:]) / max(1, len(seconds) - 1)


def main(argv=None) -> int:
    from facemogle.data import splits
    from facemogle.data.captions import caption_folder
    from facemogle.train.config import load_config

    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pilot = args.pilot_minutes is not None
    export = Path(args.export) if args.export else (work / "export" if pilot else REPO / "src" / "facemogle" / "weights" / "tiny")
    base = load_config(args.config)
    data_root = Path(args.data or base.data.root).resolve()
    threads = args.threads or (1 if pilot else base.train.cpu_threads)
    torch.set_num_threads(threads)
    process_threads = max(1, threads // args.processes)  # torch threads of each training process
    report = {"pilot_minutes": args.pilot_minutes, "threads": threads, "processes": args.processes, "stages": {}}

    # 1. captions
    started = stage_header("captions")
    captions_dir = work / "captions"
    if not (captions_dir / "text.json").is_file():
        caption_folder(data_root, captions_dir)
    report["stages"]["captions"] = {"seconds": round(time.perf_counter() - started, 1)}

    # 2. split
    split = splits.split_folder(data_root, num_val=args.num_val)
    split_file = splits.write_split(split, work / "split.json")
    print(f"split: {len(split.train)} train, {len(split.val)} val (fingerprint {split.fingerprint[:12]})")
    common = {"data.root": str(data_root), "data.captions_dir": str(captions_dir), "data.split_file": str(split_file),
              "train.cpu_threads": threads}

    # 3. autoencoder
    started = stage_header("autoencoder")
    ae_overrides = dict(common, **{"stage": "autoencoder", "output_dir": str(work / "autoencoder")})
    ae_steps = base.autoencoder.max_steps
    if pilot:
        probe = load_config(args.config, dict(ae_overrides, **{"autoencoder.max_steps": 3,
                                                                "output_dir": str(work / "probe-ae")}))
        per_step = time_per_step(lambda n: run_training(probe, args.processes, process_threads, "probe-ae", work,
                                                        progress=False).step_seconds)
        ae_steps = steps_in(60 * args.pilot_minutes * PILOT_SHARES["autoencoder"], per_step)
    vae_dir = work / "autoencoder" / "vae"
    report["stages"]["autoencoder"] = finished_stage(work / "autoencoder")
    if report["stages"]["autoencoder"] is None:
        ae_config = load_config(args.config, dict(ae_overrides, **{"autoencoder.max_steps": ae_steps}))
        ae = run_training(ae_config, args.processes, process_threads, "autoencoder", work, progress=not pilot)
        report["stages"]["autoencoder"] = finish_stage(
            work / "autoencoder", stage_report(ae.step_seconds, ae.losses, ae_config.autoencoder.batch_size,
                                               time.perf_counter() - started))

    # 4. text encoders
    started = stage_header("text encoders")
    report["stages"]["text"] = finished_stage(work / "text")
    if report["stages"]["text"] is None:
        text_report = train_text_stage(args, base, common, work, pilot)
        text_report["wall_s"] = round(time.perf_counter() - started, 1)
        report["stages"]["text"] = finish_stage(work / "text", text_report)

    # 5. diffusion
    started = stage_header("diffusion (scratch)")
    diffusion_overrides = dict(common, **{"model.vae": str(vae_dir), "output_dir": str(work / "diffusion"),
                                          "cache.dir": str(work / "cache"),
                                          "model.options": {"random_init": True, "text_encoders": str(work / "text")}})
    steps = base.train.max_steps
    if pilot:
        diffusion_overrides.update({"sample.every": 0, "checkpoint.every": 10**6, "data.max_samples": PILOT_CACHED_FACES})
        probe = load_config(args.config, dict(diffusion_overrides, **{"train.max_steps": 3,
                                                                       "output_dir": str(work / "probe-diffusion")}))
        per_step = time_per_step(lambda n: run_training(probe, args.processes, process_threads, "probe-diffusion",
                                                        work, progress=False).step_seconds)
        steps = steps_in(60 * args.pilot_minutes * PILOT_SHARES["diffusion"], per_step)
        diffusion_overrides.update({"train.lr_warmup_steps": min(base.train.lr_warmup_steps, steps // 4)})
    config = load_config(args.config, dict(diffusion_overrides, **{"train.max_steps": steps}))
    report["stages"]["diffusion"] = finished_stage(work / "diffusion")
    if report["stages"]["diffusion"] is None:
        result = run_training(config, args.processes, process_threads, "diffusion", work, progress=not pilot)
        report["stages"]["diffusion"] = finish_stage(work / "diffusion", stage_report(
            result.step_seconds, result.losses, config.train.batch_size, time.perf_counter() - started,
            cache=result.cache_stats, final_checkpoint=str(result.final_checkpoint)))

    # 6. export
    stage_header("export")
    export_pipeline(Path(report["stages"]["diffusion"]["final_checkpoint"]), export, report, split, config,
                    text_dir=work / "text")
    (work / "recipe_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))

    # 7. evaluate
    stage_header("evaluate")
    command = [sys.executable, str(REPO / "scripts" / "evaluate_tiny_model.py"), "--model", str(export),
               "--work-dir", str(work), "--data", str(data_root), "--threads", str(threads)]
    if pilot:
        command += ["--limit", "8", "--bench-runs", "1", "--docs", str(work / "docs")]
    return subprocess.run(command, check=False).returncode


STAGE_REPORT = "stage_report.json"


def finished_stage(stage_dir: Path) -> dict | None:
    """The report of a stage that already finished in this work dir (delete the file to redo it)."""
    path = stage_dir / STAGE_REPORT
    if not path.is_file():
        return None
    print(f"reusing {stage_dir} (finished earlier; delete {path.name} to train it again)")
    return json.loads(path.read_text(encoding="utf-8"))


def finish_stage(stage_dir: Path, report: dict) -> dict:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / STAGE_REPORT).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def stage_report(step_seconds: list, losses: list, batch_size: int, wall: float, **extra) -> dict:
    timed = step_seconds[1:] or step_seconds
    per_step = sum(timed) / max(1, len(timed))
    return {"steps": len(step_seconds), "batch_size": batch_size, "steps_per_s": round(1 / per_step, 3),
            "images_per_s": round(batch_size / per_step, 2), "first_loss": round(losses[0], 5),
            "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5), "wall_s": round(wall, 1),
            **{k: v for k, v in extra.items() if v}}


def train_text_stage(args, base, common: dict, work: Path, pilot: bool) -> dict:
    from facemogle.data.datasets import FaceDataset
    from facemogle.specs import load_pipeline
    from facemogle.train.config import load_config
    from facemogle.train.text_encoders import train_text_encoders
    from facemogle.train.trainer import open_training_records

    config = load_config(args.config, dict(common, **{"output_dir": str(work / "text")}))
    _, records = open_training_records(config)
    faces = FaceDataset(records, config.data.resolution, config.data.image_resize, config.data.mask_order)
    captions = [list(r.captions) for r in records]
    pipe = load_pipeline("tiny", random_init=True, seed=config.seed)
    budget = 60 * args.pilot_minutes * PILOT_SHARES["text"] if pilot else None
    result = train_text_encoders(pipe, faces, captions, work / "text", max_steps=args.text_steps,
                                 batch_size=args.text_batch_size, lr=args.text_lr, seed=config.seed, time_budget_s=budget,
                                 max_sequence_length=pipe.default_max_sequence_length,
                                 progress=not pilot)
    return stage_report(result.step_seconds, result.losses, args.text_batch_size, 0.0,
                        captioned=sum(bool(c) for c in captions), faces=len(captions))


def export_pipeline(checkpoint: Path, export: Path, report: dict, split, config, text_dir: Path) -> None:
    """The final checkpoint's pipeline in float16 (loaded back in float32), the text stage's
    text-image score weights and a model card."""
    from facemogle.specs import SCRATCH_GUIDANCE_SCALE, TINY_MASK_GUIDANCE_SCALE, load_pipeline
    from facemogle.train.text_encoders import SCORE_FILE

    pipe = load_pipeline("saved", path=checkpoint)
    pipe.register_to_config(default_guidance_scale=SCRATCH_GUIDANCE_SCALE,  # the only guidance it was trained with
                            default_mask_guidance_scale=TINY_MASK_GUIDANCE_SCALE)
    pipe.default_guidance_scale = SCRATCH_GUIDANCE_SCALE
    pipe.default_mask_guidance_scale = TINY_MASK_GUIDANCE_SCALE
    pipe.to(dtype=torch.float16)
    if export.exists():
        shutil.rmtree(export)
    pipe.save_pretrained(str(export), safe_serialization=True)
    drop_local_paths(export)
    shutil.copyfile(text_dir / SCORE_FILE, export / SCORE_FILE)
    size_mb = sum(f.stat().st_size for f in export.rglob("*") if f.is_file()) / 1e6
    parameters = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                  for name in ("transformer", "mogle", "vae", "text_encoder", "text_encoder_2")}
    report["export"] = {"directory": str(export), "size_mb": round(size_mb, 2), "parameters": parameters}
    (export / "MODEL_CARD.md").write_text(model_card(report, split, config), encoding="utf-8")
    print(f"exported {export} ({size_mb:.1f} MB)")


def drop_local_paths(export: Path) -> None:
    """Remove diffusers' ``_name_or_path`` (this machine's checkpoint path) from the exported configs."""
    for config_file in export.rglob("*.json"):
        values = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(values, dict) and values.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_card(report: dict, split, config) -> str:
    from facemogle.train.text_encoders import SCORE_FILE

    stages = report["stages"]
    params = report["export"]["parameters"]
    lines = [
        "# facemogle tiny: the bundled CPU model",
        "",
        "Face-MoGLE at toy size: a FLUX-style transformer (2 double + 4 single blocks, width 256), the paper's",
        "MoGLE (16 latent channels, 64-wide packed tokens), a 16-channel /8 VAE and a byte-level CLIP / T5 text",
        "encoder pair, all trained from scratch on this machine. 128 x 128 px, 20 steps.",
        "",
        "## Data and licence",
        "",
        f"CelebAMask-HQ mini set ({len(split.train)} train faces; {len(split.val)} held out as the validation split,",
        f"fingerprint `{split.fingerprint}`), captions from `facemogle caption` (hair, accessories, mouth,",
        "colours; no gender, age or ethnicity). CelebAMask-HQ is for **non-commercial research only**; so are",
        "these weights.",
        "",
        "## Recipe",
        "",
        "`make tiny-model` (scripts/train_tiny_model.py + configs/tiny.yaml): captions, split, autoencoder",
        "(L1 + L2 + tiny KL), text encoders (contrastive, see below), then transformer + condition LoRA + MoGLE",
        "in scratch mode with cached latents; weights stored in float16.",
        "",
        "| stage | steps | batch | steps/s | first loss | last loss |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("autoencoder", "text", "diffusion"):
        s = stages[name]
        lines.append(f"| {name} | {s['steps']} | {s['batch_size']} | {s['steps_per_s']} | {s['first_loss']} | {s['last_loss']} |")
    lines += [
        "",
        "Parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in params.items())
        + f"; {report['export']['size_mb']:.1f} MB on disk.",
        "",
        "## Text encoder: why trained here",
        "",
        "Nothing may be downloaded at run time and PyPI ships no sentence-encoder weights, so the encoders are",
        "trained here. The diffusion stage caches text embeddings (frozen encoders), and a frozen *random*",
        "encoder gives the transformer no reason to separate 'blond' from 'black'; so a text stage first trains",
        "the byte-level CLIP / T5 pair contrastively against a small image tower on the training photos",
        "(facemogle.train.text_encoders): captions of visibly different faces get different embeddings.",
        f"The image tower is kept as `{SCORE_FILE}`, the text score of the metrics below.",
        "",
        "## Metrics",
        "",
        "Filled in by `scripts/evaluate_tiny_model.py` (the recipe's last stage).",
        "",
        "## Known limits",
        "",
        "- 128 px and a few hundred training faces: blurry, low-diversity faces; not a substitute for FLUX.1-dev.",
        "- Captions cover only what the auto-captioner measures; other words are ignored or misread.",
        "- Trained on CelebA-HQ celebrities: the demographic bias of that set carries over.",
        "",
    ]
    if report.get("pilot_minutes"):
        lines.insert(2, f"**PILOT RUN ({report['pilot_minutes']} min): not the shipped model.**\n")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
