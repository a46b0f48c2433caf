"""The bundled "tiny" model's recipe (``make tiny-model``, ``scripts/train_tiny_model.py``).

:func:`run_recipe` runs the stages in order; each writes under the work dir, nothing is written
into the dataset folder:

1. captions     ``facemogle caption`` of the dataset -> ``<work>/captions`` (skipped when present)
2. split        the deterministic val split (``facemogle.data.splits``) -> ``<work>/split.json``
3. autoencoder  the VAE (config ``stage: autoencoder``) -> ``<work>/autoencoder/vae``
4. text         the byte-level CLIP / T5 pair, contrastive on the captions -> ``<work>/text``
5. diffusion    transformer + condition LoRA + MoGLE from scratch (config ``mode: scratch``); with a
                low-resolution config (``configs/tiny_low_res.yaml``, ``make tiny-model-fast``) at
                64 px (8 x 8 image tokens, a step ~2.6x cheaper), the later runs still at the
                config's 128 px (low resolution first, as FLUX was pre-trained)
5b. text        a shorter run from the diffusion stage's moving average that puts weight on the
    emphasis    text (``configs/tiny_text_emphasis.yaml``: more text-only samples, faces with rare
                caption attributes drawn more often, the every-fact caption sentence more often)
                -> ``<work>/emphasis``; skipped when the settings give no emphasis config
5c. high       a run from 5b's moving average with 5b's settings and the training t shifted
    noise      towards noise (``configs/tiny_high_noise.yaml``: ``train.timestep_shift``), where
                the hair colour and the face's layout are set -> ``<work>/high_noise``; skipped
                when the settings give no high-noise config
5d. small      a run from 5c's moving average with 5c's settings and more loss weight on the tokens
    parts      of the eyes, brows, inner mouth and lips (``configs/tiny_small_parts.yaml``:
                ``train.part_loss_weight``) -> ``<work>/small_parts``; skipped when the settings give
                no small-parts config
6. export       the whole pipeline in float16 + the text-image score weights + ``MODEL_CARD.md``
                (:func:`export_pipeline`, :func:`model_card`) -> the export dir
7. evaluate     ``scripts/evaluate_tiny_model.py`` (:mod:`facemogle.eval.tiny_model_report`) in a
                subprocess: metrics on the validation faces into the card, sample grid and gate-weight
                plot into ``docs/images`` (a pilot evaluates 8 faces and leaves the docs alone)

Finished stages are reused when the recipe runs again with the same work dir (each writes
``<stage dir>/stage_report.json``; delete that file to train the stage again), and an interrupted
diffusion stage continues from its latest checkpoint (every 400 steps), exactly as if never stopped.

A pilot (``pilot_minutes`` set) cuts every stage to its share of the minutes (:data:`PILOT_SHARES`,
1 thread by default) to check the recipe end to end and measure each stage's throughput; its export
goes to ``<work>/export`` unless an export dir is given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import yaml

from facemogle.files import atomic_directory, atomic_write_text

#: Share of a pilot's minutes per stage (autoencoder, text, diffusion); captions/cache/export extra.
PILOT_SHARES = {"autoencoder": 0.3, "text": 0.15, "diffusion": 0.3, "emphasis": 0.12, "high_noise": 0.07,
                "small_parts": 0.06}
#: A pilot's diffusion stage caches only this many faces (the cache build time per face is reported).
PILOT_CACHED_FACES = 64
#: Steps of the short run that measures a stage's seconds per step in a pilot.
PROBE_STEPS = 3
#: The report a finished stage leaves in its folder (its presence marks the stage done).
STAGE_REPORT = "stage_report.json"
#: The whole run's report, in the work dir.
RECIPE_REPORT = "recipe_report.json"
#: A pilot's evaluation stage: this many validation faces, this many bench runs.
PILOT_EVAL_FACES = 8
PILOT_BENCH_RUNS = 1


@dataclass(frozen=True)
class RecipeSettings:
    """What ``scripts/train_tiny_model.py`` was asked to do (its flags, paths resolved by the script).

    Attributes:
        config: the recipe's training config (``configs/tiny.yaml``).
        work_dir: every stage's output folder.
        release_dir: where a full run exports when ``export`` is not given (the bundled weights).
        evaluate_script: the evaluation command run as the last stage.
        data: the dataset folder (``None``: the config's ``data.root``).
        export: the export folder (``None``: ``release_dir``, or ``<work>/export`` for a pilot).
        threads: torch CPU threads (``None``: the config's, 1 for a pilot).
        processes: data-parallel CPU processes for the autoencoder and diffusion stages.
        pilot_minutes: cut every stage to fit this many minutes (``None``: the full run).
        low_res_config: stage 5's own changes to ``config`` (``configs/tiny_low_res.yaml``: a lower
            ``data.resolution`` and its step count); the follow-up runs do not inherit them, so they
            train at ``config``'s resolution. ``None``: stage 5 trains at ``config``'s resolution.
        emphasis_config: stage 5b's changes to ``config`` (a YAML mapping of dotted keys, e.g.
            ``data.empty_mask_dropout: 0.4``); ``None``: no stage 5b.
        high_noise_config: stage 5c's changes on top of 5b's (``configs/tiny_high_noise.yaml``:
            ``train.timestep_shift``); ``None``: no stage 5c.
        small_parts_config: stage 5d's changes on top of 5c's (``configs/tiny_small_parts.yaml``:
            ``train.part_loss_weight``); ``None``: no stage 5d.
    """

    config: Path
    work_dir: Path
    release_dir: Path
    evaluate_script: Path
    data: Path | None = None
    export: Path | None = None
    num_val: int = 100
    text_steps: int = 1200
    text_batch_size: int = 64
    text_lr: float = 1e-3
    threads: int | None = None
    processes: int = 1
    pilot_minutes: float | None = None
    low_res_config: Path | None = None
    emphasis_config: Path | None = None
    high_noise_config: Path | None = None
    small_parts_config: Path | None = None

    @property
    def pilot(self) -> bool:
        return self.pilot_minutes is not None


# ----------------------------------------------------------------------------------- timing


def stage_header(name: str) -> float:
    """Print the stage's banner; return its start time (``time.perf_counter``)."""
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def pilot_budget_s(pilot_minutes: float, stage: str) -> float:
    """Seconds a pilot of ``pilot_minutes`` gives ``stage`` (its :data:`PILOT_SHARES` share)."""
    return 60 * pilot_minutes * PILOT_SHARES[stage]


def steps_in(budget_s: float, seconds_per_step: float, at_least: int = 2) -> int:
    """Whole steps of ``seconds_per_step`` that fit in ``budget_s`` (at least ``at_least``)."""
    return max(at_least, int(budget_s / seconds_per_step))


def time_per_step(run_steps: Callable[[int], list], probe_steps: int = PROBE_STEPS) -> float:
    """Seconds per step of a short probe run (``run_steps(n)`` runs n steps, returns step seconds);
    the first step (warm-up) is left out when there are more (a fitted stage, such as the PCA
    autoencoder, reports one step)."""
    seconds = run_steps(probe_steps)
    timed = seconds[1:] or seconds
    return sum(timed) / max(1, len(timed))


# ----------------------------------------------------------------------------------- stage reports


def finished_stage(stage_dir: Path) -> dict | None:
    """The report of a stage that already finished in this work dir (delete the file to redo it)."""
    path = stage_dir / STAGE_REPORT
    if not path.is_file():
        return None
    print(f"reusing {stage_dir} (finished earlier; delete {path.name} to train it again)")
    return json.loads(path.read_text(encoding="utf-8"))


def finish_stage(stage_dir: Path, report: dict) -> dict:
    """Write ``report`` as the stage's :data:`STAGE_REPORT` (marking it finished); return it."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / STAGE_REPORT, json.dumps(report, indent=1) + "\n")
    return report


def stage_report(step_seconds: list, losses: list, batch_size: int, wall: float, **extra) -> dict:
    """Throughput and loss summary of a training stage (the first step is left out of the timing
    when there are more); ``extra`` entries that are empty or zero are dropped."""
    timed = step_seconds[1:] or step_seconds
    per_step = sum(timed) / max(1, len(timed))
    return {"steps": len(step_seconds), "batch_size": batch_size, "steps_per_s": round(1 / per_step, 3),
            "images_per_s": round(batch_size / per_step, 2), "first_loss": round(losses[0], 5),
            "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5), "wall_s": round(wall, 1),
            **{k: v for k, v in extra.items() if v}}


# ----------------------------------------------------------------------------------- training


def run_training(config, processes: int, threads: int, name: str, work: Path, progress: bool, resume: bool = False):
    """``facemogle.train.trainer.train(config)`` here, or in ``processes`` data-parallel CPU processes.
    ``resume``: continue from the stage's latest checkpoint when it has one (an interrupted recipe).

    Several processes run ``accelerate launch -m facemogle train`` on the config written to
    ``<work>/<name>.yaml`` (per-process batch = the config's batch / processes, so the update is the
    same maths as one process; ``threads`` torch threads each) and read back its ``--result-json``.
    """
    from facemogle.train.launch import cpu_train_command
    from facemogle.train.setup import TrainResult
    from facemogle.train.trainer import train

    if processes == 1:
        return train(config, resume=resume or None, progress=progress)
    values = config.to_dict()
    for section in ("train", "autoencoder"):
        batch = values[section]["batch_size"]
        if batch % processes:
            sys.exit(f"{section}.batch_size {batch} does not split over {processes} processes")
        values[section]["batch_size"] = batch // processes
    values["train"]["cpu_threads"] = threads
    config_file, result_file = work / f"{name}.yaml", work / f"{name}.result.json"
    atomic_write_text(config_file, yaml.safe_dump(values, sort_keys=False))
    command = cpu_train_command(config_file, processes, "--result-json", str(result_file),
                                *(["--resume"] if resume else []))
    environment = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS=str(threads))
    subprocess.run(command + ([] if progress else ["--no-progress"]), env=environment, check=True)
    return TrainResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))


def pilot_steps(settings: RecipeSettings, overrides: dict, stage: str, max_steps_key: str, probe_name: str,
                threads: int) -> int:
    """A pilot's steps for ``stage``: time a :data:`PROBE_STEPS`-step probe run (into
    ``<work>/<probe_name>``), then fit whole steps into the stage's share of the minutes."""
    from facemogle.train.config import load_config

    work = settings.work_dir
    shutil.rmtree(work / probe_name, ignore_errors=True)  # a throwaway run: an earlier probe's is not resumed
    probe = load_config(settings.config, dict(overrides, **{max_steps_key: PROBE_STEPS,
                                                             "output_dir": str(work / probe_name)}))
    per_step = time_per_step(lambda n: run_training(probe, settings.processes, threads, probe_name, work,
                                                    progress=False).step_seconds)
    return steps_in(pilot_budget_s(settings.pilot_minutes, stage), per_step)


def train_text_stage(settings: RecipeSettings, common: dict) -> dict:
    """Stage 4: the byte-level CLIP / T5 pair of the untrained tiny preset, trained contrastively on
    the training faces' captions (:func:`facemogle.train.text_encoders.train_text_encoders`) into
    ``<work>/text``; returns its stage report."""
    from facemogle.data.datasets import FaceDataset
    from facemogle.specs import load_pipeline
    from facemogle.train.config import load_config
    from facemogle.train.text_encoders import train_text_encoders
    from facemogle.train.setup import open_training_records

    work = settings.work_dir
    config = load_config(settings.config, dict(common, **{"output_dir": str(work / "text")}))
    _, records = open_training_records(config)
    faces = FaceDataset(records, config.data.resolution, config.data.image_resize, config.data.mask_order)
    captions = [list(r.captions) for r in records]
    pipe = load_pipeline("tiny", random_init=True, seed=config.seed)
    budget = pilot_budget_s(settings.pilot_minutes, "text") if settings.pilot else None
    result = train_text_encoders(pipe, faces, captions, work / "text", max_steps=settings.text_steps,
                                 batch_size=settings.text_batch_size, lr=settings.text_lr, seed=config.seed,
                                 time_budget_s=budget, max_sequence_length=pipe.default_max_sequence_length,
                                 progress=not settings.pilot)
    return stage_report(result.step_seconds, result.losses, settings.text_batch_size, 0.0,
                        captioned=sum(bool(c) for c in captions), faces=len(captions))


# ----------------------------------------------------------------------------------- the recipe


def trained_stage(config, settings: RecipeSettings, name: str, threads: int, started: float,
                  with_cache_stats: bool = False, extra: dict | None = None) -> dict:
    """A diffusion-trainer stage (5, 5b or 5c) in ``<work>/<name>``: its report when it finished earlier,
    else trained (an interrupted stage continues from its latest checkpoint: same samples and draws)
    and its report written; ``extra`` entries join the report."""
    work = settings.work_dir
    done = finished_stage(work / name)
    if done is not None:
        return done
    result = run_training(config, settings.processes, threads, name, work, progress=not settings.pilot, resume=True)
    return finish_stage(work / name, stage_report(
        result.step_seconds, result.losses, config.train.batch_size, time.perf_counter() - started,
        cache=result.cache_stats if with_cache_stats else None, final_checkpoint=str(result.final_checkpoint),
        **(extra or {})))


def follow_up_stage(settings: RecipeSettings, name: str, yaml_path: Path, overrides: dict, start: Path,
                    threads: int) -> tuple[dict, object]:
    """A shorter diffusion run (stage 5b or 5c) into ``<work>/<name>`` that starts from ``start``'s
    moving average with ``overrides`` (the diffusion stage's, plus the follow-up YAMLs' changes so far,
    ``yaml_path``'s last); a pilot cuts it to its :data:`PILOT_SHARES` share. Returns its stage report
    and config."""
    from facemogle.train.config import load_config

    started = stage_header({"emphasis": "text emphasis"}.get(name, name.replace("_", " ")))
    overrides = dict(overrides, **{"model.init_checkpoint": str(start), "output_dir": str(settings.work_dir / name)})
    planned = load_config(settings.config, overrides).train
    steps = planned.max_steps
    if settings.pilot:
        overrides.update({"sample.every": 0, "checkpoint.every": 10**6})  # over the YAML's
        steps = pilot_steps(settings, overrides, name, "train.max_steps", f"probe-{name}", threads)
        overrides.update({"train.lr_warmup_steps": min(planned.lr_warmup_steps, steps // 4)})
    config = load_config(settings.config, dict(overrides, **{"train.max_steps": steps}))
    report = trained_stage(config, settings, name, threads, started,
                           extra={"settings": read_overrides(yaml_path), "config": shown_path(yaml_path)})
    return report, config


def follow_up_stages(settings: RecipeSettings) -> list[tuple[str, Path]]:
    """The follow-up stages the settings ask for, in the order they run: (name, YAML of changes)."""
    stages = (("emphasis", settings.emphasis_config), ("high_noise", settings.high_noise_config),
              ("small_parts", settings.small_parts_config))
    return [(name, Path(path)) for name, path in stages if path is not None]


def shown_path(path: Path | None) -> str | None:
    """``path`` as the model card names it: relative to the working directory (the repository for
    ``make tiny-model``) when it lies under it, else as given; ``None`` stays ``None``."""
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def read_overrides(path: Path) -> dict:
    """A YAML mapping of dotted config keys -> values (stage 5b's changes); refuses anything else."""
    from facemogle.errors import InputError

    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise InputError(f"{path}: expected a mapping of dotted config keys to values")
    return values


def export_dir(settings: RecipeSettings) -> Path:
    """The export folder: the one asked for, else ``<work>/export`` for a pilot, else the release dir."""
    if settings.export:
        return Path(settings.export)
    return settings.work_dir / "export" if settings.pilot else settings.release_dir


def evaluate_command(settings: RecipeSettings, export: Path, data_root: Path, threads: int) -> list[str]:
    """Stage 7's command line: the evaluation script on the export (a pilot: a few faces, one bench
    run, figures into ``<work>/docs``)."""
    work = settings.work_dir
    command = [sys.executable, str(settings.evaluate_script), "--model", str(export),
               "--work-dir", str(work), "--data", str(data_root), "--threads", str(threads)]
    if settings.pilot:
        command += ["--limit", str(PILOT_EVAL_FACES), "--bench-runs", str(PILOT_BENCH_RUNS),
                    "--docs", str(work / "docs")]
    return command


def run_recipe(settings: RecipeSettings) -> int:
    """Run the seven stages (module docstring); return the evaluation stage's exit status."""
    from facemogle.data import splits
    from facemogle.data.captions import caption_folder
    from facemogle.train.config import load_config

    settings = replace(settings, work_dir=Path(settings.work_dir).resolve())
    work, pilot = settings.work_dir, settings.pilot
    work.mkdir(parents=True, exist_ok=True)
    export = export_dir(settings)
    base = load_config(settings.config)
    data_root = Path(settings.data or base.data.root).resolve()
    threads = settings.threads or (1 if pilot else base.train.cpu_threads)
    torch.set_num_threads(threads)
    process_threads = max(1, threads // settings.processes)  # torch threads of each training process
    report = {"pilot_minutes": settings.pilot_minutes, "threads": threads, "processes": settings.processes,
              "stages": {}}

    # 1. captions
    started = stage_header("captions")
    captions_dir = work / "captions"
    if not (captions_dir / "text.json").is_file():
        caption_folder(data_root, captions_dir)
    report["stages"]["captions"] = {"seconds": round(time.perf_counter() - started, 1)}

    # 2. split
    split = splits.split_folder(data_root, num_val=settings.num_val)
    split_file = splits.write_split(split, work / "split.json")
    print(f"split: {len(split.train)} train, {len(split.val)} val (fingerprint {split.fingerprint[:12]})")
    common = {"data.root": str(data_root), "data.captions_dir": str(captions_dir), "data.split_file": str(split_file),
              "train.cpu_threads": threads}

    # 3. autoencoder
    started = stage_header("autoencoder")
    ae_overrides = dict(common, **{"stage": "autoencoder", "output_dir": str(work / "autoencoder")})
    ae_steps = base.autoencoder.max_steps
    if pilot:
        ae_steps = pilot_steps(settings, ae_overrides, "autoencoder", "autoencoder.max_steps", "probe-ae",
                               process_threads)
    vae_dir = work / "autoencoder" / "vae"
    report["stages"]["autoencoder"] = finished_stage(work / "autoencoder")
    if report["stages"]["autoencoder"] is None:
        ae_config = load_config(settings.config, dict(ae_overrides, **{"autoencoder.max_steps": ae_steps}))
        ae = run_training(ae_config, settings.processes, process_threads, "autoencoder", work, progress=not pilot)
        candidates_file = work / "autoencoder" / "candidates.json"
        report["stages"]["autoencoder"] = finish_stage(
            work / "autoencoder", stage_report(ae.step_seconds, ae.losses, ae_config.autoencoder.batch_size,
                                               time.perf_counter() - started,
                                               candidates=json.loads(candidates_file.read_text(encoding="utf-8"))
                                               if candidates_file.is_file() else None))

    # 4. text encoders
    started = stage_header("text encoders")
    report["stages"]["text"] = finished_stage(work / "text")
    if report["stages"]["text"] is None:
        text_report = train_text_stage(settings, common)
        text_report["wall_s"] = round(time.perf_counter() - started, 1)
        report["stages"]["text"] = finish_stage(work / "text", text_report)

    # 5. diffusion
    started = stage_header("diffusion (scratch)")
    diffusion_overrides = dict(common, **{"model.vae": str(vae_dir), "output_dir": str(work / "diffusion"),
                                          "cache.dir": str(work / "cache"),
                                          "model.options": {"random_init": True, "text_encoders": str(work / "text")}})
    low_res = read_overrides(settings.low_res_config) if settings.low_res_config else {}  # this stage's own
    stage_overrides = dict(diffusion_overrides, **low_res)
    steps = load_config(settings.config, stage_overrides).train.max_steps
    if pilot:
        pilot_overrides = {"sample.every": 0, "checkpoint.every": 10**6, "data.max_samples": PILOT_CACHED_FACES}
        diffusion_overrides.update(pilot_overrides)  # the follow-up runs' too
        stage_overrides.update(pilot_overrides)
        steps = pilot_steps(settings, stage_overrides, "diffusion", "train.max_steps", "probe-diffusion",
                            process_threads)
        stage_overrides.update({"train.lr_warmup_steps": min(base.train.lr_warmup_steps, steps // 4)})
    config = load_config(settings.config, dict(stage_overrides, **{"train.max_steps": steps}))
    report["stages"]["diffusion"] = trained_stage(config, settings, "diffusion", process_threads, started,
                                                  with_cache_stats=True,
                                                  extra={"settings": low_res, "config": shown_path(settings.low_res_config)})

    final = Path(report["stages"]["diffusion"]["final_checkpoint"])

    # 5b. text emphasis (from the diffusion stage's moving average), 5c. high noise (from 5b's),
    # 5d. small parts (from 5c's)
    follow_up_overrides = dict(diffusion_overrides)
    for name, yaml_path in follow_up_stages(settings):
        if yaml_path is None:
            continue
        follow_up_overrides.update(read_overrides(yaml_path))  # each one's changes come on top of the last's
        report["stages"][name], config = follow_up_stage(settings, name, yaml_path, follow_up_overrides, final,
                                                         process_threads)
        final = Path(report["stages"][name]["final_checkpoint"])

    # 6. export
    stage_header("export")
    export_pipeline(final, export, report, split, config, text_dir=work / "text")
    atomic_write_text(work / RECIPE_REPORT, json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))

    # 7. evaluate
    stage_header("evaluate")
    return subprocess.run(evaluate_command(settings, export, data_root, threads), check=False).returncode


# ----------------------------------------------------------------------------------- export


def export_pipeline(checkpoint: Path, export: Path, report: dict, split, config, text_dir: Path) -> None:
    """The final checkpoint's pipeline in float16 (loaded back in float32), the text stage's
    text-image score weights and a model card, into ``export`` (replaced as a whole).

    Everything is written into a hidden folder beside ``export`` first, which then takes the old
    folder's place, so an interrupt leaves the old export or the new one. Adds ``report["export"]``
    (folder, size, parameter counts).
    """
    from facemogle.specs import (SCRATCH_GUIDANCE_SCALE, TINY_MASK_GUIDANCE_SCALE, TINY_NUM_INFERENCE_STEPS,
                                 TINY_TEXT_GUIDANCE, TINY_TEXT_ONLY_GUIDANCE_SCALE, load_pipeline)
    from facemogle.train.text_encoders import SCORE_FILE

    from facemogle.train.checkpoint import apply_ema_weights

    from facemogle.patch_autoencoder import PatchAutoencoder
    from facemogle.specs import TINY_VAE

    pipe = load_pipeline("saved", path=checkpoint)
    report["export_weights"] = "moving average" if apply_ema_weights(pipe, checkpoint) else "last step"
    if isinstance(pipe.vae, PatchAutoencoder):  # the spec's decoder settings (decoding only: latents unchanged)
        pipe.vae.register_to_config(smoothing_steps=TINY_VAE["smoothing_steps"])
    pipe.register_to_config(default_guidance_scale=SCRATCH_GUIDANCE_SCALE,  # the only guidance it was trained with
                            default_mask_guidance_scale=TINY_MASK_GUIDANCE_SCALE,
                            default_text_guidance=TINY_TEXT_GUIDANCE,
                            default_text_only_guidance_scale=TINY_TEXT_ONLY_GUIDANCE_SCALE,
                            default_num_inference_steps=TINY_NUM_INFERENCE_STEPS)
    pipe.default_num_inference_steps = TINY_NUM_INFERENCE_STEPS
    pipe.default_guidance_scale = SCRATCH_GUIDANCE_SCALE
    pipe.default_mask_guidance_scale = TINY_MASK_GUIDANCE_SCALE
    pipe.default_text_guidance = TINY_TEXT_GUIDANCE
    pipe.default_text_only_guidance_scale = TINY_TEXT_ONLY_GUIDANCE_SCALE
    pipe.to(dtype=torch.float16)
    with atomic_directory(export) as staging:  # the shipped folder: the old model or the whole new one
        pipe.save_pretrained(str(staging), safe_serialization=True)
        drop_local_paths(staging)
        shutil.copyfile(text_dir / SCORE_FILE, staging / SCORE_FILE)
        size_mb = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()) / 1e6
        parameters = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                      for name in ("transformer", "mogle", "vae", "text_encoder", "text_encoder_2")}
        report["export"] = {"directory": str(export), "size_mb": round(size_mb, 2), "parameters": parameters}
        (staging / "MODEL_CARD.md").write_text(model_card(report, split, config), encoding="utf-8")
    print(f"exported {export} ({size_mb:.1f} MB)")


def drop_local_paths(export: Path) -> None:
    """Remove diffusers' ``_name_or_path`` (this machine's checkpoint path) from the exported configs."""
    for config_file in export.rglob("*.json"):
        values = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(values, dict) and values.pop("_name_or_path", None) is not None:
            atomic_write_text(config_file, json.dumps(values, indent=2, sort_keys=True) + "\n")


#: The model card's words for a run's ``train.timestep_shift`` and ``train.part_loss_weight``.
TIMESTEP_SHIFT_WORDS = [
    "With `train.timestep_shift` s the model trains at t' = s t / (1 + (s - 1) t) of the drawn logit-normal t",
    "(SD3 / FLUX's resolution shift), so more of its steps fall at high noise, where the hair colour and the",
    "face's layout are decided.",
]
PART_LOSS_WORDS = [
    "With `train.part_loss_weight` w the tokens the mask's eyes, brows, inner mouth and lips cover weigh 1 + w",
    "in the loss and the others 1 (mean 1 per face; `facemogle.flow.part_token_weights`), text-only samples",
    "included, whose mask the model does not see: an eye is 2-4 of the 256 tokens, so a face drawn without one",
    "otherwise costs next to nothing.",
]


def settings_words(changes: dict) -> str:
    """A run's YAML changes as the card lists them: `key: value`, JSON-style (YAML's true, not True)."""
    return ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in changes.items())


def training_hours(stages: dict) -> float:
    """Hours the recipe's stages took (their ``wall_s``, captions' ``seconds``), the evaluation not counted."""
    return sum(s.get("wall_s", s.get("seconds", 0.0)) for s in stages.values() if s) / 3600


def run_yaml(stage: dict) -> str:
    """The YAML of changes a run used, as its stage report records it ("its YAML" in older reports)."""
    return stage.get("config") or "its YAML"


def model_card(report: dict, split, config) -> str:
    """The exported model's ``MODEL_CARD.md``: data and licence, recipe (a row per training stage),
    parameter counts, why the text encoders are trained here, known limits. The "Metrics" section is
    a placeholder that :func:`facemogle.eval.tiny_model_report.write_card_metrics` fills in.

    Args:
        report: the recipe report, with ``stages`` (autoencoder, text, diffusion) and ``export``.
        split: the :class:`facemogle.data.splits.Split` the model was trained on.
        config: the diffusion stage's config (unused; kept for the recipe's call).
    """
    from facemogle.specs import TINY_MASK_GUIDANCE_SCALE, TINY_NUM_INFERENCE_STEPS, TINY_TEXT_ONLY_GUIDANCE_SCALE
    from facemogle.train.text_encoders import SCORE_FILE

    stages = report["stages"]
    params = report["export"]["parameters"]
    lines = [
        "# facemogle tiny: the bundled CPU model",
        "",
        "Face-MoGLE at toy size: a FLUX-style transformer (2 double + 4 single blocks, width 256), the paper's",
        "MoGLE (16 latent channels, 64-wide packed tokens), a 16-channel /4 PCA patch autoencoder",
        "(facemogle.patch_autoencoder) and a byte-level CLIP / T5 text encoder pair, all fitted or trained from",
        f"scratch on this machine. 128 x 128 px = 32 x 32 latents = 16 x 16 tokens per face; {TINY_NUM_INFERENCE_STEPS} steps.",
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
        "(PCA of the training photos' 4 x 4 patches, fitted in seconds), text encoders (contrastive, see below),",
        "then transformer + condition LoRA + MoGLE in scratch mode with cached latents: every face also mirrored",
        "(left/right classes swapped), 15 % of samples with the empty mask (text-only), 10 % with the empty",
        "prompt, each local mask dropped with p 0.1; the export takes the moving average of the weights",
        "(diffusers EMAModel); weights stored in float16. The autoencoder row's losses are its PSNR (dB) on the",
        "training photos.",
        "",
    ]
    low_res = stages["diffusion"].get("settings", {})
    if "data.resolution" in low_res:
        size = low_res["data.resolution"]
        lines += [
            f"The diffusion run trains at {size} x {size} px ({run_yaml(stages['diffusion'])}'s changes to configs/tiny.yaml:",
            settings_words(low_res) + f"): {size // 8} x {size // 8} image tokens and as many condition tokens instead of",
            "16 x 16, so a step costs about a third (the steps/s below) and the run takes more of them in the same",
            "time; the face's layout and the mask's coarse parts are learnt there. The runs after it train at",
            "128 px, where the model is used, and start from its moving average (the rotary positions count tokens,",
            "so the same weights read both sizes; FLUX was pre-trained the same way, low resolution first).",
            "",
        ]
    if "emphasis" in stages:
        from facemogle.data.balance import MAX_WEIGHT

        changes = stages["emphasis"].get("settings", {})
        lines += [
            f"A text-emphasis run (`emphasis` row; {run_yaml(stages['emphasis'])}'s changes to configs/tiny.yaml:",
            settings_words(changes) + ")",
            "then starts from the diffusion run's moving average with a new optimizer, schedule and moving",
            "average (its warm-up restarts): more samples with the empty mask, faces whose first caption",
            "sentence states an attribute rarer than `data.balance_attributes` of the training faces (eyeglasses,",
            f"hat, blond hair, an open mouth, ...) drawn up to {MAX_WEIGHT:g}x more often (`facemogle.data.balance`),",
            "and `data.first_caption_share` of the samples captioned with that every-fact sentence.",
        ]
        if changes.get("data.balance_hair_colour"):
            lines.append("With `data.balance_hair_colour` every hair colour the captions name is drawn as often as the "
                         f"commonest (at most {MAX_WEIGHT:g}x).")
        if changes.get("data.complete_faces_only"):
            lines.append("With `data.complete_faces_only` the faces whose mask lacks the skin, the hair, an eye, the "
                         "nose or the lips (a face turned aside, an eye under the hair; 7 % of the training masks) "
                         "are left out of this run, so that its text-only faces are whole ones "
                         "(`facemogle.face_parts`).")
            if changes.get("data.covered_parts_count"):
                lines.append("With `data.covered_parts_count` eyeglasses count as the eyes they cover and a hat as the "
                             "hair, so the faces wearing them stay in (768 of the 800 training faces kept, 741 "
                             "without).")
        if changes.get("train.timestep_shift", 1.0) != 1.0:
            lines += TIMESTEP_SHIFT_WORDS
        if changes.get("train.part_loss_weight"):
            lines += PART_LOSS_WORDS
        lines += ["Its moving average is what is exported.", ""] if "high_noise" not in stages else [""]
    if "high_noise" in stages:
        changes = stages["high_noise"].get("settings", {})
        lines += [
            f"A high-noise run (`high_noise` row; {run_yaml(stages['high_noise'])}'s changes on top of the text-emphasis",
            "run's: " + settings_words(changes) + ")",
            "then starts from the text-emphasis run's moving average.",
            *TIMESTEP_SHIFT_WORDS,
        ]
        lines += ["Its moving average is what is exported.", ""] if "small_parts" not in stages else [""]
    if "small_parts" in stages:
        changes = stages["small_parts"].get("settings", {})
        lines += [
            f"A small-parts run (`small_parts` row; {run_yaml(stages['small_parts'])}'s changes on top of the high-noise",
            "run's: " + settings_words(changes) + ")",
            "then starts from the high-noise run's moving average.",
            *PART_LOSS_WORDS,
            "Its moving average is what is exported.",
            "",
        ]
    lines += [
        "| stage | steps | batch | steps/s | first loss | last loss |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("autoencoder", "text", "diffusion", "emphasis", "high_noise", "small_parts"):
        if name not in stages:
            continue
        s = stages[name]
        lines.append(f"| {name} | {s['steps']} | {s['batch_size']} | {s['steps_per_s']} | {s['first_loss']} | {s['last_loss']} |")
    candidates = stages["autoencoder"].get("candidates") or []
    if candidates:
        lines += ["", "Autoencoder candidates, reconstruction PSNR of 128 px faces (dB; the chosen one in bold):", "",
                  "| design | factor | channels | tokens per 128 px face | train photos | validation faces |",
                  "|---|---|---|---|---|---|"]
        for c in candidates:
            bold = "**" if c.get("chosen") else ""
            side = c["resolution"] // c["downsample_factor"] // 2
            lines.append(f"| {bold}{c['design']}{bold} | /{c['downsample_factor']} | {c['latent_channels']} | "
                         f"{side} x {side} | {c['train_psnr_db']} | {bold}{c['val_psnr_db']}{bold} |")
        lines += ["| conv VAE shipped before (AutoencoderKL, 2000 steps, 38 min) | /8 | 16 | 8 x 8 | | 23.6 |"]
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
        f"- 128 px and 800 training faces, {training_hours(stages):.1f} hours of 2 CPU cores to train: faces are rough, with patchy 4 x 4",
        "  texture where the model is unsure (the PCA codec has no decoder of its own to hide it) and little",
        "  variety; not a substitute for FLUX.1-dev.",
        "- Mask control is per token (8 x 8 px): small parts come out where the mask puts them, but their",
        "  shapes only roughly; hand-drawn masks unlike CelebAMask-HQ's are followed more loosely.",
        "- Captions cover only what the auto-captioner measures (hair colour and length, accessories, smile,",
        "  open mouth, colours); other words are ignored or misread. Text-only faces come from the empty mask",
        "  (every condition map blank), which 15 % of the diffusion run's samples had (40 % of the text-emphasis,",
        "  high-noise and small-parts runs').",
        "- Text control is partial (the text-control table above): brown hair is followed only part of the",
        "  time (it comes out darker than the captioner's brown, between its black and brown, or lighter,",
        "  between brown and blond), and over a mask rarely; eyeglasses, hats, earrings and necklaces are",
        "  seldom drawn from text. About one text-only face in sixteen misses an eye.",
        f"  Text-only images are guided at w = {TINY_TEXT_ONLY_GUIDANCE_SCALE:g} (`text_only_guidance_scale`; masked images at",
        f"  {TINY_MASK_GUIDANCE_SCALE:g}): on training captions, w = 4 / 5 / 6 gave hair colour 100 / 56 / 81, 100 / 56 / 88 and",
        "  100 / 56 / 94 % and faces with every part 78 / 78 / 75 % (`python scripts/choose_tiny_guidance.py",
        "  --text-only-scale 4 --text-only-scale 5 --text-only-scale 6 --faces 40 --per-colour 16`); pass 4 for",
        "  slightly more whole faces and weaker text.",
        "- Trained on CelebA-HQ celebrities: the demographic bias of that set carries over.",
        "",
    ]
    if report.get("pilot_minutes"):
        lines.insert(2, f"**PILOT RUN ({report['pilot_minutes']} min): not the shipped model.**\n")
    return "\n".join(lines)
