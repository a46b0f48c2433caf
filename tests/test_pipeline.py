"""FaceMoGLEPipeline: Golden C parity (every denoising step) and pipeline behaviour."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tolerances import EXACT, GOLDEN, ROUNDOFF

from facemogle.errors import InputError
from facemogle.specs import load_pipeline

PROMPT = "She is wearing lipstick."
STEPS = 4
TOL = GOLDEN  # the reference's thread-count spread with a margin (tests/tolerances.py)


@pytest.fixture(scope="module")
def golden_pipe(golden_dir):
    return load_pipeline(
        "flux-dev",
        base=golden_dir / "tiny-flux",
        lora=golden_dir / "pytorch_lora_weights.safetensors",
        mogle=golden_dir / "global_local_mask_moe.pt",
        device="cpu",
    )


@pytest.fixture(scope="module")
def tiny_pipe():
    return load_pipeline("tiny-random", seed=0)


@pytest.fixture(scope="module")
def mask_27000(fixtures_dir):
    return fixtures_dir / "masks" / "27000.png"


def run_recording(pipe, mask, size, *, seed=0, gate_time_scale=1.0, **kwargs):
    """Generate one image and record what every step saw and produced."""
    record = {"steps": []}
    mogle_mix = pipe.mogle.mix  # the gate's step (the experts run once per call)

    def mogle_spy(expert_outputs, global_tokens, noisy_tokens, timestep, **kw):
        record.setdefault("gate_t", []).append(timestep.clone())
        return mogle_mix(expert_outputs, global_tokens, noisy_tokens, timestep * gate_time_scale, **kw)

    def on_step(_pipe, i, t, tensors):
        record["steps"].append({k: v.clone() for k, v in tensors.items()})
        return {}

    pipe.mogle.mix = mogle_spy
    try:
        out = pipe(
            mask=mask,
            prompt=PROMPT,
            height=size,
            width=size,
            num_inference_steps=STEPS,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents", "noise_pred", "condition_tokens"],
            **kwargs,
        )
    finally:
        del pipe.mogle.mix  # back to the class method
    record["image"] = out.images
    return record


@pytest.mark.parametrize("size", [64, 128])
def test_golden_c_every_step(golden_pipe, golden_dir, mask_27000, size):
    golden = load_file(golden_dir / f"golden_C_generate_{size}_mogle_t_div1000.safetensors")
    torch.testing.assert_close(golden_pipe.encode_masks([mask_27000], size, size), golden["condition_latents_vae"], **TOL)
    rec = run_recording(golden_pipe, mask_27000, size)
    assert len(rec["steps"]) == STEPS
    for i, step in enumerate(rec["steps"]):
        # the gate sees t in (0, 1]: the scheduler's timestep / 1000
        torch.testing.assert_close(rec["gate_t"][i], golden[f"step{i}.t_mogle"], atol=1e-6, rtol=0)
        torch.testing.assert_close(step["condition_tokens"], golden[f"step{i}.mogle_output"], **TOL)
        torch.testing.assert_close(step["noise_pred"], golden[f"step{i}.noise_pred"], **TOL)
        torch.testing.assert_close(step["latents"], golden[f"step{i}.latents_out"], **TOL)
    torch.testing.assert_close(rec["image"], golden["image"], **TOL)


def test_golden_c_catches_gate_fed_scheduler_timesteps(golden_pipe, golden_dir, mask_27000):
    """Feeding the gate 0..1000 (the reference's inference defect) must break parity with the
    corrected golden - and reproduce the golden recorded from the unmodified reference instead."""
    fixed = load_file(golden_dir / "golden_C_generate_64_mogle_t_div1000.safetensors")
    official = load_file(golden_dir / "golden_C_generate_64_official_mogle_t_raw.safetensors")
    rec = run_recording(golden_pipe, mask_27000, 64, gate_time_scale=1000.0)
    assert (rec["steps"][0]["condition_tokens"] - fixed["step0.mogle_output"]).abs().max() > 1e-2
    assert (rec["image"] - fixed["image"]).abs().max() > 1e-3
    torch.testing.assert_close(rec["steps"][0]["condition_tokens"], official["step0.mogle_output"], **TOL)
    torch.testing.assert_close(rec["image"], official["image"], **TOL)


def test_golden_c_png_within_one_level(golden_pipe, golden_dir, mask_27000):
    image = golden_pipe(
        mask=mask_27000, prompt=PROMPT, height=64, width=64, num_inference_steps=STEPS, guidance_scale=3.5, seed=0,
        watermark=False,  # golden parity compares unmarked outputs
    ).images[0]
    expected = np.asarray(Image.open(golden_dir / "golden_C_generate_64_mogle_t_div1000.png").convert("RGB"), dtype=int)
    assert np.abs(np.asarray(image, dtype=int) - expected).max() <= 1


def test_seed_gives_same_image_whatever_the_batch(tiny_pipe, mask_27000):
    single = tiny_pipe(mask=mask_27000, prompt="a", seed=7, output_type="pt", num_inference_steps=2).images
    batch = tiny_pipe(
        mask=[None, mask_27000], prompt=["b", "a"], seed=[3, 7], output_type="pt", num_inference_steps=2
    ).images
    assert batch.shape == (2, 3, 64, 64)
    torch.testing.assert_close(batch[1:], single, **ROUNDOFF)  # another batch composition
    assert (batch[0] - batch[1]).abs().max() > 1e-3
    # int seed s for K images = seeds s, s+1, ...
    many = tiny_pipe(mask=mask_27000, prompt="a", seed=6, num_images_per_prompt=2, output_type="pt", num_inference_steps=2).images
    torch.testing.assert_close(many[1:], single, **ROUNDOFF)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_prompt_truncation_is_reported_once_per_pipeline_not_per_batch(caplog):
    pipe = load_pipeline("tiny-random", seed=0)
    long_prompt = "She has long wavy brown hair, arched eyebrows and a slightly open mouth. " * 3  # > 77 bytes
    tokenizer_lines = _Lines()  # transformers' loggers do not propagate to caplog: listen on its root
    logging.getLogger("transformers").addHandler(tokenizer_lines)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                embeds, pooled, _ = pipe.encode_prompt(prompt=[long_prompt, "short"], prompt_2=None,
                                                       max_sequence_length=32)
        assert not tokenizer_lines.messages
        pipe.tokenizer.deprecation_warnings.clear()  # transformers says it once per tokenizer
        pipe.tokenizer(long_prompt)  # outside encode_prompt it still does
    finally:
        logging.getLogger("transformers").removeHandler(tokenizer_lines)
    assert len(tokenizer_lines.messages) == 1 and tokenizer_lines.messages[0].startswith("Token indices sequence")
    assert embeds.shape[:2] == (2, 32) and pooled.shape[0] == 2
    assert not [r for r in caplog.records if "The following part of your input was truncated" in r.getMessage()]
    ours = [r.getMessage() for r in caplog.records if r.name == "facemogle.pipeline"]
    assert len(ours) == 1 and "CLIP (77 tokens)" in ours[0] and "T5 (max_sequence_length)" in ours[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe.encode_prompt(prompt=["short"], prompt_2=None, max_sequence_length=32)
    assert not caplog.records


def test_generator_list_matches_seeds(tiny_pipe):
    by_seed = tiny_pipe(prompt=["x", "x"], seed=[1, 2], output_type="latent", num_inference_steps=1).images
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    by_gen = tiny_pipe(prompt=["x", "x"], generator=gens, output_type="latent", num_inference_steps=1).images
    torch.testing.assert_close(by_seed, by_gen, **EXACT)  # the same computation
    one = tiny_pipe(prompt="x", generator=torch.Generator().manual_seed(2), output_type="latent", num_inference_steps=1)
    torch.testing.assert_close(one.images[0], by_seed[1], **ROUNDOFF)  # one generator, one image: its seed


def test_one_generator_for_several_images(tiny_pipe):
    """A single torch.Generator for K images: one seed per image is drawn from it (documented in
    __call__), so the images differ from each other, the same generator state gives the same images,
    and they are exactly those of the drawn seeds."""
    call = dict(prompt="x", num_images_per_prompt=3, output_type="latent", num_inference_steps=1)
    shared = tiny_pipe(generator=torch.Generator().manual_seed(5), **call).images
    again = tiny_pipe(generator=torch.Generator().manual_seed(5), **call).images
    torch.testing.assert_close(again, shared, **EXACT)
    assert min((shared[i] - shared[j]).abs().max() for i, j in ((0, 1), (0, 2), (1, 2))) > 1.0  # not one noise
    draws = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(5)).tolist()
    torch.testing.assert_close(tiny_pipe(seed=draws, **call).images, shared, **EXACT)
    other = tiny_pipe(generator=torch.Generator().manual_seed(6), **call).images
    assert (other - shared).abs().max() > 1.0


def test_explicit_latents_are_the_initial_noise(tiny_pipe, example_mask_ids):
    """``latents=`` replaces the seeded noise: equal latents give equal images, other latents other
    images, and the seed path's own noise given as latents reproduces the seed path (whatever seed
    is passed beside them)."""
    call = dict(mask=example_mask_ids, prompt="a", output_type="latent", num_inference_steps=2)
    seeded = tiny_pipe(seed=7, **call).images
    noise, _ = tiny_pipe.prepare_latents(1, 64, 64, torch.float32, torch.device("cpu"),
                                         [torch.Generator().manual_seed(7)])  # what seed=7 starts from
    given = tiny_pipe(latents=noise.clone(), seed=3, **call).images  # the latents win over the seed
    torch.testing.assert_close(given, seeded, **EXACT)
    torch.testing.assert_close(tiny_pipe(latents=noise.clone(), **call).images, given, **EXACT)
    other = tiny_pipe(latents=torch.randn(noise.shape, generator=torch.Generator().manual_seed(8)), **call).images
    assert (other - given).abs().max() > 1.0
    with pytest.raises(InputError, match="latents of shape"):
        tiny_pipe(latents=noise[:, :-1], **call)


def test_bisenet_mask_order_is_remapped_to_the_official_order(tiny_pipe, example_mask_ids):
    from facemogle.masks import to_order

    bisenet_ids = to_order(example_mask_ids, "bisenet")
    assert (bisenet_ids != example_mask_ids).mean() > 0.1  # the orders really differ on this mask
    official = tiny_pipe.encode_masks([example_mask_ids], 64, 64)
    torch.testing.assert_close(tiny_pipe.encode_masks([bisenet_ids], 64, 64, order="bisenet"), official, **EXACT)
    assert (tiny_pipe.encode_masks([bisenet_ids], 64, 64) - official).abs().max() > 0.1  # read as official: wrong
    call = dict(prompt="a", seed=0, output_type="latent", num_inference_steps=1)
    expected = tiny_pipe(mask=example_mask_ids, **call).images
    torch.testing.assert_close(tiny_pipe(mask=bisenet_ids, mask_order="bisenet", **call).images, expected, **EXACT)
    assert (tiny_pipe(mask=bisenet_ids, **call).images - expected).abs().max() > 1e-4


def test_return_dict_false_returns_the_images_in_a_tuple(tiny_pipe, example_mask_ids):
    call = dict(mask=example_mask_ids, prompt="a", seed=0, num_inference_steps=1)
    for output_type in ("latent", "pt"):
        as_dict = tiny_pipe(output_type=output_type, **call)
        as_tuple = tiny_pipe(output_type=output_type, return_dict=False, **call)
        assert type(as_tuple) is tuple and len(as_tuple) == 1
        torch.testing.assert_close(as_tuple[0], as_dict.images, **EXACT)
    pil = tiny_pipe(return_dict=False, watermark=False, **call)[0]
    assert np.array_equal(np.asarray(pil[0]), np.asarray(tiny_pipe(watermark=False, **call).images[0]))


def test_output_types_hold_the_same_image(tiny_pipe, example_mask_ids):
    """pt, np, PIL and latent outputs of one call are one image: the same values, laid out and
    quantised as each type says."""
    call = dict(mask=example_mask_ids, prompt="a", seed=0, num_inference_steps=1)
    latent = tiny_pipe(output_type="latent", **call).images  # (1, N, 64)
    pt = tiny_pipe(output_type="pt", **call).images  # (1, 3, H, W) in [0, 1]
    array = tiny_pipe(output_type="np", **call).images  # (1, H, W, 3)
    pil = tiny_pipe(output_type="pil", watermark=False, **call).images[0]
    torch.testing.assert_close(tiny_pipe.decode_latents(latent, 64, 64, "pt"), pt, **EXACT)
    np.testing.assert_array_equal(array, pt.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(pil), (array[0] * 255).round().astype(np.uint8))
    assert 0.05 < pt.std() and 0 <= pt.min() and pt.max() <= 1  # an image, not a constant


def test_modes_and_output_types(tiny_pipe, mask_27000):
    text_only = tiny_pipe(prompt="She has blond hair.", seed=0, num_inference_steps=1, watermark=False).images
    assert len(text_only) == 1 and isinstance(text_only[0], Image.Image) and text_only[0].size == (64, 64)
    marked = tiny_pipe(prompt="She has blond hair.", seed=0, num_inference_steps=1).images  # upscaled to be marked
    assert marked[0].size == (512, 512) and '"seed": 0' in marked[0].info["parameters"]
    mask_only = tiny_pipe(mask=mask_27000, seed=0, num_inference_steps=1, output_type="np").images
    assert mask_only.shape == (1, 64, 64, 3) and mask_only.dtype == np.float32
    both = tiny_pipe(mask=mask_27000, prompt="x", seed=0, num_inference_steps=1, output_type="pt", height=32, width=48).images
    assert both.shape == (1, 3, 32, 48) and 0 <= both.min() and both.max() <= 1
    latent = tiny_pipe(mask=mask_27000, seed=0, num_inference_steps=1, output_type="latent").images
    assert latent.shape == (1, 16, 64)
    # the mask changes the result
    no_mask = tiny_pipe(seed=0, num_inference_steps=1, output_type="latent").images
    assert (latent - no_mask).abs().max() > 1e-4


def test_masks_are_encoded_once_per_call(mask_27000, monkeypatch):
    tiny_pipe = load_pipeline("tiny-random", seed=0)  # a fresh one: nothing kept yet
    calls = []
    encode = tiny_pipe.vae.encode

    def counting(x, *a, **k):
        calls.append(x.shape[0])
        return encode(x, *a, **k)

    monkeypatch.setattr(tiny_pipe.vae, "encode", counting)
    tiny_pipe(mask=mask_27000, prompt=["a", "b"], num_images_per_prompt=2, seed=0, num_inference_steps=3, output_type="latent")
    # one mask -> its colour map, one map per class present, and the blank map shared by the absent
    # classes: once per call, whatever the steps and images
    present = len(np.unique(tiny_pipe.mask_ids(mask_27000, 64, 64)))
    assert 2 <= present < 19 and sum(calls) == 1 + present + 1
    calls.clear()
    # the blank map is kept on the pipeline; the empty mask (mask guidance, text-only) is all blank maps
    tiny_pipe(mask=mask_27000, mask_guidance_scale=2.0, seed=0, num_inference_steps=2, output_type="latent")
    assert sum(calls) == 1 + present
    calls.clear()
    tiny_pipe(mask=None, prompt="a", seed=0, num_inference_steps=2, output_type="latent")
    assert sum(calls) == 0
    tiny_pipe(mask=None, prompt="a", seed=0, height=32, width=32, num_inference_steps=2, output_type="latent")
    assert sum(calls) == 1  # a new size: its blank map, once


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=60, width=64), "multiple"),
        (dict(prompt="x" * 100_000), "too long"),
        (dict(prompt=["a", "b"], mask=[None, None, None]), "masks"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(seed=[1, 2, 3]), "seeds"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_error(tiny_pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_pipe(**kwargs)


def test_bad_mask_is_refused(tiny_pipe, tmp_path):
    from facemogle.errors import MaskError

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(MaskError):
        tiny_pipe(mask=bad, num_inference_steps=1)


def test_save_and_reload_round_trip(tmp_path, example_mask_ids):
    """Every part survives save_pretrained / from_pretrained. The LoRA is set to random non-zero
    values first: the random model's lora_B starts at zero, so with it as built a LoRA file that
    was never written (or never read) would reload to the very same outputs."""
    from facemogle.condition import LORA_WEIGHT_NAME, condition_lora_state_dict
    from facemogle.pipeline import FaceMoGLEPipeline

    pipe = load_pipeline("tiny-random", seed=0)
    call = dict(mask=example_mask_ids, prompt="x", seed=0, num_inference_steps=2, output_type="latent")
    zero_lora = pipe(**call).images
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if ".lora_" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    lora = {key: value.clone() for key, value in condition_lora_state_dict(pipe.transformer).items()}
    assert len(lora) == 2 * 13 and all(torch.count_nonzero(v) == v.numel() for v in lora.values())
    expected = pipe(**call).images
    assert (expected - zero_lora).abs().max() > 1e-2  # the LoRA acts (observed 0.18)

    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / LORA_WEIGHT_NAME).is_file()
    again = FaceMoGLEPipeline.from_pretrained(tmp_path / "pipe")
    reloaded = condition_lora_state_dict(again.transformer)
    assert reloaded.keys() == lora.keys()
    assert all(torch.equal(reloaded[key], lora[key]) for key in lora)
    assert all(torch.equal(again.mogle.state_dict()[k], v) for k, v in pipe.mogle.state_dict().items())
    torch.testing.assert_close(again(**call).images, expected, **ROUNDOFF)  # separate instances


def test_model_cpu_offload_gives_the_same_result():
    pipe = load_pipeline("tiny-random", seed=1)
    before = pipe(prompt="x", seed=0, num_inference_steps=2, output_type="latent").images
    pipe.enable_model_cpu_offload(device="cpu")
    onloaded = []
    for name in ("mogle", "transformer"):
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward
        hook.pre_forward = lambda module, *a, _o=original, _n=name, **k: (onloaded.append(_n), _o(module, *a, **k))[1]
    after = pipe(prompt="x", seed=0, num_inference_steps=2, output_type="latent").images
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    # the piecewise-called models are moved to the execution device by their offload hooks
    assert {"mogle", "transformer"} <= set(onloaded)


def test_max_sequence_length_default_is_saved_and_used(tmp_path):
    from facemogle.pipeline import FaceMoGLEPipeline

    pipe = load_pipeline("tiny-random", seed=0)
    assert pipe.default_max_sequence_length == 512
    pipe.register_to_config(default_max_sequence_length=64)
    pipe.default_max_sequence_length = 64
    seen = []
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda *a, **k: (seen.append(k["max_sequence_length"]), encode(*a, **k))[1]
    pipe(prompt="x", seed=0, num_inference_steps=1, output_type="latent")
    assert seen == [64]
    pipe.save_pretrained(tmp_path / "p")
    assert FaceMoGLEPipeline.from_pretrained(tmp_path / "p").default_max_sequence_length == 64


def test_guidance_default_is_saved_and_used(tmp_path):
    from facemogle.pipeline import FaceMoGLEPipeline

    pipe = load_pipeline("tiny-random", seed=0)
    assert pipe.default_guidance_scale == 3.5  # FLUX.1-dev's
    seen = []
    embed = pipe.transformer.time_text_embed.forward
    pipe.transformer.time_text_embed.forward = lambda t, g, *a: (seen.append(float(g[0])), embed(t, g, *a))[1]
    call = dict(prompt="x", seed=0, num_inference_steps=1, output_type="latent")
    pipe(**call)
    pipe.register_to_config(default_guidance_scale=1.0)
    pipe.default_guidance_scale = 1.0
    pipe(**call)
    pipe(guidance_scale=2.0, **call)
    # diffusers scales guidance by 1000 before embedding it (twice a step: image and condition stream)
    assert list(dict.fromkeys(seen)) == [3500.0, 1000.0, 2000.0]
    del pipe.transformer.time_text_embed.forward
    pipe.save_pretrained(tmp_path / "p")
    assert FaceMoGLEPipeline.from_pretrained(tmp_path / "p").default_guidance_scale == 1.0


def test_mask_guidance(tmp_path, example_mask_ids):
    """w = 1 is the plain prediction; w = 0 keeps only the empty-mask prediction (= text-only); one
    Euler step is linear in w; the default is saved with the pipeline."""
    from facemogle.pipeline import FaceMoGLEPipeline

    pipe = load_pipeline("tiny-random", seed=0)
    with torch.no_grad():  # a trained-looking condition LoRA, so that the mask matters
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert pipe.default_mask_guidance_scale == 1.0
    call = dict(prompt="a face", seed=[0, 1], num_images_per_prompt=2, num_inference_steps=2, output_type="latent")
    plain = pipe(mask=example_mask_ids, **call).images  # (2, N, 64)
    text_only = pipe(mask=None, **call).images
    assert (plain - text_only).abs().mean() > 1e-4  # the mask moves the latents (tiny-random: ~2e-4)
    torch.testing.assert_close(pipe(mask=example_mask_ids, mask_guidance_scale=1.0, **call).images, plain)
    torch.testing.assert_close(pipe(mask=example_mask_ids, mask_guidance_scale=0.0, **call).images, text_only,
                               atol=2e-6, rtol=0)
    one_step = dict(call, num_inference_steps=1, output_type="latent")
    latents = {w: pipe(mask=example_mask_ids, mask_guidance_scale=w, **one_step).images for w in (0.0, 1.0, 3.0)}
    torch.testing.assert_close(latents[3.0] - latents[1.0], 2 * (latents[1.0] - latents[0.0]), atol=2e-6, rtol=0)
    guided = pipe(mask=example_mask_ids, mask_guidance_scale=3.0, **call).images
    assert (guided - plain).abs().mean() > 2e-4
    single = pipe(mask=example_mask_ids, mask_guidance_scale=3.0, prompt="a face", seed=1, num_inference_steps=2,
                  output_type="latent").images
    torch.testing.assert_close(single[0], guided[1], atol=2e-6, rtol=0)  # batch-independent as ever
    pipe.register_to_config(default_mask_guidance_scale=3.0)
    pipe.save_pretrained(tmp_path / "p")
    assert FaceMoGLEPipeline.from_pretrained(tmp_path / "p").default_mask_guidance_scale == 3.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(mask_guidance_scale=float("inf")), "mask_guidance_scale must be a finite number"),
    (dict(text_only_guidance_scale=float("nan")), "text_only_guidance_scale must be a finite number"),
    (dict(height=0, width=64), "height"),
    (dict(seed=2**64), "seed must be an integer"),
    (dict(seed=[1.5]), "seed must be an integer"),
    (dict(num_inference_steps=10**6), "num_inference_steps must be in"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(tiny_pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny_pipe(prompt="a", output_type="latent", **kwargs)


def test_text_only_images_take_their_own_guidance_scale(tiny_pipe, tmp_path):
    """In a batch of a masked and a text-only image, each is what it is alone: the masked one at
    mask_guidance_scale, the text-only one at text_only_guidance_scale; unset, text-only images take
    the pipeline's default_text_only_guidance_scale, and without that the mask's scale."""
    from facemogle.pipeline import FaceMoGLEPipeline

    call = dict(height=32, width=32, num_inference_steps=2, output_type="latent", text_guidance=True)
    mask, prompt = np.eye(32, dtype=np.uint8) * 13, "a smiling face"
    mixed = tiny_pipe(mask=[mask, None], prompt=prompt, seed=[1, 2], mask_guidance_scale=3.0,
                      text_only_guidance_scale=5.0, **call).images
    masked = tiny_pipe(mask=mask, prompt=prompt, seed=1, mask_guidance_scale=3.0, **call).images
    text_only = tiny_pipe(mask=None, prompt=prompt, seed=2, mask_guidance_scale=5.0, **call).images  # default: the mask's
    torch.testing.assert_close(mixed[:1], masked, **ROUNDOFF)
    torch.testing.assert_close(mixed[1:], text_only, **ROUNDOFF)
    at_three = tiny_pipe(mask=None, prompt=prompt, seed=2, mask_guidance_scale=3.0, **call).images
    assert (at_three - text_only).abs().max() > 1e-3  # the scale reaches the text-only image
    # text-only at scale 1 is the plain prediction, guided or not
    plain = tiny_pipe(mask=None, prompt=prompt, seed=2, **{**call, "text_guidance": False}).images
    one = tiny_pipe(mask=None, prompt=prompt, seed=2, mask_guidance_scale=3.0, text_only_guidance_scale=1.0, **call).images
    torch.testing.assert_close(one, plain, **ROUNDOFF)
    # the pipeline's default, saved with its config
    tiny_pipe.save_pretrained(tmp_path / "p")
    saved = FaceMoGLEPipeline.from_pretrained(tmp_path / "p")
    assert saved.default_text_only_guidance_scale is None
    saved.register_to_config(default_text_only_guidance_scale=5.0)
    saved.save_pretrained(tmp_path / "q")
    again = FaceMoGLEPipeline.from_pretrained(tmp_path / "q")
    assert again.default_text_only_guidance_scale == 5.0
    by_default = again(mask=None, prompt=prompt, seed=2, mask_guidance_scale=3.0, **call).images
    torch.testing.assert_close(by_default, text_only, **ROUNDOFF)


def test_text_guidance_guides_mask_and_text_together(tiny_pipe):
    """text_guidance: the second branch is the empty mask with the empty prompt. With an empty
    prompt and no mask both branches are the same prediction, so the result is the unguided one;
    with a prompt, text-only calls are guided (they differ), and over a mask the result differs
    from mask-only guidance. ``pred_empty + w (pred - pred_empty)`` is checked by hand at one step."""
    from facemogle.sampling import Conditioning, guided_prediction, with_empty_mask

    call = dict(height=32, width=32, num_inference_steps=2, seed=0, output_type="latent")
    plain = tiny_pipe(mask=None, prompt="", **call).images
    same = tiny_pipe(mask=None, prompt="", mask_guidance_scale=3.0, text_guidance=True, **call).images
    torch.testing.assert_close(same, plain, **ROUNDOFF)
    text_only = tiny_pipe(mask=None, prompt="a smiling face", **call).images
    guided = tiny_pipe(mask=None, prompt="a smiling face", mask_guidance_scale=3.0, text_guidance=True, **call).images
    assert (guided - text_only).abs().max() > 1e-3
    unguided_text = tiny_pipe(mask=None, prompt="a smiling face", mask_guidance_scale=3.0, **call).images
    torch.testing.assert_close(unguided_text, text_only, **EXACT)  # without text guidance: nothing to guide
    mask = np.eye(32, dtype=np.uint8) * 13
    mask_only = tiny_pipe(mask=mask, prompt="a smiling face", mask_guidance_scale=3.0, **call).images
    both = tiny_pipe(mask=mask, prompt="a smiling face", mask_guidance_scale=3.0, text_guidance=True, **call).images
    assert (both - mask_only).abs().max() > 1e-3

    # one step by hand: the second branch sees the empty prompt's embeddings
    embeds, pooled, txt_ids = tiny_pipe.encode_prompt(["a smiling face", ""], prompt_2=None, max_sequence_length=
                                                      tiny_pipe.default_max_sequence_length)
    enc = tiny_pipe.encode_mask_latents([mask, None], 32, 32).dense()
    latents, img_ids = tiny_pipe.prepare_latents(1, 32, 32, embeds.dtype, "cpu", [torch.Generator().manual_seed(0)], None)
    g = torch.ones(1) if tiny_pipe.transformer.config.guidance_embeds else None
    base = Conditioning(enc[:1], embeds[:1], pooled[:1], img_ids, txt_ids, g)
    t = torch.full((1,), 0.7)
    doubled = with_empty_mask(base, enc[1:], (embeds[1:], pooled[1:]))
    got = guided_prediction(tiny_pipe.transformer, tiny_pipe.mogle, latents, t, conditioning=doubled,
                            mask_guidance_scale=3.0).velocity
    from facemogle.sampling import predict_velocity

    cond = predict_velocity(tiny_pipe.transformer, tiny_pipe.mogle, latents, t, base).velocity
    empty = predict_velocity(tiny_pipe.transformer, tiny_pipe.mogle, latents, t,
                             Conditioning(enc[1:], embeds[1:], pooled[1:], img_ids, txt_ids, g)).velocity
    torch.testing.assert_close(got, empty + 3.0 * (cond - empty), **ROUNDOFF)
