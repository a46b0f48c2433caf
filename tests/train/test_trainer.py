"""The trainer end to end on the tiny-random model: exact resume after SIGKILL, 2 processes vs 1,
loss going down on real faces, cached vs uncached training, refused resumptions, the autoencoder."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tolerances import ROUNDOFF

from facemogle.condition import LORA_WEIGHT_NAME
from facemogle.errors import CheckpointError
from facemogle.files import MOGLE_WEIGHT_NAME
from facemogle.train import checkpoint as ckpt
from facemogle.train.config import config_from_dict
from facemogle.train.launch import cpu_train_command
from facemogle.train.setup import TrainResult, discarded_condition_lora_parameters
from facemogle.train.train_log import LOG_NAME
from facemogle.train.trainer import Trainer

from .conftest import RESOLUTION, single_thread_environment, tiny_config

try:
    import prodigyopt  # noqa: F401

    OPTIMIZER = {"name": "prodigy"}  # its state (d, p0, ...) is the harder one to resume exactly
except ImportError:
    OPTIMIZER = {"name": "adamw", "lr": 1e-3}

SUBPROCESS_TIMEOUT = 240


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """LoRA + MoGLE tensors of a checkpoint, as written in the official files."""
    lora = {f"lora.{k}": v for k, v in load_file(str(checkpoint / LORA_WEIGHT_NAME)).items()}
    mogle = torch.load(checkpoint / MOGLE_WEIGHT_NAME, weights_only=True)
    return {**lora, **{f"mogle.{k}": v for k, v in mogle.items()}}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def logged_steps(output_dir: Path) -> list[int]:
    with open(output_dir / "logs" / LOG_NAME, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


KILLED_RUN = textwrap.dedent("""
    # Trains until it is writing the step-6 checkpoint, then hangs there (half a file written)
    # until the test kills it with SIGKILL.
    import sys, time
    from facemogle.train import checkpoint as ckpt
    from facemogle.train.config import load_config
    from facemogle.train.trainer import Trainer

    real_save = ckpt.atomic_torch_save

    def save(path, obj):
        if path.parent.name == ".tmp-step-00000006" and path.name == ckpt.OPTIMIZER_NAME:
            path.with_name("." + path.name + ".tmp-partial").write_bytes(b"half of an optimizer state")
            print("HANGING", flush=True)
            time.sleep(3600)
        return real_save(path, obj)

    ckpt.atomic_torch_save = save
    Trainer(load_config(sys.argv[1]), progress=False).run()
""")


def test_a_killed_run_resumes_to_the_same_weights(synthetic_data, tmp_path):
    config = tiny_config(synthetic_data, tmp_path / "killed", train={
        "batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 6, "mixed_precision": "no",
        "optimizer": OPTIMIZER}, sample={"every": 3, "count": 1, "steps": 2})
    config["cache"]["dir"] = str(tmp_path / "cache")
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(config))
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)

    process = subprocess.Popen([sys.executable, str(script), str(config_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=single_thread_environment())
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        line = ""
        while "HANGING" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, "the training subprocess ended before the checkpoint"
            assert time.monotonic() < deadline, "the training subprocess took too long"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    root = tmp_path / "killed" / "checkpoints"
    assert (root / ".tmp-step-00000006").is_dir()  # the half-written checkpoint...
    assert ckpt.latest_checkpoint(root).name == "step-00000004"  # ...is never picked
    assert logged_steps(tmp_path / "killed") == [1, 2, 3, 4, 5, 6]  # logged before the kill

    resumed = Trainer(config_from_dict(config), resume=True, progress=False).run()
    assert (resumed.start_step, resumed.global_step) == (4, 6)
    assert resumed.cache_stats["computed_samples"] == 0  # the cache of the killed run is reused
    assert logged_steps(tmp_path / "killed") == [1, 2, 3, 4, 5, 6]  # steps 5-6 once, from the resumed run
    assert ckpt.list_checkpoints(root)[-1].name == "step-00000006" and not (root / ".tmp-step-00000006").exists()

    uninterrupted_config = {**config, "output_dir": str(tmp_path / "uninterrupted")}
    uninterrupted = Trainer(config_from_dict(uninterrupted_config), progress=False).run()
    assert uninterrupted.losses[4:] == resumed.losses
    reference, result = weights(uninterrupted.final_checkpoint), weights(resumed.final_checkpoint)
    assert all(torch.equal(reference[k], result[k]) for k in reference), max_difference(reference, result)
    assert max_difference(reference, weights(root / "step-00000002")) > 0  # training did move the weights

    # refusals: an output_dir with checkpoints needs --resume; a resumed config must not change the math
    with pytest.raises(CheckpointError, match="already has checkpoints"):
        Trainer(config_from_dict(config), progress=False)
    changed = {**config, "data": {**config["data"], "mask_dropout": 0.5}}
    with pytest.raises(CheckpointError, match=r"data.mask_dropout: 0.1 -> 0.5"):
        Trainer(config_from_dict(changed), resume=True, progress=False).setup()
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(config_from_dict(config), resume=tmp_path / "nowhere", progress=False)


def test_two_processes_match_one_process_with_the_same_total_batch(synthetic_data, tmp_path):
    steps = 3
    two = tiny_config(synthetic_data, tmp_path / "two", train={"batch_size": 2, "max_steps": steps},
                      checkpoint={"every": steps})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    environment = {**single_thread_environment(), "ACCELERATE_USE_CPU": "1"}  # accelerate's switch: gloo on CPU
    command = cpu_train_command(tmp_path / "two.yaml", 2, "--no-progress", "--result-json", str(tmp_path / "two.json"))
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    two_final = ckpt.latest_checkpoint(tmp_path / "two" / "checkpoints")
    two_result = TrainResult.from_dict(json.loads((tmp_path / "two.json").read_text()))  # written by the main process
    assert (two_result.global_step, two_result.final_checkpoint) == (steps, two_final)
    assert len(two_result.losses) == len(two_result.step_seconds) == steps
    assert {"rng_state_0.pt", "rng_state_1.pt"} <= {p.name for p in two_final.iterdir()}  # really 2 processes
    assert ckpt.TrainerState.from_file(two_final / ckpt.STATE_NAME).num_processes == 2

    one = tiny_config(synthetic_data, tmp_path / "one", train={"batch_size": 4, "max_steps": steps},
                      checkpoint={"every": steps})
    result = Trainer(config_from_dict(one), progress=False).run()
    assert ckpt.TrainerState.from_file(result.final_checkpoint / ckpt.STATE_NAME).samples_seen == 4 * steps
    with open(tmp_path / "two" / "logs" / LOG_NAME, newline="") as handle:
        two_losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    np.testing.assert_allclose(two_losses, result.losses, atol=1e-6)  # same samples, noise and t
    # Same math; only the float summation order of the gradient mean differs (the all-reduce adds
    # two half-batch means): observed ~5e-7 after 3 AdamW steps.
    assert max_difference(weights(two_final), weights(result.final_checkpoint)) < 1e-5


def test_loss_decreases_on_real_faces_and_scratch_checkpoints_load(mini_dataset_dir, tmp_path):
    steps = 20
    config = tiny_config(mini_dataset_dir, tmp_path / "scratch", mode="scratch",
                         data={"num_val": 1, "max_samples": 8, "image_resize": "area"},
                         train={"batch_size": 4, "max_steps": steps, "optimizer": {"name": "adamw", "lr": 2e-3}},
                         checkpoint={"every": steps}, sample={"every": steps, "count": 2, "steps": 2})
    trainer = Trainer(config_from_dict(config), progress=False)
    result = trainer.run()
    first, last = np.mean(result.losses[:4]), np.mean(result.losses[-4:])
    assert last < 0.9 * first, result.losses  # observed about 1.25 -> 1.0
    assert (tmp_path / "scratch" / "samples" / "step-00000020.png").is_file()

    loaded = ckpt.load_checkpoint_pipeline(result.final_checkpoint)
    call = dict(mask=np.zeros((RESOLUTION, RESOLUTION), dtype=np.uint8), prompt="", height=RESOLUTION,
                width=RESOLUTION, num_inference_steps=2, seed=0, output_type="latent")
    expected = trainer.pipe(**call).images
    torch.testing.assert_close(loaded(**call).images, expected, **ROUNDOFF)  # separate instances
    from facemogle.train.setup import build_pipeline

    initial = build_pipeline(config_from_dict(config))  # the weights the run started from
    assert (initial(**call).images - expected).abs().max() > 1e-2  # so the comparison can tell


def test_cached_and_uncached_training_compute_the_same_loss():
    """The cache changes where the latents come from, not the training math (bench report)."""
    from facemogle.train.bench import bench_train

    from facemogle.cli import main

    assert main(["bench", "train", "--steps", "1"]) == 2  # the first step is an untimed warm-up
    report = bench_train(steps=2, resolution=RESOLUTION, batch_size=2, num_samples=4)
    assert report["cached_first_loss"] == pytest.approx(report["uncached_first_loss"], abs=1e-4)
    assert report["cached_steps_per_s"] > 0 and report["uncached_steps_per_s"] > 0
    assert report["speedup_cached_vs_uncached"] == pytest.approx(
        report["cached_steps_per_s"] / report["uncached_steps_per_s"], rel=0.01)


def test_every_trainable_parameter_gets_a_gradient(synthetic_data, tmp_path):
    """Needed for DDP without find_unused_parameters: the dead-end LoRA layers are frozen.
    (With gradient checkpointing on: the gradients must still reach every LoRA layer.)"""
    config = tiny_config(synthetic_data, tmp_path / "grads", train={"gradient_checkpointing": True})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    frozen = {id(p) for p in discarded_condition_lora_parameters(trainer.pipe.transformer)}
    assert len(frozen) == 4 and not any(p.requires_grad for p in discarded_condition_lora_parameters(trainer.pipe.transformer))
    batch = next(iter(trainer.dataloader))
    img_ids, txt_ids = trainer.img_ids, torch.zeros(batch["prompt_embeds"].shape[1], 3)
    x_t, _ = trainer.flow.training_pair(batch["image_tokens"], batch["noise"], batch["timestep"])
    pred = trainer.model(x_t, batch["timestep"], batch["condition_tokens"], batch["prompt_embeds"],
                         batch["pooled_prompt_embeds"], img_ids, txt_ids)
    pred.square().mean().backward()
    assert not any(id(p) in frozen for p in trainer.trainable)
    assert all(p.grad is not None for p in trainer.trainable)  # (lora_A's is 0 while lora_B is 0 at init)


def test_autoencoder_stage(synthetic_data, tmp_path):
    from diffusers import AutoencoderKL

    from facemogle.train.trainer import train

    config = tiny_config(synthetic_data, tmp_path / "ae", stage="autoencoder", mode="scratch",
                         autoencoder={"max_steps": 3, "batch_size": 2, "lr": 1e-3})
    result = train(config_from_dict(config), progress=False)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    vae = AutoencoderKL.from_pretrained(str(result.final_checkpoint))
    assert vae.config.scaling_factor > 0 and vae.config.shift_factor != 0.1159  # set from the data
    assert (tmp_path / "ae" / "autoencoder_log.csv").read_text().startswith("step,loss,l1,l2,kl")


def test_options_added_since_a_checkpoint_block_its_resume_only_when_set():
    """A checkpoint saved before an option existed resumes while the option keeps its default."""
    from facemogle.train.config import option_defaults
    from facemogle.train.trainer import config_changes

    defaults = option_defaults()
    assert defaults["data.first_caption_share"] == 0.0 and defaults["data.balance_attributes"] is None
    assert defaults["train.optimizer.lr"] == 1.0 and defaults["model.mogle.gating_mode"] == "dynamic"
    saved = {"seed": 0, "data": {"text_dropout": 0.1}}
    current = {"seed": 0, "data": {"text_dropout": 0.1, "first_caption_share": 0.0, "balance_attributes": None}}
    assert config_changes(saved, current, allow_max_steps=True) == []
    current["data"]["first_caption_share"] = 0.5
    assert config_changes(saved, current, allow_max_steps=True) == ["data.first_caption_share: None -> 0.5"]


def test_which_config_changes_block_an_exact_resume():
    from facemogle.train.trainer import config_changes

    saved = {"seed": 1, "train": {"max_steps": 10, "batch_size": 2}, "data": {"root": "a", "mask_dropout": 0.1},
             "log": {"every": 1}, "model": {"options": {"seed": 0}}}
    allowed = {**saved, "train": {"max_steps": 20, "batch_size": 2}, "data": {"root": "b", "mask_dropout": 0.1},
               "log": {"every": 5}}
    assert config_changes(saved, allowed, allow_max_steps=True) == []
    assert config_changes(saved, allowed, allow_max_steps=False) == ["train.max_steps: 10 -> 20"]  # cosine/linear
    blocked = {**saved, "train": {"max_steps": 10, "batch_size": 4}, "model": {"options": {"seed": 1}}}
    assert config_changes(saved, blocked, allow_max_steps=True) == [
        "model.options: {'seed': 0} -> {'seed': 1}", "train.batch_size: 2 -> 4"]


def test_training_starts_from_the_given_official_files(synthetic_data, tmp_path):
    from facemogle.condition import condition_lora_state_dict, save_condition_lora
    from facemogle.mogle import MoGLE
    from facemogle.specs import load_pipeline

    source = load_pipeline("tiny-random", seed=7)
    for name, parameter in source.transformer.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_()
    save_condition_lora(source.transformer, tmp_path)
    torch.manual_seed(7)
    MoGLE().save_official_checkpoint(tmp_path / MOGLE_WEIGHT_NAME)
    config = tiny_config(synthetic_data, tmp_path / "out", model={
        "spec": "tiny-random", "init_lora": str(tmp_path / LORA_WEIGHT_NAME),
        "init_mogle": str(tmp_path / MOGLE_WEIGHT_NAME)})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    expected_lora = load_file(str(tmp_path / LORA_WEIGHT_NAME))
    loaded_lora = condition_lora_state_dict(trainer.pipe.transformer)
    assert all(torch.equal(loaded_lora[k], expected_lora[k]) for k in expected_lora)
    expected_mogle = torch.load(tmp_path / MOGLE_WEIGHT_NAME, weights_only=True)
    assert all(torch.equal(trainer.pipe.mogle.state_dict()[k], v) for k, v in expected_mogle.items())


def test_bf16_mixed_precision_without_cache(synthetic_data, tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    config = tiny_config(synthetic_data, tmp_path / "bf16", cache={"enabled": False},
                         train={"mixed_precision": "bf16", "max_steps": 2})
    trainer = Trainer(config_from_dict(config), progress=False)
    result = trainer.run()
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    full = {**config, "output_dir": str(tmp_path / "fp32"), "train": {**config["train"], "mixed_precision": "no"}}
    AcceleratorState._reset_state(reset_partial_state=True)  # another Accelerator in this process
    GradientState._reset_state()
    reference = Trainer(config_from_dict(full), progress=False).run().losses
    # the same samples, noise and t: bf16 rounding only (observed 1.3e-4 and 5.6e-4 relative; a zero
    # prediction would give 0.88 instead of 1.25)
    np.testing.assert_allclose(result.losses, reference, rtol=5e-3)
    transformer = trainer.pipe.transformer
    assert transformer.x_embedder.base_layer.weight.dtype == torch.bfloat16  # frozen base in bf16
    assert all(p.dtype == torch.float32 for p in trainer.trainable)  # trained weights in fp32
    assert trainer.pipe.vae.dtype == torch.float32


def test_moving_average_is_saved_resumed_exactly_and_exported(synthetic_data, tmp_path):
    """train.ema_decay: each checkpoint holds the moving average by parameter name; a run resumed
    from step 2 ends with the very average of an uninterrupted run; apply_ema_weights loads it."""
    import shutil

    from facemogle.specs import load_pipeline

    config = tiny_config(synthetic_data, tmp_path / "full", train={"ema_decay": 0.9, "max_steps": 4})
    full = Trainer(config_from_dict(config), progress=False).run()
    average = load_file(str(full.final_checkpoint / ckpt.EMA_NAME))
    live = weights(full.final_checkpoint)
    assert average and all(k.startswith(("transformer.", "mogle.")) for k in average)

    resumed_config = {**config, "output_dir": str(tmp_path / "resumed")}
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(full.final_checkpoint.parent / "step-00000002", tmp_path / "resumed" / "checkpoints" / "step-00000002")
    resumed = Trainer(config_from_dict(resumed_config), resume=True, progress=False).run()
    assert resumed.start_step == 2
    again = load_file(str(resumed.final_checkpoint / ckpt.EMA_NAME))
    assert all(torch.equal(average[k], again[k]) for k in average)

    pipe = load_pipeline("tiny-random", seed=0)
    pipe.transformer.requires_grad_(False)
    ckpt.load_model_weights(full.final_checkpoint, pipe.transformer, pipe.mogle, scratch=False)
    before = {f"mogle.{n}": p.clone() for n, p in pipe.mogle.named_parameters()}
    assert ckpt.apply_ema_weights(pipe, full.final_checkpoint)
    after = {f"mogle.{n}": p for n, p in pipe.mogle.named_parameters()}
    assert all(torch.equal(after[k], average[k]) for k in after if k in average)
    assert any(not torch.equal(before[k], after[k]) for k in after if k in average)  # the average differs
    assert not ckpt.apply_ema_weights(pipe, tmp_path)  # no average in that folder: nothing changes
    assert live  # the live weights are what the checkpoint's LoRA / MoGLE files hold, as before

    without = {**config, "output_dir": str(tmp_path / "plain"), "train": {**config["train"], "ema_decay": None}}
    plain = Trainer(config_from_dict(without), progress=False).run()
    assert not (plain.final_checkpoint / ckpt.EMA_NAME).exists()


def test_autoencoder_stage_fits_a_patch_codec(synthetic_data, tmp_path):
    """The tiny spec's autoencoder is a PCA patch codec: the stage fits it (no gradient steps) and
    measures it and the other candidate shapes on the validation faces."""
    from facemogle.patch_autoencoder import PatchAutoencoder, load_autoencoder
    from facemogle.train.trainer import train

    config = tiny_config(synthetic_data, tmp_path / "ae", stage="autoencoder", mode="scratch",
                         model={"spec": "tiny", "options": {"random_init": True}})
    result = train(config_from_dict(config), progress=False)
    codec = load_autoencoder(result.final_checkpoint)
    assert isinstance(codec, PatchAutoencoder) and codec.config.downsample_factor == 4
    assert len(result.losses) == 1 and result.losses[0] > 20  # train PSNR, dB
    candidates = json.loads((tmp_path / "ae" / "candidates.json").read_text())
    assert [c["chosen"] for c in candidates] == [True, False, False, False, False]
    assert codec.config.smoothing_steps == candidates[0]["smoothing_steps"] > 0
    assert all(c["val_psnr_db"] is not None and c["val_psnr_db"] > 10 for c in candidates)
    by_shape = {(c["downsample_factor"], c["latent_channels"], c["smoothing_steps"]): c for c in candidates}
    assert by_shape[4, 16, 0]["train_psnr_db"] > by_shape[4, 8, 0]["train_psnr_db"]  # more channels, more detail
    assert by_shape[4, 16, 0]["train_psnr_db"] > by_shape[8, 16, 0]["train_psnr_db"]  # smaller patches too


def test_a_nan_loss_stops_training_before_a_checkpoint(synthetic_data, tmp_path, monkeypatch):
    from facemogle.errors import TrainingError
    from facemogle.flow import RectifiedFlow

    real_loss = RectifiedFlow.loss
    calls = {"n": 0}

    def loss(self, pred, target, token_weights=None):
        calls["n"] += 1
        value, per_sample = real_loss(self, pred, target, token_weights)
        if calls["n"] >= 3:  # the third step diverges
            return value * float("nan"), per_sample * float("nan")
        return value, per_sample

    monkeypatch.setattr(RectifiedFlow, "loss", loss)
    config = tiny_config(synthetic_data, tmp_path / "nan", checkpoint={"every": 1})
    with pytest.raises(TrainingError, match="training loss is nan at step 3"):
        Trainer(config_from_dict(config), progress=False).run()
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "nan" / "checkpoints")]
    assert names == ["step-00000001", "step-00000002"]  # the good steps only


def test_infinite_numbers_in_a_config_are_refused(synthetic_data, tmp_path):
    from facemogle.errors import InputError

    for section, values, name in (("train", {"optimizer": {"name": "adamw", "lr": float("inf")}}, "train.optimizer.lr"),
                                  ("data", {"text_dropout": float("nan")}, "data.text_dropout")):
        config = tiny_config(synthetic_data, tmp_path / "inf", **{section: values})
        with pytest.raises(InputError, match=rf"{name}: must be a finite number"):
            config_from_dict(config)


# ----------------------------------------------------------------------------------- one step by hand

CLIP_NORM = 1e-4  # far below the gradient norm of the tiny model (observed 4.9e-3): the clipping bites


def _hand_step_setup(synthetic_data, output_dir, **train):
    """A Trainer set up for one AdamW step with lora_B made non-zero (so lora_A gets a gradient too),
    and a recorder that computes, before the trainer's own step, the gradient of the same batch by
    hand: x_t = (1 - t) x_0 + t noise, target = noise - x_0, loss = mean (pred - target)^2."""
    config = tiny_config(synthetic_data, output_dir, train={
        "batch_size": 2, "max_steps": 1, "mixed_precision": "no", "max_grad_norm": CLIP_NORM,
        "optimizer": {"name": "adamw", "lr": 1e-2, "eps": 1e-6, "weight_decay": 0.01}, **train},
        checkpoint={"every": 1})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, parameter in trainer.pipe.transformer.named_parameters():
            if ".lora_B." in name and parameter.requires_grad:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator).to(parameter.device))
    seen = {}
    real_micro_step = trainer._micro_step

    def recording_micro_step(batch):
        params = trainer.trainable
        seen["before"] = [p.detach().clone() for p in params]
        t = batch["timestep"].view(-1, 1, 1)
        x0, noise = batch["image_tokens"], batch["noise"]
        x_t, target = (1 - t) * x0 + t * noise, noise - x0
        txt_ids = torch.zeros(batch["prompt_embeds"].shape[1], 3, device=x0.device)
        pred = trainer.model(x_t, batch["timestep"], batch["condition_tokens"],
                             batch["prompt_embeds"].to(trainer.weight_dtype),
                             batch["pooled_prompt_embeds"].to(trainer.weight_dtype), trainer.img_ids, txt_ids)
        loss = (pred.float() - target.float()).square().mean()
        scale = trainer.accelerator.scaler.get_scale() if trainer.accelerator.scaler is not None else 1.0
        seen["scale"] = scale
        seen["grads"] = [g.float() / scale for g in torch.autograd.grad(loss * scale, params)]
        seen["loss"] = loss.item()
        return real_micro_step(batch)

    trainer._micro_step = recording_micro_step
    return trainer, seen


def _clipped_adamw_first_step(before, grads, config):
    """``clip_grad_norm_`` (coefficient max_norm / (total_norm + 1e-6), at most 1) and AdamW's first
    step (bias-corrected m = g, v = g^2): p (1 - lr wd) - lr g / (|g| + eps)."""
    settings = config.train.optimizer
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coefficient = min(1.0, config.train.max_grad_norm / (total.item() + 1e-6)) if config.train.max_grad_norm else 1.0
    expected = [p * (1 - settings.lr * settings.weight_decay) - settings.lr * (g * coefficient) /
                ((g * coefficient).abs() + settings.eps) for p, g in zip(before, grads)]
    return total.item(), expected


def test_one_clipped_adamw_step_matches_the_step_by_hand(synthetic_data, tmp_path):
    trainer, seen = _hand_step_setup(synthetic_data, tmp_path / "clip")
    result = trainer.run()
    norm, expected = _clipped_adamw_first_step(seen["before"], seen["grads"], trainer.config)
    assert norm > 10 * CLIP_NORM  # the clipping bites
    _, unclipped = _clipped_adamw_first_step(seen["before"], seen["grads"],
                                             config_from_dict({**trainer.config.to_dict(), "train": {
                                                 **trainer.config.to_dict()["train"], "max_grad_norm": None}}))
    assert max((a - b).abs().max().item() for a, b in zip(expected, unclipped)) > 1e-3  # so the test can tell
    assert result.losses[0] == pytest.approx(seen["loss"], rel=1e-6)
    for parameter, want, before in zip(trainer.trainable, expected, seen["before"]):
        assert not torch.equal(parameter.detach(), before)
        torch.testing.assert_close(parameter.detach(), want, atol=1e-7, rtol=1e-6)
    with open(tmp_path / "clip" / "logs" / LOG_NAME, newline="") as handle:
        logged = float(next(csv.DictReader(handle))["grad_norm"])
    assert logged == pytest.approx(norm, rel=1e-5, abs=1e-6)  # the norm before clipping


@pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "fp16 loss scaling needs CUDA: the trainer's fp16 mode (accelerate's GradScaler) is refused without a CUDA "
    "device (config: 'train.mixed_precision: fp16 needs a CUDA device')"))
def test_one_fp16_scaled_step_matches_the_step_by_hand(synthetic_data, tmp_path):
    """fp16: the loss is multiplied by the scaler's scale, the gradients are unscaled before the
    clipping, and the step is the float32 clipped AdamW step of the unscaled gradients."""
    trainer, seen = _hand_step_setup(synthetic_data, tmp_path / "fp16", mixed_precision="fp16")
    scaler = trainer.accelerator.scaler
    assert scaler is not None and scaler.get_scale() > 1
    result = trainer.run()
    assert not trainer.accelerator.optimizer_step_was_skipped
    norm, expected = _clipped_adamw_first_step(seen["before"], seen["grads"], trainer.config)
    assert norm > 10 * CLIP_NORM and seen["scale"] > 1
    assert result.losses[0] == pytest.approx(seen["loss"], rel=1e-3)
    for parameter, want in zip(trainer.trainable, expected):
        # the hand gradient comes from the same fp16 forward; the allowance covers CUDA's reduction order
        # (a step without the clipping would be 7e-3 away)
        torch.testing.assert_close(parameter.detach(), want, atol=1e-4, rtol=1e-3)
    assert scaler.get_scale() == seen["scale"]  # a finite step keeps the scale (growth after 2000 steps)
    assert (tmp_path / "fp16" / "checkpoints" / "step-00000001" / ckpt.SCALER_NAME).is_file()


def test_a_new_run_starts_from_another_runs_moving_average(synthetic_data, tmp_path):
    """model.init_checkpoint: the weights at step 0 are the earlier run's moving average (scratch:
    the whole transformer), with a fresh optimizer, schedule and step count."""
    from accelerate.state import AcceleratorState, GradientState

    first_config = tiny_config(synthetic_data, tmp_path / "first", mode="scratch",
                               train={"ema_decay": 0.9, "max_steps": 2})
    first = Trainer(config_from_dict(first_config), progress=False).run()
    average = load_file(str(first.final_checkpoint / ckpt.EMA_NAME))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    second_config = tiny_config(synthetic_data, tmp_path / "second", mode="scratch",
                                model={"spec": "tiny-random", "init_checkpoint": str(first.final_checkpoint)},
                                data={"balance_attributes": 0.5, "first_caption_share": 0.5},
                                train={"ema_decay": 0.9, "max_steps": 2})
    trainer = Trainer(config_from_dict(second_config), progress=False)
    trainer.setup()
    assert trainer.global_step == 0 and trainer.samples_seen == 0
    live = {f"{owner}.{name}": p for owner, module in (("transformer", trainer.pipe.transformer),
                                                       ("mogle", trainer.pipe.mogle))
            for name, p in module.named_parameters()}
    assert any("lora_" not in k and k.startswith("transformer.") for k in average)  # scratch: the base too
    assert all(torch.equal(live[k].float(), v.float()) for k, v in average.items())
    shadow = dict(zip(trainer._trainable_names(), trainer.ema.shadow_params))  # the new average starts there
    assert all(torch.equal(shadow[k], v.float()) for k, v in average.items() if k in shadow)
    assert len(trainer.sample_weights) == trainer.num_samples
    assert type(trainer.dataloader.dataset.order).__name__ == "WeightedPositions"
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    fresh = Trainer(config_from_dict(tiny_config(synthetic_data, tmp_path / "fresh", mode="scratch")), progress=False)
    fresh.setup()
    fresh_mogle = {f"mogle.{name}": p for name, p in fresh.pipe.mogle.named_parameters()}
    assert any(not torch.equal(p.float(), average[k].float()) for k, p in fresh_mogle.items() if k in average)


def test_sample_weights_combine_the_balance_options_and_drop_incomplete_faces(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from facemogle.data.datasets import FaceRecord
    from facemogle.errors import InputError
    from facemogle.face_parts import FACE_PARTS
    from facemogle.labels import class_id
    from facemogle.train.trainer import training_sample_weights

    def record(name: str, caption: str, missing: str | None = None, covered_by: str | None = None) -> FaceRecord:
        ids = np.zeros((128, 128), np.uint8)
        for k, names in enumerate(FACE_PARTS):
            if missing not in names or covered_by:
                ids[k * 8:k * 8 + 8, :8] = class_id(covered_by if missing in names else names[0])
        Image.fromarray(ids, "L").save(tmp_path / f"{name}.png")
        return FaceRecord(name, tmp_path / f"{name}.jpg", tmp_path / f"{name}.png", (caption,))

    records = [record("a", "This person has black hair."), record("b", "This person has black hair."),
               record("c", "This person has blond hair."), record("d", "This person has blond hair.", "left eye")]

    def weights(**options):
        data = {"balance_attributes": None, "balance_hair_colour": False, "complete_faces_only": False,
                "covered_parts_count": False, "mask_order": "official", **options}
        return training_sample_weights(SimpleNamespace(data=SimpleNamespace(**data)), records)

    assert weights() is None  # no option: epoch permutations
    assert weights(balance_hair_colour=True) == [1.0, 1.0, 1.0, 1.0]  # two of each colour already
    assert weights(complete_faces_only=True) == [1.0, 1.0, 1.0, 0.0]  # "d" has no left eye
    records[1] = record("b", "This person has blond hair.", "nose")
    records[0] = record("a", "This person has black hair.")
    assert weights(balance_hair_colour=True, complete_faces_only=True) == [3.0, 0.0, 1.0, 0.0]
    records[0] = record("a", "This person has black hair.", "hair")
    assert weights(complete_faces_only=True) == [0.0, 0.0, 1.0, 0.0]
    records[1] = record("b", "This person wears eyeglasses.", "left eye", covered_by="eyeglasses")
    assert weights(complete_faces_only=True) == [0.0, 0.0, 1.0, 0.0]
    assert weights(complete_faces_only=True, covered_parts_count=True) == [0.0, 1.0, 1.0, 0.0]
    records[2] = record("c", "This person has blond hair.", "face skin")
    with pytest.raises(InputError, match="no training mask shows every face part"):
        weights(complete_faces_only=True)


def unweighted_squared_error(trainer, batch) -> torch.Tensor:
    """(B, N, D) squared velocity error of the trainer's model on ``batch`` before its step (t unshifted)."""
    t = batch["timestep"].view(-1, 1, 1)
    x0, noise = batch["image_tokens"], batch["noise"]
    txt_ids = torch.zeros(batch["prompt_embeds"].shape[1], 3)
    with torch.no_grad():
        pred = trainer.model((1 - t) * x0 + t * noise, batch["timestep"], batch["condition_tokens"],
                             batch["prompt_embeds"], batch["pooled_prompt_embeds"], trainer.img_ids, txt_ids)
    return (pred.float() - (noise - x0).float()).square()


def test_loss_channel_power_weighs_the_loss_by_the_codecs_gain(synthetic_data, tmp_path):
    """train.loss_channel_power: the logged loss is the token MSE weighted per channel by the PCA
    codec's gain (flow.token_channel_weights); an autoencoder without gains is refused at setup."""
    from accelerate.state import AcceleratorState, GradientState

    from facemogle.errors import InputError
    from facemogle.flow import token_channel_weights
    from facemogle.train.trainer import train

    tiny = {"spec": "tiny", "options": {"random_init": True}}
    codec_run = train(config_from_dict(tiny_config(synthetic_data, tmp_path / "ae", stage="autoencoder",
                                                   mode="scratch", model=tiny)), progress=False)
    config = tiny_config(synthetic_data, tmp_path / "weighted", mode="scratch",
                         model=dict(tiny, vae=str(codec_run.final_checkpoint)),
                         train={"batch_size": 2, "max_steps": 1, "mixed_precision": "no", "loss_channel_power": 1.0,
                                "optimizer": {"name": "adamw", "lr": 1e-3}})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    weights = token_channel_weights(trainer.pipe.vae.channel_gain(), 1.0)
    assert weights[0] > 2 * weights[-1]  # the brightness channel counts more
    seen = {}
    real_micro_step = trainer._micro_step

    def recording_micro_step(batch):
        error = unweighted_squared_error(trainer, batch)
        seen["weighted"], seen["plain"] = (error * weights).mean().item(), error.mean().item()
        return real_micro_step(batch)

    trainer._micro_step = recording_micro_step
    result = trainer.run()
    assert result.losses[0] == pytest.approx(seen["weighted"], rel=1e-5)
    assert seen["plain"] != pytest.approx(seen["weighted"], rel=1e-3)  # so the test can tell (100x the tolerance above)

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    refused = tiny_config(synthetic_data, tmp_path / "refused", train={"loss_channel_power": 0.5})
    with pytest.raises(InputError, match="train.loss_channel_power 0.5 needs an autoencoder with per-channel"):
        Trainer(config_from_dict(refused), progress=False).setup()


def test_timestep_shift_trains_at_the_shifted_t(synthetic_data, tmp_path):
    """train.timestep_shift: the model sees, the loss uses and the log buckets the shifted t
    (flow.shift_timesteps of the stream's draw), not the drawn one."""
    from facemogle.flow import shift_timesteps

    config = tiny_config(synthetic_data, tmp_path / "shifted",
                         train={"batch_size": 2, "max_steps": 1, "mixed_precision": "no", "timestep_shift": 3.0,
                                "optimizer": {"name": "adamw", "lr": 1e-3}})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    seen = {}
    real_forward = trainer.model.forward

    def recording_forward(noisy_latents, timestep, *args, **kwargs):
        seen.setdefault("timestep", timestep.detach().clone())
        return real_forward(noisy_latents, timestep, *args, **kwargs)

    real_micro_step = trainer._micro_step

    def recording_micro_step(batch):
        seen["drawn"] = batch["timestep"].detach().clone()
        return real_micro_step(batch)

    trainer.model.forward = recording_forward
    trainer._micro_step = recording_micro_step
    trainer.run()
    assert torch.allclose(seen["timestep"], shift_timesteps(seen["drawn"], 3.0), atol=1e-6)
    assert not torch.allclose(seen["timestep"], seen["drawn"], atol=1e-3)  # so the test can tell


def test_part_loss_weight_weighs_the_small_parts_tokens_of_every_sample(synthetic_data, tmp_path):
    """train.part_loss_weight: the logged loss is the token MSE weighted by flow.part_token_weights
    of the batch's own masks (text-only samples too), not the plain MSE."""
    from facemogle.flow import part_token_weights

    config = tiny_config(synthetic_data, tmp_path / "parts",
                         data={"empty_mask_dropout": 0.5},
                         train={"batch_size": 4, "max_steps": 2, "mixed_precision": "no", "part_loss_weight": 4.0,
                                "part_loss_classes": ["hair"], "optimizer": {"name": "adamw", "lr": 1e-3}})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    seen = []
    real_micro_step = trainer._micro_step

    def recording_micro_step(batch):
        assert batch["part_tokens"].any(dim=1).all()  # every synthetic face has hair ...
        # ... over all 4 tokens of a 32 px face through the conv VAE: keep the first one only, so that
        # the weights are not uniform and the test can tell them from the plain MSE
        batch = dict(batch, part_tokens=torch.zeros_like(batch["part_tokens"]))
        batch["part_tokens"][:, 0] = True
        error = unweighted_squared_error(trainer, batch)  # (B, N, D)
        weights = part_token_weights(batch["part_tokens"], 4.0)
        seen.append(((error * weights[..., None]).mean().item(), error.mean().item(), batch["part_tokens"].clone(),
                     batch["mask_emptied"].clone()))
        return real_micro_step(batch)

    trainer._micro_step = recording_micro_step
    result = trainer.run()
    for loss, (weighted, plain, parts, _) in zip(result.losses, seen):
        assert loss == pytest.approx(weighted, rel=1e-5)
        assert plain != pytest.approx(weighted, rel=1e-3)  # so the test can tell
    assert any(bool(emptied.any()) for *_, emptied in seen)  # ... also those trained without their mask


def test_a_new_run_starts_from_a_saved_pipeline(tmp_path, synthetic_data):
    """model.init_checkpoint may be an exported pipeline (the bundled model's folder): the trainer
    starts from its transformer, condition LoRA and MoGLE; one of other shapes is refused."""
    from facemogle.specs import load_pipeline

    source = load_pipeline("tiny-random", seed=5)
    export = tmp_path / "export"
    source.save_pretrained(str(export), safe_serialization=True)
    config = tiny_config(synthetic_data, tmp_path / "from-export", mode="scratch",
                         model={"spec": "tiny-random", "init_checkpoint": str(export)},
                         train={"ema_decay": 0.9, "max_steps": 1})
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.setup()
    for owner in ("transformer", "mogle"):
        theirs = getattr(source, owner).state_dict()
        ours = getattr(trainer.pipe, owner).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for name, shadow in zip(trainer._trainable_names(), trainer.ema.shadow_params):  # the average starts there
        owner, key = name.split(".", 1)
        assert torch.equal(shadow, getattr(source, owner).state_dict()[key].float())

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    other = tiny_config(synthetic_data, tmp_path / "other", mode="scratch", model={
        "spec": "tiny-random", "init_checkpoint": str(export), "mogle": {"expert_hidden_dim": 8}})
    with pytest.raises(CheckpointError, match="its mogle has other shapes"):
        Trainer(config_from_dict(other), progress=False).setup()
