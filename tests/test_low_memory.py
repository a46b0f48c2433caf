"""Low-memory modes (:mod:`facemogle.low_memory`) on tiny models: each mode that runs on the CPU
gives the plain pipeline's images (offloading: exactly; quantisation: within its rounding), with
the condition LoRA still acting; the CUDA-only modes are refused on the CPU in one line and run
only where CUDA is."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tolerances import EXACT

from facemogle.errors import InputError
from facemogle.low_memory import apply_low_memory, check_low_memory
from facemogle.specs import load_pipeline

CUDA = torch.cuda.is_available()
FP8_STORAGE = torch.float8_e4m3fn
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (this mode cannot run on the CPU)")


def lora_pipe(lora_scale: float = 0.5):
    """tiny-random with a non-zero condition LoRA."""
    pipe = load_pipeline("tiny-random", seed=0)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in pipe.transformer.named_parameters():
        if "lora_B" in name:
            parameter.data = lora_scale * torch.randn(parameter.shape, generator=generator)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, mask):
    return pipe(mask=mask, prompt="a face", seed=0, num_inference_steps=2, output_type="pt", watermark=False).images


@pytest.fixture(scope="module")
def mask(fixtures_dir):
    return fixtures_dir / "masks" / "27000.png"


@pytest.fixture(scope="module")
def reference(mask):
    """Plain images with the LoRA and without it (B = 0): how much the LoRA changes them."""
    with_lora, without_lora = generate(lora_pipe(), mask), generate(lora_pipe(0.0), mask)
    effect = (with_lora - without_lora).abs().max()
    assert effect > 0.01
    return with_lora, effect


@pytest.mark.parametrize("offload", ["model", "group"])
def test_offloading_on_the_cpu_gives_the_same_images(mask, reference, offload):
    pipe = apply_low_memory(lora_pipe(), offload=offload, device="cpu")
    hooked = [m for m in pipe.transformer.modules() if hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook")]
    assert hooked, "no offloading hook was attached"
    for _ in range(2):  # a second call after the hooks moved the weights around
        torch.testing.assert_close(generate(pipe, mask), reference[0], **EXACT)


def test_fp8_layerwise_casting_stores_fp8_and_keeps_the_lora(mask, reference):
    plain = lora_pipe()
    before = sum(p.numel() * p.element_size() for p in plain.transformer.parameters())
    pipe = apply_low_memory(lora_pipe(), quantize="fp8", device="cpu")
    stored = {p.dtype for n, p in pipe.transformer.named_parameters() if n.endswith("attn.to_q.base_layer.weight")}
    assert stored == {FP8_STORAGE}
    lora = {p.dtype for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    assert lora == {torch.float32}  # the LoRA's own layers are not cast down
    after = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    assert after < 0.7 * before
    images = generate(pipe, mask)
    difference = (images - reference[0]).abs().max()
    assert 0 < difference < 0.1
    without_lora = apply_low_memory(lora_pipe(0.0), quantize="fp8", device="cpu")
    assert (images - generate(without_lora, mask)).abs().max() > 0.5 * reference[1]  # the LoRA still acts


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed ([lowmem] extra)")
def test_int8_weight_only_quantises_the_base_layers_and_keeps_the_lora(mask, reference):
    pipe = apply_low_memory(lora_pipe(), quantize="int8", device="cpu")
    base = dict(pipe.transformer.named_modules())["transformer_blocks.0.attn.to_q"].get_base_layer()
    assert type(base.weight).__name__ != "Parameter" or base.weight.dtype != torch.float32  # a torchao tensor
    lora = {p.dtype for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    assert lora == {torch.float32}
    images = generate(pipe, mask)
    assert 0 < (images - reference[0]).abs().max() < 0.05
    without_lora = apply_low_memory(lora_pipe(0.0), quantize="int8", device="cpu")
    assert (images - generate(without_lora, mask)).abs().max() > 0.5 * reference[1]


def test_load_pipeline_applies_the_modes_after_building(mask, reference):
    pipe = load_pipeline("tiny-random", seed=0, quantize="fp8", offload="model", device="cpu")
    assert pipe.transformer.x_embedder.weight.dtype in (FP8_STORAGE, torch.float32)  # x_embedder carries a LoRA
    assert generate(pipe, mask).shape == reference[0].shape


@pytest.mark.skipif(CUDA, reason="checks the refusals of a machine without CUDA")
@pytest.mark.parametrize("offload, quantize, words", [
    ("sequential", None, "needs an accelerator"),
    (None, "nf4", "needs a CUDA device"),
    ("sideways", None, "offload must be one of"),
    (None, "int4", "quantize must be one of"),
])
def test_modes_this_machine_cannot_run_are_refused_in_one_line(offload, quantize, words):
    with pytest.raises(InputError, match=words):
        check_low_memory(offload, quantize, "cpu")
    with pytest.raises(InputError, match=words):
        load_pipeline("tiny-random", offload=offload, quantize=quantize, device="cpu")


def test_nf4_is_flux_dev_only():
    with pytest.raises(InputError, match="(flux-dev only|CUDA)"):
        load_pipeline("tiny-random", quantize="nf4")


@needs_cuda
def test_sequential_offload_on_cuda_gives_the_same_images(mask):
    plain = generate(lora_pipe().to("cuda"), mask)
    pipe = apply_low_memory(lora_pipe(), offload="sequential", device="cuda")
    torch.testing.assert_close(generate(pipe, mask), plain, atol=1e-4, rtol=0)


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_nf4_on_cuda_loads_flux_dev_with_lora_and_mogle(golden_dir, mask):
    files = dict(base=golden_dir / "tiny-flux", lora=golden_dir / "pytorch_lora_weights.safetensors",
                 mogle=golden_dir / "global_local_mask_moe.pt", device="cuda")
    plain, nf4 = load_pipeline("flux-dev", **files), load_pipeline("flux-dev", quantize="nf4", **files)
    linear = dict(nf4.transformer.named_modules())["transformer_blocks.0.attn.to_q"].get_base_layer()
    assert type(linear).__name__ == "Linear4bit"
    plain_images, nf4_images = generate(plain, mask), generate(nf4, mask)
    assert (plain_images.float() - nf4_images.float()).abs().mean() < 0.1


def test_the_gpu_script_runs_its_modes_at_tiny_scale_on_the_cpu(tmp_path):
    """scripts/bench_low_memory.py (the FLUX.1-dev-size table of the README) at the test model's size:
    it saves a random FLUX layout, loads it through load_pipeline per mode, and reports the modes this
    machine cannot run with their reason."""
    import importlib.util as util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_low_memory.py"
    spec = util.spec_from_file_location("bench_low_memory", path)
    script = util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "low_memory.json"
    modes = "plain,offload group,quantize fp8,offload sequential"
    assert script.main(["--scale", "tiny", "--device", "cpu", "--modes", modes, "--json", str(out),
                        "--work-dir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    assert set(report["modes"]) == set(modes.split(","))
    for name in ("plain", "offload group", "quantize fp8"):
        assert report["modes"][name]["finite"] and report["modes"][name]["s_per_image"] > 0
    if not CUDA:
        assert "needs an accelerator" in report["modes"]["offload sequential"]["skipped"]
