"""Peak GPU memory and seconds per image of every low-memory mode at FLUX.1-dev size (random weights).

No weights can be downloaded anywhere, so the models are built from FLUX.1-dev's configs with random
weights (transformer 12 B, T5-XXL encoder, CLIP-L, the 16-channel VAE), saved once as a FLUX.1-dev
folder plus random condition-LoRA and MoGLE files, then each mode loads them through
``facemogle.specs.load_pipeline("flux-dev", ..., offload=..., quantize=...)`` - the code path of
``facemogle generate --offload/--quantize`` - and generates one 512 px mask + text image::

    python scripts/bench_low_memory.py --json out/low_memory.json            # a CUDA machine (~10 min)
    python scripts/bench_low_memory.py --scale tiny --device cpu --json x    # the same modes, tiny, CPU

Reported per mode: load seconds, seconds per image (after one warm-up image), peak CUDA memory
(``torch.cuda.max_memory_allocated``), and a mode the machine cannot run as its one-line reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

#: FLUX.1-dev's component configs (black-forest-labs/FLUX.1-dev, the diffusers layout).
FLUX_DEV = dict(
    transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                     guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    vae=dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
             use_quant_conv=False, use_post_quant_conv=False),
    clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, projection_dim=768),
    t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"),
    size=512, steps=28, lora_rank=16,
)
#: The same structure at the test model's size (``--scale tiny``: a CPU smoke run of the script).
TINY = dict(transformer=None, vae=None, clip=None, t5=None, size=64, steps=2, lora_rank=4)
MODES = [
    ("plain", None, None), ("offload model", "model", None), ("offload sequential", "sequential", None),
    ("offload group", "group", None), ("quantize fp8", None, "fp8"), ("quantize int8", None, "int8"),
    ("quantize nf4", None, "nf4"), ("nf4 + offload model", "model", "nf4"),
]


def random_flux_folder(scale: dict, folder: Path, dtype: torch.dtype, build_device: str) -> dict:
    """Build the random models and save them as ``folder/base`` (FLUX layout), the LoRA and MoGLE files."""
    from diffusers import FluxPipeline

    from facemogle import specs
    from facemogle.condition import save_condition_lora

    configs = {k: scale[k] or getattr(specs, f"TINY_RANDOM_{k.upper()}" if k in ("transformer", "vae")
                                          else f"TINY_RANDOM_{'CLIP' if k == 'clip' else 'T5'}_TEXT")
               for k in ("transformer", "vae", "clip", "t5")}
    with torch.device(build_device):
        pipe = specs.build_small_pipeline(configs["transformer"], configs["vae"], configs["clip"], configs["t5"],
                                          lora_rank=scale["lora_rank"])
    generator = torch.Generator(build_device).manual_seed(0)
    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae, pipe.mogle):
        for name, parameter in module.named_parameters():  # small random weights (init cost, finite values)
            if parameter.ndim > 1 and "norm" not in name:
                parameter.data.normal_(0.0, 0.02, generator=generator)
        module.to(dtype)
    components = {k: getattr(pipe, k) for k in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                 "tokenizer_2")}
    from facemogle.pipeline import _base_weights_only

    with _base_weights_only(pipe.transformer):
        FluxPipeline(transformer=pipe.transformer, **components).save_pretrained(folder / "base")
    save_condition_lora(pipe.transformer, folder)
    pipe.mogle.save_official_checkpoint(folder / "global_local_mask_moe.pt")
    del pipe
    gc.collect()
    return {"base": folder / "base", "lora": folder / "pytorch_lora_weights.safetensors",
            "mogle": folder / "global_local_mask_moe.pt"}


def run_mode(files: dict, offload, quantize, device: str, size: int, steps: int) -> dict:
    from facemogle.errors import FaceMoGLEError
    from facemogle.masks import EXAMPLE_MASK
    from facemogle.specs import load_pipeline

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        pipe = load_pipeline("flux-dev", **files, device=device, offload=offload, quantize=quantize)
    except FaceMoGLEError as error:
        return {"skipped": str(error)}
    load_seconds = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(mask=EXAMPLE_MASK, prompt="This person has long brown hair and is smiling.", height=size,
                    width=size, num_inference_steps=steps, seed=0, output_type="np").images

    generate()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    images = generate()
    if cuda:
        torch.cuda.synchronize()
    result = {"load_s": round(load_seconds, 2), "s_per_image": round(time.perf_counter() - started, 3),
              "finite": bool(torch.isfinite(torch.as_tensor(images)).all())}
    if cuda:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    pipe = None  # noqa: F841 (free the models before the next mode)
    gc.collect()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=["flux-dev", "tiny"], default="flux-dev")
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", default=",".join(name for name, _, _ in MODES), help="comma-separated mode names")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 28 at flux-dev scale)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the random models go (default: a temp folder)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    scale = FLUX_DEV if args.scale == "flux-dev" else TINY
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    wanted = [m for m in MODES if m[0] in args.modes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        started = time.perf_counter()
        files = random_flux_folder(scale, Path(folder), dtype, args.device if cuda else "cpu")
        report = {"scale": args.scale, "device": torch.cuda.get_device_name() if cuda else "cpu",
                  "size": scale["size"], "steps": args.steps or scale["steps"], "dtype": str(dtype),
                  "build_s": round(time.perf_counter() - started, 1), "modes": {}}
        for name, offload, quantize in wanted:
            report["modes"][name] = run_mode(files, offload, quantize, args.device, scale["size"], report["steps"])
            print(name, report["modes"][name], flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")  # what is done so far survives a timeout
    return 0


if __name__ == "__main__":
    sys.exit(main())
