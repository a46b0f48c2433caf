"""Generation speed: seconds per image for mask + text and for text-only (``facemogle bench generate``).

:func:`bench_generate` builds a pipeline from a spec (:mod:`facemogle.specs`), runs one untimed
warm-up call per variant, then ``runs`` timed single-image calls per variant, alternating the two
so that a change in the machine's load hits both alike:

* **mask+text**: the shipped example mask and a prompt (what ``facemogle generate --mask M
  --prompt P`` does);
* **text-only**: the same prompt and no mask (the pipeline then conditions on the empty mask).

Each timed call is the whole ``pipe(...)``: text encoding, mask encoding, the denoising loop and
VAE decoding to a PIL image and its watermark (:mod:`facemogle.provenance`). The report gives the median (the headline number), min and every
run, plus what was measured: spec, size, steps, threads and the torch version.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch

from facemogle.errors import InputError
from facemogle.masks import EXAMPLE_MASK
DEFAULT_PROMPT = "This person has long brown hair and is smiling."
VARIANTS = ("mask+text", "text-only")


def time_call(call: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def bench_pipeline(pipe, *, size: int, steps: int, runs: int, mask=EXAMPLE_MASK, prompt: str = DEFAULT_PROMPT,
                   seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each timed call per variant, after one warm-up call of each.

    Returns:
        ``{"mask+text": [runs floats], "text-only": [runs floats]}``.
    """
    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    masks = {"mask+text": mask, "text-only": None}

    def call(variant: str):
        return pipe(mask=masks[variant], prompt=prompt, height=size, width=size, num_inference_steps=steps,
                    seed=seed, output_type="pil")

    for variant in VARIANTS:  # warm-up: first-call allocations, lazy imports, oneDNN kernel choice
        call(variant)
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(runs):
        for variant in VARIANTS:
            seconds[variant].append(time_call(lambda: call(variant)))
    return seconds


def bench_generate(spec: str = "tiny-random", *, size: int = 128, steps: int = 20, runs: int = 5,
                   threads: int | None = None, spec_options: dict | None = None, mask=EXAMPLE_MASK,
                   prompt: str = DEFAULT_PROMPT) -> dict:
    """Build ``spec`` on the CPU and time generation; returns a JSON-able report.

    Args:
        spec: a :mod:`facemogle.specs` name.
        size: output height and width in pixels.
        steps: denoising steps per image.
        runs: timed calls per variant (the median is reported).
        threads: torch CPU threads (None: leave torch's setting).
        spec_options: build options of the spec (e.g. ``{"path": ...}`` for ``saved``).
    """
    from facemogle.specs import load_pipeline

    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    started = time.perf_counter()
    pipe = load_pipeline(spec, **(spec_options or {}))
    load_seconds = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    if size % pipe.size_multiple:
        raise InputError(f"size {size} is not a multiple of {pipe.size_multiple}")
    seconds = bench_pipeline(pipe, size=size, steps=steps, runs=runs, mask=mask, prompt=prompt)
    report = {
        "model": spec,
        "size": size,
        "steps": steps,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "load_s": round(load_seconds, 3),
        "parameters": {name: sum(p.numel() for p in module.parameters())
                       for name, module in (("transformer", pipe.transformer), ("mogle", pipe.mogle),
                                            ("vae", pipe.vae), ("text_encoder", pipe.text_encoder),
                                            ("text_encoder_2", pipe.text_encoder_2))},
    }
    for variant, values in seconds.items():
        key = variant.replace("+", "_").replace("-", "_")  # mask_text, text_only
        report[f"{key}_median_s"] = round(statistics.median(values), 4)
        report[f"{key}_min_s"] = round(min(values), 4)
        report[f"{key}_runs_s"] = [round(v, 4) for v in values]
    return report


#: One core's worth of work for :func:`bench_thread_policy` (pure Python: no OpenMP of its own).
BUSY_LOOP = "while True: pass"
#: Timed calls per variant of the run with torch's defaults beside a busy core (it can be 20x slower).
TORCH_DEFAULT_BUSY_RUNS = 1


def _bench_child(bench_arguments: list[str], runs: int, policy: str) -> dict:
    """``facemogle bench generate`` in a fresh process (the thread count is chosen at start-up)
    with ``FACEMOGLE_THREAD_POLICY=policy`` and none of the OpenMP variables of this process."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "bench.json")
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "FACEMOGLE_THREADS")}
        environment["FACEMOGLE_THREAD_POLICY"] = policy
        subprocess.run([sys.executable, "-m", "facemogle", "bench", "generate", *bench_arguments, "--runs", str(runs),
                        "--json", out], env=environment, check=True, stdout=subprocess.DEVNULL)
        with open(out, encoding="utf-8") as handle:
            child = json.load(handle)
    return {k: child[k] for k in ("threads", "runs", "mask_text_median_s", "text_only_median_s")}


def bench_thread_policy(bench_arguments: list[str], runs: int = 5) -> dict:
    """Generation time with facemogle's thread policy (:mod:`facemogle.cpu_threads`: threads = idle
    cores, bounded OpenMP spinning) and with torch's defaults (``FACEMOGLE_THREAD_POLICY=off``), on a
    quiet machine and beside a process that keeps one core busy; each in a fresh process running
    ``facemogle bench generate <bench_arguments>``. Torch's defaults beside the busy core get
    :data:`TORCH_DEFAULT_BUSY_RUNS` runs (they are the slow case).

    Returns ``{"quiet": {"thread_policy": {...}, "torch_default": {...}}, "busy_core": {...}}``, each
    with ``threads``, ``runs``, ``mask_text_median_s`` and ``text_only_median_s``.
    """
    import subprocess
    import sys

    results = {"quiet": {name: _bench_child(bench_arguments, runs, policy)
                         for name, policy in (("thread_policy", "on"), ("torch_default", "off"))}}
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # let it take its core
        results["busy_core"] = {
            "thread_policy": _bench_child(bench_arguments, runs, "on"),
            "torch_default": _bench_child(bench_arguments, TORCH_DEFAULT_BUSY_RUNS, "off"),
        }
    finally:
        busy.kill()
        busy.wait()
    return results
