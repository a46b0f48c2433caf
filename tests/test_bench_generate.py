"""``facemogle bench generate``: seconds per image, mask + text vs text-only (tiny-random, tiny sizes)."""

from __future__ import annotations

import json

import pytest
import torch

from facemogle.bench_generate import EXAMPLE_MASK, VARIANTS, bench_generate, bench_pipeline
from facemogle.cli import main
from facemogle.errors import InputError


class RecordingPipeline:
    """Stands in for a pipeline: records each call's mask / prompt / size / steps."""

    size_multiple = 16

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)


def test_one_warm_up_then_runs_alternating_variants():
    pipe = RecordingPipeline()
    seconds = bench_pipeline(pipe, size=32, steps=3, runs=2, prompt="hello")
    assert list(seconds) == list(VARIANTS)
    assert all(len(v) == 2 and all(s >= 0 for s in v) for v in seconds.values())
    masks = [call["mask"] for call in pipe.calls]
    assert masks == [EXAMPLE_MASK, None] * 3  # warm-up of each variant, then 2 alternating rounds
    assert {(c["height"], c["width"], c["num_inference_steps"], c["prompt"]) for c in pipe.calls} == {(32, 32, 3, "hello")}


@pytest.mark.parametrize("kwargs", [dict(runs=0), dict(steps=0)])
def test_bad_counts_are_refused(kwargs):
    arguments = dict(size=32, steps=2, runs=1) | kwargs
    with pytest.raises(InputError, match="must be >= 1"):
        bench_pipeline(RecordingPipeline(), **arguments)


def test_report_of_tiny_random():
    threads = torch.get_num_threads()
    try:
        report = bench_generate("tiny-random", size=32, steps=2, runs=3, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert (report["model"], report["size"], report["steps"], report["runs"], report["threads"]) == ("tiny-random", 32, 2, 3, 1)
    assert report["torch"] == torch.__version__
    for key in ("mask_text", "text_only"):
        runs = report[f"{key}_runs_s"]
        assert len(runs) == 3 and all(s > 0 for s in runs)
        assert report[f"{key}_median_s"] == pytest.approx(sorted(runs)[1], abs=1e-4)
        assert report[f"{key}_min_s"] == min(runs)
    assert report["parameters"]["mogle"] > 0 and report["parameters"]["transformer"] > 0


def test_size_must_fit_the_model():
    with pytest.raises(InputError, match="multiple of 16"):
        bench_generate("tiny-random", size=40, steps=1, runs=1)


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench" / "generate.json"
    threads = torch.get_num_threads()
    try:
        code = main(["bench", "generate", "--model", "tiny-random", "--size", "32", "--steps", "1", "--runs", "2",
                     "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert (printed["size"], printed["steps"], printed["runs"], printed["threads"]) == (32, 1, 2, 1)
    assert printed["mask_text_median_s"] > 0 and printed["text_only_median_s"] > 0


@pytest.mark.parametrize("argv, words", [
    (["--model", "no-such-model"], "unknown model"),
    (["--threads", "0"], "--threads must be in 1..256"),
    (["--runs", "0"], "--runs must be in 1..100"),
])
def test_cli_bad_input_gives_one_line_error(argv, words, capsys):
    threads = torch.get_num_threads()
    try:
        code = main(["bench", "generate", "--size", "32", "--steps", "1", *argv])
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_thread_policy_bench_runs_fresh_processes_quiet_and_beside_a_busy_core(monkeypatch):
    """Each measurement is a fresh `facemogle bench generate` process: with the policy it takes the
    idle cores (one fewer beside the busy process), with torch's defaults a thread per core."""
    from facemogle import bench_generate as module
    from facemogle.cpu_threads import available_cores

    report = module.bench_thread_policy(["--model", "tiny-random", "--size", "32", "--steps", "1"], runs=1, rounds=1)
    cores = len(available_cores())
    assert set(report) == {"quiet", "busy_core"}
    for where in report.values():
        assert set(where) == {"thread_policy", "torch_default"}
        assert all(v["mask_text_median_s"] > 0 and v["text_only_median_s"] > 0 for v in where.values())
    if cores > 1:  # the busy process holds a core while the policy samples the load: it is left out
        assert report["busy_core"]["thread_policy"]["threads"] < cores
        assert report["busy_core"]["thread_policy"]["threads"] <= report["quiet"]["thread_policy"]["threads"]


class SavingsPipeline(RecordingPipeline):
    """Also records the exact savings in force at each call."""

    exact_savings = frozenset({"a", "b"})

    def __call__(self, **kwargs):
        self.calls.append({**kwargs, "savings": self.exact_savings})


def test_cache_variants_and_exact_savings_one_by_one():
    from facemogle.bench_generate import cache_report

    pipe = SavingsPipeline()
    settings = {"every 4": {"condition_cache": "every:4"}, "first block": {"step_cache": "first-block:0.1"}}
    seconds = bench_pipeline(pipe, size=32, steps=2, runs=1, cache_settings=settings, exact_savings=True)
    assert list(seconds) == ["mask+text", "text-only", "base text-only", "every 4", "first block",
                             "no exact savings", "without a", "without b"]
    calls = pipe.calls[len(seconds):]  # the timed round (after one warm-up of each)
    assert calls[2]["mask"] is None and calls[2]["condition_cache"] == "none"
    assert calls[3]["condition_cache"] == "every:4" and calls[4]["step_cache"] == "first-block:0.1"
    assert [c["savings"] for c in calls[5:]] == [frozenset(), frozenset({"b"}), frozenset({"a"})]
    assert "exact_savings" not in vars(pipe)  # the class default is back after each call
    seconds = {name: [value] for name, value in zip(seconds, (4.0, 3.0, 2.0, 3.0, 2.5, 5.0, 4.5, 4.0))}
    report = cache_report(seconds, settings)
    assert report["mask_overhead"] == {"mask_text_vs_base": 2.0, "text_only_vs_base": 1.5, "mask_text_vs_text_only": 1.333}
    assert report["exact_savings"]["saved_s"] == {"a": 0.5, "b": 0.0} and report["exact_savings"]["speedup_all"] == 1.25
    assert report["cache_settings"]["every 4"] == {"arguments": settings["every 4"], "mask_text_median_s": 3.0,
                                                    "speedup_vs_exact": 1.333, "overhead_vs_text_only": 1.0,
                                                    "overhead_vs_base": 1.5}


def test_cache_quality_compares_each_setting_with_exact(mini_dataset_dir):
    """Two validation faces on tiny-random: exact vs itself-as-a-setting is no change; a cache is some."""
    from facemogle.bench_generate import cache_quality, quality_records
    from facemogle.specs import load_pipeline

    records = quality_records(mini_dataset_dir, 2)
    pipe = load_pipeline("tiny-random", seed=0)
    pipe.set_progress_bar_config(disable=True)
    quality = cache_quality(pipe, records, {"same": {"condition_cache": "off"}, "every 2": {"condition_cache": "every:2"}},
                            size=64, steps=4, progress=False)
    assert quality["faces"] == 2 and 0 < quality["real_full_size_miou"] <= 1
    same = quality["settings"]["same"]
    assert same["max_pixel_difference"] == 0 and same["miou_ratio_change"] == 0 and same["fid_style_change"] == 0
    assert quality["settings"]["every 2"]["max_pixel_difference"] > 0
    with pytest.raises(InputError, match="fewer than"):
        quality_records(mini_dataset_dir, 10_000)


def test_caches_report_of_tiny_random_has_every_figure():
    threads = torch.get_num_threads()
    try:
        report = bench_generate("tiny-random", size=32, steps=3, runs=1, threads=1, caches=True,
                                cache_settings={"every 2": {"condition_cache": "every:2"}})
    finally:
        torch.set_num_threads(threads)
    assert report["base_text_only_median_s"] > 0 and report["mask_overhead"]["mask_text_vs_base"] > 0
    parts = report["exact_savings"]["parts"]
    assert set(parts) == {"condition_images", "experts", "step_invariants"}
    assert all(part["without_s"] > 0 and part["with_s"] > 0 for part in parts.values())
    assert set(report["cache_settings"]) == {"every 2"} and "quality" not in report


def test_cache_goals_name_the_best_setting_and_the_shortfall():
    from facemogle.bench_generate import cache_goals

    def entry(arguments, overhead_base, overhead_text, speedup, miou_change, fid_change):
        return {"arguments": arguments, "overhead_vs_base": overhead_base, "overhead_vs_text_only": overhead_text,
                "speedup_vs_exact": speedup, "quality": {"miou_ratio_change": miou_change, "fid_style_change": fid_change}}

    report = {"exact_savings": {"speedup_all": 1.03, "parts": {"experts": {"saved_s": 0.05}, "blank": {"saved_s": -0.001}}},
              "cache_settings": {
                  "c2": entry({"condition_cache": "every:2"}, 1.4, 0.8, 1.4, 0.001, 0.0),
                  "c10": entry({"condition_cache": "every:10"}, 1.17, 0.65, 1.66, 0.002, -0.02),
                  "c-bad": entry({"condition_cache": "every:50"}, 1.05, 0.6, 1.9, -0.05, 0.0),  # mask control lost
                  "s1": entry({"step_cache": "first-block:0.1"}, 1.3, 0.7, 1.53, 0.0, -0.035),
                  "s-bad": entry({"step_cache": "first-block:0.5"}, 0.9, 0.5, 2.5, 0.0, -0.12),  # FID moved 12 %
                  "both": entry({"condition_cache": "every:4", "step_cache": "first-block:0.1"}, 0.8, 0.4, 2.3, 0.0, 0.0)}}
    goals = cache_goals(report)
    assert goals["exact_savings"]["faster_parts"] == ["experts"]
    condition = goals["condition_cache"]
    assert condition["setting"] == "c10" and condition["met_vs_text_only"] and not condition["met_vs_base"]
    assert condition["missed_vs_base_by"] == pytest.approx(0.07)
    assert goals["step_cache"] == {"setting": "s1", "target_speedup": 1.5, "speedup": 1.53, "fid_style_change": -0.035,
                                   "met": True}


def test_bench_steps_default_to_the_models_own(tmp_path):
    from facemogle.cli.bench import model_default_steps
    from facemogle.specs import TINY_NUM_INFERENCE_STEPS

    assert model_default_steps("tiny", {}) == TINY_NUM_INFERENCE_STEPS
    assert model_default_steps("tiny-random", {}) == 20  # no inference settings: 20
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "model_index.json").write_text(json.dumps({"default_num_inference_steps": 7}))
    assert model_default_steps("saved", {"path": tmp_path}) == 7  # a checkpoint's saved pipeline
