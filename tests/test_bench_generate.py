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

    report = module.bench_thread_policy(["--model", "tiny-random", "--size", "32", "--steps", "1"], runs=1)
    cores = len(available_cores())
    assert set(report) == {"quiet", "busy_core"}
    for where in report.values():
        assert set(where) == {"thread_policy", "torch_default"}
        assert all(v["mask_text_median_s"] > 0 and v["text_only_median_s"] > 0 for v in where.values())
    if cores > 1:  # the busy process holds a core while the policy samples the load: it is left out
        assert report["busy_core"]["thread_policy"]["threads"] < cores
        assert report["busy_core"]["thread_policy"]["threads"] <= report["quiet"]["thread_policy"]["threads"]
