"""Checkpoints: atomic writes, completeness, verification, RNG state, scratch pipelines, adapter checkpoints end to end."""

from __future__ import annotations

import json
import random
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tolerances import ROUNDOFF

from facemogle.condition import LORA_WEIGHT_NAME
from facemogle.errors import CheckpointError
from facemogle.files import MOGLE_WEIGHT_NAME
from facemogle.specs import load_pipeline
from facemogle.train import checkpoint as ckpt

from .conftest import RESOLUTION, tiny_config


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
    expected = pipe(**call).images
    torch.testing.assert_close(loaded(**call).images, expected, **ROUNDOFF)  # separate instances
    untrained = load_pipeline("tiny-random", seed=0)  # the same base weights, LoRA B still zero
    assert (untrained(**call).images - expected).abs().max() > 1e-3  # so the comparison can tell (observed 7e-3)

    transformer = load_pipeline("tiny-random", seed=9).transformer  # other base weights, same LoRA layers
    from diffusers import FluxTransformer2DModel

    plain = FluxTransformer2DModel.from_pretrained(str(saved / "pipeline" / "transformer"))
    ckpt.load_base_transformer_state_dict(transformer, plain.state_dict())
    base = {k: v for k, v in transformer.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in base.items())
    with pytest.raises(CheckpointError, match="no pipeline/"):
        ckpt.load_checkpoint_pipeline(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------------- adapter mode end to end


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    """A FLUX.1-dev-layout base directory (``FluxPipeline.save_pretrained``, no LoRA) of the
    tiny-random model: what ``--base`` names, and what adapter training starts from."""
    from diffusers import FluxPipeline

    source = load_pipeline("tiny-random", seed=0)
    source.transformer.unload_lora()
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    directory = tmp_path_factory.mktemp("flux-base")
    FluxPipeline(**{name: source.components[name] for name in names}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapter_run(flux_base, synthetic_data, tmp_path_factory):
    """Two adapter-mode AdamW steps on the flux-dev spec over ``flux_base``: (trainer, final checkpoint)."""
    from facemogle.train.config import config_from_dict
    from facemogle.train.trainer import Trainer

    output = tmp_path_factory.mktemp("adapter") / "run"
    config = tiny_config(synthetic_data, output, model={"spec": "flux-dev", "options": {"base": str(flux_base)}},
                         train={"batch_size": 2, "max_steps": 2, "mixed_precision": "no",
                                "optimizer": {"name": "adamw", "lr": 1e-2}}, checkpoint={"every": 2})
    trainer = Trainer(config_from_dict(config), progress=False)
    result = trainer.run()
    return trainer, result.final_checkpoint


def _generate_command(flux_base, checkpoint, output) -> list[str]:
    from facemogle.masks import EXAMPLE_MASK

    return ["generate", "--model", "flux-dev", "--base", str(flux_base), "--checkpoint", str(checkpoint),
            "--mask", str(EXAMPLE_MASK), "--prompt", "a face", "--size", str(RESOLUTION), "--steps", "2",
            "--seed", "0", "--device", "cpu", "--no-watermark", "-o", str(output)]


def test_adapter_checkpoint_generates_what_training_had_in_memory(flux_base, adapter_run, tmp_path, capsys):
    """``facemogle generate --model flux-dev --base B --checkpoint DIR`` after adapter training: the
    base stayed frozen, the two official files hold the trained LoRA and MoGLE, and the loaded
    pipeline generates what the trainer's in-memory pipeline generates."""
    from diffusers import FluxTransformer2DModel
    from PIL import Image

    from facemogle.cli import main
    from facemogle.condition import condition_lora_state_dict
    from facemogle.masks import EXAMPLE_MASK

    trainer, saved = adapter_run
    assert {LORA_WEIGHT_NAME, MOGLE_WEIGHT_NAME} <= {p.name for p in saved.iterdir()}
    assert not (saved / ckpt.PIPELINE_DIR).exists()  # adapter checkpoints hold no base weights

    # the base transformer is untouched: every non-LoRA weight is the --base file's, bit for bit
    base = FluxTransformer2DModel.from_pretrained(str(flux_base / "transformer")).state_dict()
    live = {k.replace(".base_layer.", "."): v for k, v in trainer.pipe.transformer.state_dict().items()
            if ".lora_" not in k}
    assert live.keys() == base.keys()
    assert all(torch.equal(live[k], base[k]) for k in base)

    # the checkpoint holds the trained weights, and training moved them (lora_B starts at zero)
    lora = load_file(str(saved / LORA_WEIGHT_NAME))
    trained = condition_lora_state_dict(trainer.pipe.transformer)
    assert lora.keys() == trained.keys() and all(torch.equal(lora[k], trained[k]) for k in lora)
    assert max(v.abs().max().item() for k, v in lora.items() if ".lora_B." in k) > 1e-3

    loaded = load_pipeline("flux-dev", base=flux_base, checkpoint=saved, device="cpu")
    assert all(torch.equal(loaded.mogle.state_dict()[k], v) for k, v in trainer.pipe.mogle.state_dict().items())
    call = dict(mask=EXAMPLE_MASK, prompt="a face", height=RESOLUTION, width=RESOLUTION, num_inference_steps=2,
                seed=0)
    expected = trainer.pipe(**call, output_type="latent").images
    torch.testing.assert_close(loaded(**call, output_type="latent").images, expected, **ROUNDOFF)  # separate instances
    untrained = load_pipeline("flux-dev", base=flux_base, device="cpu")  # the base alone: LoRA and MoGLE untrained
    assert (untrained(**call, output_type="latent").images - expected).abs().max() > 1e-2

    out = tmp_path / "face.png"
    assert main(_generate_command(flux_base, saved, out)) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    written = np.asarray(Image.open(out).convert("RGB"), dtype=int)
    in_memory = np.asarray(trainer.pipe(**call, watermark=False).images[0], dtype=int)
    assert written.shape == (RESOLUTION, RESOLUTION, 3)
    assert np.abs(written - in_memory).max() <= 1  # round-off may cross one 8-bit rounding boundary


def _data_start(path) -> tuple[int, dict]:
    """(offset of the tensor data, the header) of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return 8 + length, json.loads(raw[8:8 + length])


def _edit_lora_value(directory):
    """One lora_B float of the LoRA file rewritten in place: same size, a valid file, other weights."""
    path = directory / LORA_WEIGHT_NAME
    start, header = _data_start(path)
    key = sorted(k for k in header if ".lora_B." in k)[0]
    offset = start + header[key]["data_offsets"][0]
    raw = bytearray(path.read_bytes())
    (value,) = struct.unpack("<f", raw[offset:offset + 4])
    raw[offset:offset + 4] = struct.pack("<f", value + 1.0)
    path.write_bytes(bytes(raw))


def _edit_mogle_value(directory):
    """One float of a MoGLE tensor rewritten inside the torch.save zip (stored uncompressed)."""
    path = directory / MOGLE_WEIGHT_NAME
    with zipfile.ZipFile(path) as archive:
        entry = sorted((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.filename)[0]
        assert entry.compress_type == zipfile.ZIP_STORED
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    offset = entry.header_offset + 30 + name_length + extra_length
    (value,) = struct.unpack("<f", raw[offset:offset + 4])
    raw[offset:offset + 4] = struct.pack("<f", value + 1.0)
    path.write_bytes(bytes(raw))


def _truncate(name):
    def damage(directory):
        path = directory / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def _remove(name):
    return lambda directory: (directory / name).unlink()


@pytest.mark.parametrize(("damage", "message"), [
    (_truncate(LORA_WEIGHT_NAME), LORA_WEIGHT_NAME),
    (_truncate(MOGLE_WEIGHT_NAME), MOGLE_WEIGHT_NAME),
    (_remove(MOGLE_WEIGHT_NAME), MOGLE_WEIGHT_NAME),
    (_edit_lora_value, LORA_WEIGHT_NAME),  # same size, one value changed: the checkpoint's sha256 says so
    (_edit_mogle_value, MOGLE_WEIGHT_NAME),
], ids=["truncated-lora", "truncated-mogle", "missing-mogle", "edited-lora", "edited-mogle"])
def test_a_damaged_adapter_checkpoint_is_refused_in_one_line(flux_base, adapter_run, tmp_path, capsys, damage,
                                                             message):
    from facemogle.cli import EXIT_USER_ERROR, main

    _, saved = adapter_run
    damaged = tmp_path / saved.name
    shutil.copytree(saved, damaged)
    damage(damaged)
    with pytest.raises(CheckpointError, match=message):
        load_pipeline("flux-dev", base=flux_base, checkpoint=damaged, device="cpu")
    out = tmp_path / "face.png"
    assert main(_generate_command(flux_base, damaged, out)) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("facemogle generate: error: "), captured.err  # no traceback
    assert message in errors[0] and not out.exists() and captured.out == ""
