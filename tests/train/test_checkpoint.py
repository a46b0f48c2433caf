"""Checkpoints: atomic writes, completeness, verification, RNG state, scratch pipelines."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from facemogle.condition import LORA_WEIGHT_NAME
from facemogle.errors import CheckpointError
from facemogle.files import MOGLE_WEIGHT_NAME
from facemogle.specs import load_pipeline
from facemogle.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny-random", seed=0)
    generator = torch.Generator().manual_seed(5)
    for name, parameter in pipe.transformer.named_parameters():
        if "lora_B" in name:  # gaussian init leaves B = 0; make the LoRA matter
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    return pipe


def parts(pipe, step: int) -> ckpt.CheckpointParts:
    optimizer = torch.optim.AdamW(pipe.mogle.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = ckpt.TrainerState(global_step=step, samples_seen=4 * step, epoch=0, index_in_epoch=4 * step,
                              num_samples=100, num_processes=1, seed=0, mode="adapter")
    return ckpt.CheckpointParts(transformer=pipe.transformer, mogle=pipe.mogle, optimizer=optimizer,
                                lr_scheduler=scheduler, state=state, config_yaml="seed: 0\n")


def test_an_interrupted_save_is_never_listed_and_the_next_save_completes(pipe, tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(root, parts(pipe, 2))
    assert ckpt.list_checkpoints(root) == [first] and first.name == "step-00000002"
    marker = ckpt.verify_checkpoint(first)
    assert {LORA_WEIGHT_NAME, MOGLE_WEIGHT_NAME, "optimizer.pt", "rng_state_0.pt", "trainer_state.json"} <= set(marker["files"])

    real_save = ckpt.atomic_torch_save

    def dies_on_optimizer(path, obj):
        if path.name == ckpt.OPTIMIZER_NAME:
            raise KeyboardInterrupt  # stands for a kill in the middle of the checkpoint
        return real_save(path, obj)

    monkeypatch.setattr(ckpt, "atomic_torch_save", dies_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(root, parts(pipe, 4))
    assert (root / ".tmp-step-00000004").is_dir()
    assert ckpt.list_checkpoints(root) == [first] and ckpt.latest_checkpoint(root) == first
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.verify_checkpoint(root / ".tmp-step-00000004")

    monkeypatch.setattr(ckpt, "atomic_torch_save", real_save)
    second = ckpt.save_checkpoint(root, parts(pipe, 4), keep_last=1)
    assert ckpt.list_checkpoints(root) == [second]  # keep_last pruned step 2
    assert not (root / ".tmp-step-00000004").exists()
    assert ckpt.TrainerState.from_file(second / ckpt.STATE_NAME).samples_seen == 16


def test_a_changed_file_is_detected(pipe, tmp_path):
    saved = ckpt.save_checkpoint(tmp_path, parts(pipe, 1))
    weights = saved / MOGLE_WEIGHT_NAME
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed or damaged"):
        ckpt.verify_checkpoint(saved)
    (saved / MOGLE_WEIGHT_NAME).unlink()
    with pytest.raises(CheckpointError, match="lacks"):
        ckpt.verify_checkpoint(saved)


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.atomic_torch_save(tmp_path / "rng.pt", ckpt.capture_rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(ckpt.safe_torch_load(tmp_path / "rng.pt"))  # weights_only load
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_scratch_checkpoints_hold_the_whole_pipeline(pipe, tmp_path):
    scratch = parts(pipe, 3)
    scratch.scratch_pipeline = pipe
    saved = ckpt.save_checkpoint(tmp_path, scratch)
    assert {"pipeline/model_index.json", f"pipeline/{LORA_WEIGHT_NAME}"} <= set(ckpt.verify_checkpoint(saved)["files"])
    loaded = ckpt.load_checkpoint_pipeline(saved)
    call = dict(mask=np.eye(32, dtype=np.uint8) * 13, prompt="a face", height=32, width=32, num_inference_steps=2,
                seed=0, output_type="latent")
    torch.testing.assert_close(loaded(**call).images, pipe(**call).images, atol=0, rtol=0)

    transformer = load_pipeline("tiny-random", seed=9).transformer  # other base weights, same LoRA layers
    from diffusers import FluxTransformer2DModel

    plain = FluxTransformer2DModel.from_pretrained(str(saved / "pipeline" / "transformer"))
    ckpt.load_base_transformer_state_dict(transformer, plain.state_dict())
    base = {k: v for k, v in transformer.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in base.items())
    with pytest.raises(CheckpointError, match="no pipeline/"):
        ckpt.load_checkpoint_pipeline(tmp_path / "elsewhere")
