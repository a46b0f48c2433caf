"""The bundled-model recipe's pure parts: pilot time shares, stage reports, the model card, export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from facemogle.data.splits import Split
from facemogle.train.tiny_recipe import (
    PILOT_SHARES,
    STAGE_REPORT,
    RecipeSettings,
    evaluate_command,
    export_dir,
    export_pipeline,
    finish_stage,
    finished_stage,
    follow_up_stage,
    follow_up_stages,
    model_card,
    pilot_budget_s,
    read_overrides,
    stage_report,
    steps_in,
    time_per_step,
)

STAGE = {"steps": 12, "batch_size": 4, "steps_per_s": 0.5, "first_loss": 1.25, "last_loss": 0.75}


def settings(tmp_path, **changes) -> RecipeSettings:
    values = {"config": tmp_path / "tiny.yaml", "work_dir": tmp_path / "work", "release_dir": tmp_path / "release",
              "evaluate_script": tmp_path / "evaluate.py"}
    return RecipeSettings(**{**values, **changes})


def recipe_report(pilot_minutes=None) -> dict:
    return {"pilot_minutes": pilot_minutes, "stages": {"autoencoder": STAGE, "text": STAGE, "diffusion": STAGE},
            "export": {"size_mb": 12.34, "parameters": {"transformer": 2_500_000, "vae": 500_000}}}


def test_pilot_shares_split_the_minutes():
    assert sum(PILOT_SHARES.values()) == pytest.approx(1.0)
    assert pilot_budget_s(10, "text") == pytest.approx(60 * 10 * PILOT_SHARES["text"])
    assert sum(pilot_budget_s(8, stage) for stage in PILOT_SHARES) == pytest.approx(8 * 60)


def test_steps_fit_the_budget_with_a_floor():
    assert steps_in(100, 3.0) == 33
    assert steps_in(1, 10.0) == 2
    assert steps_in(1, 10.0, at_least=5) == 5


def test_time_per_step_leaves_out_the_warm_up_step():
    calls = []

    def run_steps(n):
        calls.append(n)
        return [9.0] + [1.5] * (n - 1)

    assert time_per_step(run_steps) == pytest.approx(1.5)
    assert calls == [3]
    assert time_per_step(lambda n: [4.0]) == pytest.approx(4.0)  # a fitted stage reports one step


def test_stage_report_summarises_throughput_and_loss():
    report = stage_report([5.0, 2.0, 2.0], [4.0, 3.0, 2.0], batch_size=8, wall=12.345, cache={}, faces=7)
    assert report == {"steps": 3, "batch_size": 8, "steps_per_s": 0.5, "images_per_s": 4.0, "first_loss": 4.0,
                      "last_loss": 3.0, "wall_s": 12.3, "faces": 7}


def test_a_finished_stage_is_reused(tmp_path, capsys):
    stage_dir = tmp_path / "autoencoder"
    assert finished_stage(stage_dir) is None
    assert finish_stage(stage_dir, STAGE) == STAGE
    assert sorted(p.name for p in stage_dir.iterdir()) == [STAGE_REPORT]
    assert finished_stage(stage_dir) == STAGE
    assert "reusing" in capsys.readouterr().out


def test_export_dir_and_the_evaluation_command(tmp_path):
    full = settings(tmp_path)
    pilot = settings(tmp_path, pilot_minutes=8)
    assert export_dir(full) == tmp_path / "release"
    assert export_dir(pilot) == tmp_path / "work" / "export"
    assert export_dir(settings(tmp_path, pilot_minutes=8, export=tmp_path / "x")) == tmp_path / "x"
    command = evaluate_command(full, tmp_path / "model", tmp_path / "data", threads=2)
    assert command == [sys.executable, str(tmp_path / "evaluate.py"), "--model", str(tmp_path / "model"),
                       "--work-dir", str(tmp_path / "work"), "--data", str(tmp_path / "data"), "--threads", "2"]
    pilot_command = evaluate_command(pilot, tmp_path / "model", tmp_path / "data", threads=1)
    assert pilot_command[-6:] == ["--limit", "8", "--bench-runs", "1", "--docs", str(tmp_path / "work" / "docs")]


def test_model_card_names_data_recipe_and_stages():
    split = Split(train=("a", "b", "c"), val=("d",))
    card = model_card(recipe_report(), split, config=None)
    assert card.startswith("# facemogle tiny: the bundled CPU model\n")
    assert "(3 train faces; 1 held out" in card and f"`{split.fingerprint}`" in card
    assert "non-commercial research only" in card
    assert "`make tiny-model` (scripts/train_tiny_model.py + configs/tiny.yaml)" in card
    assert "scripts/evaluate_tiny_model.py" in card and "\n## Metrics\n" in card
    for name in ("autoencoder", "text", "diffusion"):
        assert f"| {name} | 12 | 4 | 0.5 | 1.25 | 0.75 |" in card
    assert "Parameters: transformer 2.50 M, vae 0.50 M; 12.3 MB on disk." in card
    assert "PILOT RUN" not in card
    pilot_card = model_card(recipe_report(pilot_minutes=8), split, config=None)
    assert pilot_card.splitlines()[2] == "**PILOT RUN (8 min): not the shipped model.**"


def test_export_writes_float16_weights_score_and_card(tmp_path):
    import torch
    from safetensors.torch import load_file

    from facemogle.specs import SCRATCH_GUIDANCE_SCALE, load_pipeline
    from facemogle.train.text_encoders import SCORE_FILE

    checkpoint, text_dir, export = tmp_path / "checkpoint", tmp_path / "text", tmp_path / "export"
    load_pipeline("tiny-random", seed=0).save_pretrained(str(checkpoint), safe_serialization=True)
    text_dir.mkdir()
    (text_dir / SCORE_FILE).write_bytes(b"score weights")
    export.mkdir()
    (export / "stale.txt").write_text("from an earlier export", encoding="utf-8")
    report, split = recipe_report(), Split(train=("a", "b"), val=("c",))
    del report["export"]

    export_pipeline(checkpoint, export, report, split, None, text_dir=text_dir)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "export", "text"]  # no staging folder left
    assert not (export / "stale.txt").exists()
    assert (export / SCORE_FILE).read_bytes() == b"score weights"
    assert (export / "MODEL_CARD.md").read_text(encoding="utf-8") == model_card(report, split, None)
    assert report["export"]["directory"] == str(export) and report["export"]["size_mb"] > 0
    assert set(report["export"]["parameters"]) == {"transformer", "mogle", "vae", "text_encoder", "text_encoder_2"}
    weights = load_file(export / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}
    for config_file in export.rglob("*.json"):
        assert "_name_or_path" not in json.loads(config_file.read_text(encoding="utf-8"))
    assert json.loads((export / "model_index.json").read_text(encoding="utf-8"))["default_guidance_scale"] == \
        SCRATCH_GUIDANCE_SCALE
    assert not list(Path(export).rglob(".*"))


def test_stage_5b_overrides_are_a_mapping_of_dotted_keys(tmp_path):
    from facemogle.errors import InputError

    good = tmp_path / "good.yaml"
    good.write_text("data.empty_mask_dropout: 0.4\ntrain.max_steps: 10\n", encoding="utf-8")
    assert read_overrides(good) == {"data.empty_mask_dropout": 0.4, "train.max_steps": 10}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- data.empty_mask_dropout\n", encoding="utf-8")
    with pytest.raises(InputError, match="mapping of dotted config keys"):
        read_overrides(bad)


def test_model_card_has_a_row_for_the_emphasis_stage_when_it_ran():
    split = Split(train=("a",), val=("b",))
    report = recipe_report()
    assert "| emphasis |" not in model_card(report, split, config=None)
    report["stages"]["emphasis"] = {**STAGE, "steps": 7, "settings": {"data.empty_mask_dropout": 0.4}}
    card = model_card(report, split, config=None)
    assert "| emphasis | 7 | 4 | 0.5 | 1.25 | 0.75 |" in card
    assert "`data.empty_mask_dropout: 0.4`" in card
    assert "data.balance_hair_colour" not in card and "data.complete_faces_only" not in card
    report["stages"]["emphasis"]["settings"].update({"data.balance_hair_colour": True, "data.complete_faces_only": True})
    card = model_card(report, split, config=None)
    assert "With `data.balance_hair_colour` every hair colour" in card
    assert "With `data.complete_faces_only` the faces whose mask lacks" in card
    assert "`data.balance_hair_colour: true`" in card  # YAML's spelling, as in the config file
    assert "data.covered_parts_count" not in card
    report["stages"]["emphasis"]["settings"]["data.covered_parts_count"] = True
    assert "With `data.covered_parts_count` eyeglasses count as the eyes" in model_card(report, split, config=None)


def test_model_card_describes_the_high_noise_stage_when_it_ran():
    split = Split(train=("a",), val=("b",))
    report = recipe_report()
    assert "| high_noise |" not in model_card(report, split, config=None)
    report["stages"]["emphasis"] = {**STAGE, "settings": {}}
    report["stages"]["high_noise"] = {**STAGE, "steps": 9, "settings": {"train.timestep_shift": 3.0},
                                      "config": "runs/my_high_noise.yaml"}
    card = model_card(report, split, config=None)
    assert "| high_noise | 9 | 4 | 0.5 | 1.25 | 0.75 |" in card
    assert "A high-noise run (`high_noise` row; runs/my_high_noise.yaml's changes on top" in card
    assert card.index("| emphasis |") < card.index("| high_noise |")  # in the order they ran
    assert "`train.timestep_shift: 3.0`" in card and "t' = s t / (1 + (s - 1) t)" in card


def test_model_card_describes_the_small_parts_stage_after_the_high_noise_one():
    split = Split(train=("a",), val=("b",))
    report = recipe_report()
    report["stages"]["emphasis"] = {**STAGE, "settings": {}}
    report["stages"]["high_noise"] = {**STAGE, "steps": 9, "settings": {"train.timestep_shift": 3.0}}
    alone = model_card(report, split, config=None)
    assert "| small_parts |" not in alone and "train.part_loss_weight" not in alone
    report["stages"]["small_parts"] = {**STAGE, "steps": 5, "settings": {"train.part_loss_weight": 4.0}}
    card = model_card(report, split, config=None)
    assert "| small_parts | 5 | 4 | 0.5 | 1.25 | 0.75 |" in card
    assert card.index("| high_noise |") < card.index("| small_parts |")
    assert "`train.part_loss_weight: 4.0`" in card and "facemogle.flow.part_token_weights" in card
    assert card.count("Its moving average is what is exported.") == 1  # said of the last run only


def test_follow_up_stages_run_in_order_and_only_when_asked(tmp_path):
    every = settings(tmp_path, emphasis_config=tmp_path / "b.yaml", high_noise_config=tmp_path / "c.yaml",
                     small_parts_config=tmp_path / "d.yaml")
    assert [name for name, _ in follow_up_stages(every)] == ["emphasis", "high_noise", "small_parts"]
    assert follow_up_stages(every)[2][1] == tmp_path / "d.yaml"
    assert [name for name, _ in follow_up_stages(settings(tmp_path, small_parts_config=tmp_path / "d.yaml"))] == [
        "small_parts"]
    assert follow_up_stages(settings(tmp_path)) == []


def test_a_follow_up_stage_starts_from_the_given_checkpoint_with_the_given_settings(tmp_path, monkeypatch):
    """Stage 5c trains with the overrides it is given (the diffusion stage's + 5b's + 5c's changes)
    from 5b's result into <work>/high_noise and reports its YAML's changes; a pilot cuts its steps."""
    import facemogle.train.tiny_recipe as recipe

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    seen = {}

    def fake_trained_stage(config, settings, name, threads, started, extra=None):
        seen[name] = config
        return {"final_checkpoint": str(settings.work_dir / name / "final"), **(extra or {})}

    monkeypatch.setattr(recipe, "trained_stage", fake_trained_stage)
    base = {"data.root": str(tmp_path), "train.cpu_threads": 1}
    stacked = {**base, "data.empty_mask_dropout": 0.4, "seed": 1}  # the diffusion stage's + 5b's changes
    stacked.update({"seed": 3, "train.timestep_shift": 3.0})  # + 5c's, as run_recipe stacks them
    yaml_path = tmp_path / "high.yaml"
    yaml_path.write_text("seed: 3\ntrain.timestep_shift: 3.0\n", encoding="utf-8")
    (tmp_path / "emphasis" / "final").mkdir(parents=True)
    full = settings(tmp_path, config=config)
    report, stage_config = follow_up_stage(full, "high_noise", yaml_path, stacked, tmp_path / "emphasis" / "final", 1)
    assert stage_config is seen["high_noise"]
    assert stage_config.train.timestep_shift == 3.0 and stage_config.data.empty_mask_dropout == 0.4
    assert stage_config.seed == 3 and stage_config.train.max_steps == 4200  # tiny.yaml's: the YAML sets none
    assert stage_config.model.init_checkpoint == str(tmp_path / "emphasis" / "final")
    assert stage_config.output_dir == str(tmp_path / "work" / "high_noise")
    assert report["settings"] == {"seed": 3, "train.timestep_shift": 3.0}
    assert report["config"] == str(yaml_path)  # the card names the YAML the run used
    assert "high_noise" in PILOT_SHARES

    monkeypatch.setattr(recipe, "pilot_steps", lambda settings, overrides, stage, key, probe, threads: 5)
    _, pilot_config = follow_up_stage(settings(tmp_path, config=config, pilot_minutes=4), "high_noise", yaml_path,
                                      stacked, tmp_path / "emphasis" / "final", 1)
    assert pilot_config.train.max_steps == 5 and pilot_config.sample.every == 0


def test_the_low_res_changes_are_the_diffusion_stage_s_own(tmp_path, synthetic_data, monkeypatch):
    """run_recipe trains stage 5 with configs/tiny.yaml + the low-resolution YAML's changes, and the
    follow-up run with tiny.yaml + its own YAML's changes only: it does not inherit 64 px or the step
    count; the report keeps each stage's changes for the card."""
    import facemogle.train.tiny_recipe as recipe

    configs = Path(__file__).resolve().parents[2] / "configs"
    work = tmp_path / "work"
    (work / "captions").mkdir(parents=True)
    (work / "captions" / "text.json").write_text("{}", encoding="utf-8")  # captions stage: reused
    for stage in ("autoencoder", "text"):  # finished earlier: reused
        finish_stage(work / stage, {**STAGE, "wall_s": 60.0})
    (work / "autoencoder" / "vae").mkdir()
    seen = {}

    def fake_trained_stage(config, settings, name, threads, started, with_cache_stats=False, extra=None):
        seen[name] = config
        (work / name / "final").mkdir(parents=True, exist_ok=True)
        return {**STAGE, "wall_s": 1.0, "final_checkpoint": str(work / name / "final"), **(extra or {})}

    monkeypatch.setattr(recipe, "trained_stage", fake_trained_stage)
    monkeypatch.setattr(recipe, "export_pipeline", lambda *args, **kwargs: None)
    monkeypatch.setattr(recipe.subprocess, "run", lambda *args, **kwargs: type("Done", (), {"returncode": 0})())
    import yaml

    values = yaml.safe_load((configs / "tiny.yaml").read_text(encoding="utf-8"))
    values["data"]["root"] = str(synthetic_data)  # the recipe's config, without ../shared
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    low_res, emphasis = tmp_path / "low.yaml", tmp_path / "emphasis.yaml"
    low_res.write_text("data.resolution: 64\ntrain.max_steps: 45\n", encoding="utf-8")
    emphasis.write_text("seed: 1\ntrain.max_steps: 18\ndata.empty_mask_dropout: 0.4\n", encoding="utf-8")
    assert recipe.run_recipe(settings(tmp_path, config=config, data=synthetic_data, num_val=2,
                                      low_res_config=low_res, emphasis_config=emphasis)) == 0

    first, second = seen["diffusion"], seen["emphasis"]
    assert (first.data.resolution, first.train.max_steps, first.seed) == (64, 45, 0)
    assert (second.data.resolution, second.train.max_steps, second.seed) == (128, 18, 1)  # tiny.yaml's size
    assert second.data.empty_mask_dropout == 0.4 and first.data.empty_mask_dropout == 0.15
    assert second.model.init_checkpoint == str(work / "diffusion" / "final")
    report = json.loads((work / "recipe_report.json").read_text(encoding="utf-8"))
    assert report["stages"]["diffusion"]["settings"] == {"data.resolution": 64, "train.max_steps": 45}
    assert report["stages"]["diffusion"]["config"] == str(low_res)  # outside the working directory: as given

    seen.clear()  # without a low-resolution YAML stage 5 trains at tiny.yaml's size and steps
    assert recipe.run_recipe(settings(tmp_path, config=config, data=synthetic_data, num_val=2)) == 0
    assert (seen["diffusion"].data.resolution, seen["diffusion"].train.max_steps) == (128, 4200)
    assert "emphasis" not in seen


def test_model_card_describes_the_low_resolution_run_and_the_emphasis_run_s_loss_settings():
    split = Split(train=("a",), val=("b",))
    report = recipe_report()
    report["stages"]["emphasis"] = {**STAGE, "settings": {"data.empty_mask_dropout": 0.4}}
    plain = model_card(report, split, config=None)
    assert "configs/tiny_low_res.yaml" not in plain and "train.timestep_shift" not in plain
    assert "train.part_loss_weight" not in plain
    assert plain.count("Its moving average is what is exported.") == 1

    report["stages"]["diffusion"] = {**STAGE, "settings": {"data.resolution": 64, "train.max_steps": 4500},
                                     "config": "configs/tiny_low_res.yaml"}
    report["stages"]["emphasis"]["settings"].update({"train.timestep_shift": 2.0, "train.part_loss_weight": 2.0})
    card = model_card(report, split, config=None)
    assert "The diffusion run trains at 64 x 64 px (configs/tiny_low_res.yaml" in card
    assert "`data.resolution: 64`, `train.max_steps: 4500`): 8 x 8 image tokens" in card
    del report["stages"]["diffusion"]["config"]  # a report from before the config was recorded
    assert "The diffusion run trains at 64 x 64 px (its YAML's changes" in model_card(report, split, config=None)
    assert "With `train.timestep_shift` s the model trains at" in card
    assert "With `train.part_loss_weight` w the tokens" in card
    assert card.index("The diffusion run trains at 64") < card.index("A text-emphasis run")


def test_training_hours_add_up_every_stage_s_wall_time():
    from facemogle.train.tiny_recipe import training_hours

    stages = {"captions": {"seconds": 360.0}, "text": {"wall_s": 1800.0}, "diffusion": {"wall_s": 5040.0},
              "autoencoder": None}
    assert training_hours(stages) == pytest.approx(2.0)


def test_shown_path_is_relative_to_the_working_directory_when_under_it(tmp_path, monkeypatch):
    from facemogle.train.tiny_recipe import shown_path

    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "configs" / "tiny_low_res.yaml") == "configs/tiny_low_res.yaml"
    assert shown_path(Path("configs/tiny_low_res.yaml")) == "configs/tiny_low_res.yaml"
    assert shown_path(Path("/elsewhere/x.yaml")) == "/elsewhere/x.yaml"
    assert shown_path(None) is None
