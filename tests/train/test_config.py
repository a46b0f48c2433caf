"""Training configs: the shipped examples validate; bad configs are refused before any work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from facemogle.cli import main
from facemogle.train.config import ConfigError, config_from_dict, load_config

from .conftest import tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_validate(tmp_path, monkeypatch, mini_dataset_dir):
    monkeypatch.chdir(CONFIGS.parent)  # configs use paths relative to the repository root
    smoke = load_config(CONFIGS / "tiny-smoke.yaml")
    assert smoke.data.resolution == 64 and smoke.train.optimizer.name == "adamw"
    pytest.importorskip("prodigyopt")
    paper = load_config(CONFIGS / "paper.yaml", overrides={"data.root": str(tmp_path)})
    assert (paper.data.resolution, paper.train.max_grad_norm, paper.train.mixed_precision) == (512, 0.5, "bf16")
    assert (paper.train.optimizer.name, paper.train.optimizer.lr, paper.train.optimizer.weight_decay) == ("prodigy", 1.0, 0.01)
    assert paper.train.optimizer.use_bias_correction and paper.train.optimizer.safeguard_warmup
    assert (paper.data.text_dropout, paper.data.mask_dropout, paper.model.lora_rank) == (0.1, 0.1, 4)
    assert paper.train.max_steps == 4000 and paper.data.layout == "mm-celeba-hq"


def test_the_tiny_recipe_configs_validate_together(tmp_path, monkeypatch):
    """configs/tiny.yaml + stage 5b's changes (configs/tiny_text_emphasis.yaml), then 5c's and 5d's on
    top, make valid configs."""
    from facemogle.train.tiny_recipe import read_overrides

    monkeypatch.chdir(CONFIGS.parent)
    (tmp_path / "start").mkdir()
    overrides = {**read_overrides(CONFIGS / "tiny_text_emphasis.yaml"), "data.root": str(tmp_path),
                 "model.init_checkpoint": str(tmp_path / "start")}
    emphasis = load_config(CONFIGS / "tiny.yaml", overrides)
    first = load_config(CONFIGS / "tiny.yaml", {"data.root": str(tmp_path)})
    assert emphasis.data.empty_mask_dropout > first.data.empty_mask_dropout
    assert first.data.balance_attributes is None and emphasis.data.balance_attributes == 0.25
    assert emphasis.data.balance_hair_colour and emphasis.data.complete_faces_only and emphasis.data.covered_parts_count
    assert not (first.data.balance_hair_colour or first.data.complete_faces_only or first.data.covered_parts_count)
    assert emphasis.train.optimizer.lr < first.train.optimizer.lr
    assert emphasis.model.init_checkpoint == str(tmp_path / "start") and first.model.init_checkpoint is None
    for later in ("tiny_high_noise.yaml", "tiny_small_parts.yaml"):  # 5c's and 5d's changes stack on top
        overrides.update(read_overrides(CONFIGS / later))
    last = load_config(CONFIGS / "tiny.yaml", overrides)
    assert last.train.timestep_shift == 3.0 and last.data.empty_mask_dropout == emphasis.data.empty_mask_dropout
    assert last.train.part_loss_weight > 0 and first.train.part_loss_weight == 0 and last.cache.enabled
    assert "left eye" in last.train.part_loss_classes and "right eye" in last.train.part_loss_classes


def test_the_fast_tiny_recipe_configs_validate(tmp_path, monkeypatch):
    """make tiny-model-fast: tiny.yaml + configs/tiny_low_res.yaml (stage 5, 64 px) and tiny.yaml +
    configs/tiny_fast_text_emphasis.yaml (stage 5b, 128 px: text emphasis, shift, small parts' weight)."""
    from facemogle.train.tiny_recipe import read_overrides

    monkeypatch.chdir(CONFIGS.parent)
    (tmp_path / "start").mkdir()
    first = load_config(CONFIGS / "tiny.yaml", {**read_overrides(CONFIGS / "tiny_low_res.yaml"),
                                                 "data.root": str(tmp_path)})
    second = load_config(CONFIGS / "tiny.yaml", {**read_overrides(CONFIGS / "tiny_fast_text_emphasis.yaml"),
                                                  "data.root": str(tmp_path), "model.init_checkpoint": str(tmp_path / "start")})
    assert (first.data.resolution, second.data.resolution) == (64, 128)
    assert (first.train.max_steps, second.train.max_steps) == (4500, 1800)
    assert first.train.timestep_shift == 1.0 and second.train.timestep_shift == 2.0
    assert first.train.part_loss_weight == 0 and second.train.part_loss_weight == 2.0
    assert second.data.empty_mask_dropout == 0.4 and second.data.balance_hair_colour


def refused(tmp_path, **sections) -> str:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    with pytest.raises(ConfigError) as error:
        config_from_dict(tiny_config(data, tmp_path / "out", **sections))
    return str(error.value)


def test_unknown_keys_wrong_types_and_ranges_are_all_listed(tmp_path):
    message = refused(tmp_path, train={"batch_szie": 2, "max_steps": "10", "mixed_precision": "bf17",
                                       "gradient_checkpointing": "yes", "max_grad_norm": -1})
    assert "train.batch_szie: unknown option (did you mean 'batch_size'?)" in message
    assert "train.max_steps: expected an integer, got str '10'" in message
    assert "train.mixed_precision: 'bf17' is not one of no, bf16, fp16 (did you mean 'bf16'?)" in message
    assert "train.gradient_checkpointing: expected true or false" in message
    assert "train.max_grad_norm: must be > 0.0, got -1.0" in message

    message = refused(tmp_path, data={"root": str(tmp_path / "data"), "resolution": 100, "mask_dropout": 1.5,
                                      "text_dropout": True})
    assert "data.mask_dropout: must be <= 1.0, got 1.5" in message
    assert "data.text_dropout: expected a number, got bool True" in message
    message = refused(tmp_path, data={"root": str(tmp_path / "data"), "balance_attributes": 0.0,
                                      "first_caption_share": 2})
    assert "data.balance_attributes: must be > 0.0, got 0.0" in message
    assert "data.first_caption_share: must be <= 1.0, got 2.0" in message
    message = refused(tmp_path, data={"root": str(tmp_path / "data"), "resolution": 100})
    assert "data.resolution: 100 is not a multiple of 16 (try 96)" in message


def test_missing_things_are_refused(tmp_path):
    assert "data.root: directory" in refused(tmp_path, data={"root": str(tmp_path / "nowhere")})
    assert "model.init_lora: file" in refused(tmp_path, model={"spec": "tiny-random", "init_lora": "no.safetensors"})
    with pytest.raises(ConfigError, match="output_dir: missing required option"):
        config_from_dict({"data": {"root": str(tmp_path)}})
    with pytest.raises(ConfigError, match="data: missing required section"):
        config_from_dict({"output_dir": "x"})


def test_impossible_combinations_are_refused(tmp_path):
    assert "active_experts='global'" in refused(tmp_path, model={"mogle": {"active_experts": "global"}})
    assert "mode: 'scratch' trains a small preset" in refused(tmp_path, mode="scratch", model={"spec": "flux-dev"})
    assert "unknown model 'tiny-randon' (did you mean 'tiny-random'?)" in refused(tmp_path, model={"spec": "tiny-randon"})
    assert "model.options.base: not an option" in refused(tmp_path, model={"options": {"base": "x"}})
    assert "model.options.device: set by the trainer" in refused(tmp_path, model={"options": {"device": "cpu"}})
    assert "train.optimizer.betas" in refused(tmp_path, train={"optimizer": {"name": "adamw", "betas": [0.9]}})
    assert "constant_with_warmup" in refused(tmp_path, train={"lr_warmup_steps": 10})
    assert "train.part_loss_classes: unknown class 'left ey'" in refused(
        tmp_path, train={"part_loss_weight": 2.0, "part_loss_classes": ["left ey"]})
    assert "train.part_loss_classes: empty" in refused(tmp_path, train={"part_loss_weight": 2.0, "part_loss_classes": []})
    assert "train.part_loss_weight: reads the parts off the cached mask latents" in refused(
        tmp_path, train={"part_loss_weight": 2.0}, cache={"enabled": False})
    assert "train.part_loss_weight: must be >= 0.0" in refused(tmp_path, train={"part_loss_weight": -1.0})


def test_missing_prodigy_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt -> ImportError
    assert "needs the prodigyopt package" in refused(tmp_path, train={"optimizer": {"name": "prodigy"}})


def test_corrupt_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("output_dir: a\noutput_dir: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'output_dir'"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_refuses_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    config = tiny_config(tmp_path / "no-data", out, train={"batch_size": 0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("facemogle train: error:") and len(err.splitlines()) == 1
    assert "data.root" in err and "train.batch_size: must be >= 1, got 0" in err
    assert not out.exists()  # nothing was created
    assert main(["train", str(path), "--max-steps", "0"]) == 2
    assert "--max-steps must be in 1..1000000000, got 0" in capsys.readouterr().err
    # --result-json is checked before training, not after it
    assert main(["train", str(path), "--result-json", str(tmp_path / "missing" / "run.json")]) == 2
    assert "--result-json" in capsys.readouterr().err and not out.exists()
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config " in capsys.readouterr().err


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    config = config_from_dict(tiny_config(data, tmp_path / "out", train={"optimizer": {"name": "adamw", "lr": "1e-4"}}))
    assert config.train.optimizer.lr == 1e-4


def test_initial_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    from facemogle.condition import save_condition_lora
    from facemogle.mogle import MoGLE
    from facemogle.specs import load_pipeline

    save_condition_lora(load_pipeline("tiny-random", lora_rank=8).transformer, tmp_path)
    lora = str(tmp_path / "pytorch_lora_weights.safetensors")
    assert "the file's LoRA rank is 8, model.lora_rank is 4" in refused(tmp_path, model={"init_lora": lora})
    MoGLE().save_official_checkpoint(tmp_path / "mogle.pt")
    message = refused(tmp_path, model={"init_mogle": str(tmp_path / "mogle.pt"), "mogle": {"gating_mode": "none"}})
    assert "model.init_mogle:" in message and "unexpected keys: gating." in message
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "not a readable safetensors file" in refused(tmp_path, model={"init_lora": str(tmp_path / "junk.safetensors")})
    data = tmp_path / "data"
    config = config_from_dict(tiny_config(data, tmp_path / "out", model={"init_lora": lora, "lora_rank": 8,
                                                                         "init_mogle": str(tmp_path / "mogle.pt")}))
    assert config.model.lora_rank == 8


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    """10 levels of 10 aliases: 10**10 values once expanded (validating them would never end)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    lines.append("output_dir: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expands to more than 100000 values through aliases"):
        load_config(path)
    small = tmp_path / "anchors.yaml"  # ordinary anchors stay allowed
    small.write_text("opt: &o {name: adamw, lr: 0.001}\noutput_dir: out\nmode: scratch\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(small)
    assert "expands to more than" not in str(info.value) and "opt: unknown option" in str(info.value)
