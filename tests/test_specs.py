"""The "tiny" spec (the bundled CPU model): its preset, the untrained-weights error, and loading."""

from __future__ import annotations

import pytest
import torch

from facemogle.errors import CheckpointError
from facemogle.specs import (TINY_NUM_INFERENCE_STEPS, TINY_SAMPLE_SIZE, TINY_TEXT_WIDTH, TINY_TRANSFORMER, available_specs,
                             load_pipeline)


@pytest.fixture(scope="module")
def tiny_random():
    return load_pipeline("tiny", random_init=True, seed=0)


def test_registered_and_flux_shaped(tiny_random):
    assert "tiny" in available_specs()
    transformer = tiny_random.transformer.config
    assert transformer.in_channels == tiny_random.vae.config.latent_channels * 4 == tiny_random.mogle.config.token_dim
    assert sum(TINY_TRANSFORMER["axes_dims_rope"]) == TINY_TRANSFORMER["attention_head_dim"]
    assert tiny_random.vae_scale_factor * TINY_SAMPLE_SIZE == 128
    assert tiny_random.default_num_inference_steps == TINY_NUM_INFERENCE_STEPS == 12
    assert tiny_random.text_encoder.config.hidden_size == transformer.pooled_projection_dim == TINY_TEXT_WIDTH
    assert tiny_random.text_encoder_2.config.d_model == transformer.joint_attention_dim


def test_fits_the_40_mb_budget_in_float16(tiny_random):
    modules = (tiny_random.transformer, tiny_random.vae, tiny_random.text_encoder, tiny_random.text_encoder_2,
               tiny_random.mogle)
    parameters = sum(p.numel() for m in modules for p in m.parameters())
    assert 10e6 < parameters * 2 < 40e6  # bytes in float16


def test_untrained_weights_give_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="has not been trained yet.*make tiny-model"):
        load_pipeline("tiny", weights=tmp_path)


def test_saved_weights_load_in_float32_and_generate(tiny_random, tmp_path):
    tiny_random.to(dtype=torch.float16)
    tiny_random.save_pretrained(str(tmp_path))
    tiny_random.to(dtype=torch.float32)
    pipe = load_pipeline("tiny", weights=tmp_path)
    assert pipe.transformer.dtype == torch.float32 and pipe.default_sample_size == TINY_SAMPLE_SIZE
    reference = tiny_random.transformer.state_dict()
    for name, tensor in pipe.transformer.state_dict().items():
        torch.testing.assert_close(tensor, reference[name].half().float(), msg=name)
    image = pipe(prompt="This person is smiling.", height=32, width=32, num_inference_steps=1, seed=0,
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_a_saved_float16_folder_loads_in_float32_on_the_cpu(tiny_random, tmp_path):
    """The "saved" spec (``--model DIR``): float16 weights run as float32 on the CPU (they ran
    in float16 before, under diffusers' notice that float16 pipelines cannot run there)."""
    tiny_random.to(dtype=torch.float16)
    tiny_random.save_pretrained(str(tmp_path))
    tiny_random.to(dtype=torch.float32)
    pipe = load_pipeline("saved", path=tmp_path)
    modules = (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.mogle)
    assert {p.dtype for m in modules for p in m.parameters()} == {torch.float32}
    kept = load_pipeline("saved", path=tmp_path, dtype=torch.float16)  # asked for: kept
    assert kept.transformer.dtype == torch.float16


def test_trained_text_encoders_replace_the_random_ones(tiny_random, tmp_path):
    tiny_random.text_encoder.save_pretrained(str(tmp_path / "text_encoder"))
    tiny_random.text_encoder_2.save_pretrained(str(tmp_path / "text_encoder_2"))
    other = load_pipeline("tiny", random_init=True, seed=1, text_encoders=tmp_path)
    for mine, theirs in ((other.text_encoder, tiny_random.text_encoder), (other.text_encoder_2, tiny_random.text_encoder_2)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(CheckpointError, match="no trained text encoders"):
        load_pipeline("tiny", random_init=True, text_encoders=tmp_path / "missing")


def test_registry_inference_setting_matches_the_preset(tiny_random):
    from facemogle.specs import SCRATCH_GUIDANCE_SCALE, get_spec

    size, steps, guidance = get_spec("tiny").inference
    assert size == tiny_random.default_sample_size * tiny_random.vae_scale_factor == 128
    assert steps == tiny_random.default_num_inference_steps
    assert guidance == tiny_random.default_guidance_scale == SCRATCH_GUIDANCE_SCALE == 1.0
    assert get_spec("flux-dev").inference is None  # the paper's setting


def test_the_preset_samples_with_its_own_schedule_shift_and_other_small_models_with_fluxs(tiny_random):
    import math

    from facemogle.specs import FLUX_SCHEDULER, TINY_SCHEDULE_SHIFT

    assert tiny_random.scheduler.config.base_shift == pytest.approx(math.log(TINY_SCHEDULE_SHIFT))
    assert load_pipeline("tiny-random").scheduler.config.base_shift == FLUX_SCHEDULER["base_shift"] == 0.5


def test_a_damaged_or_nan_saved_model_is_refused_in_one_line(tiny_random, tmp_path):
    """A truncated weight file, an edited config, or weights holding NaN: a CheckpointError naming
    the folder (and the tensor), not a traceback or a model that draws black images."""
    from safetensors.torch import load_file, save_file

    tiny_random.save_pretrained(str(tmp_path / "cut"))
    weights = next((tmp_path / "cut" / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut: not a loadable saved pipeline") as refused:
        load_pipeline("tiny", weights=tmp_path / "cut")
    assert "\n" not in str(refused.value)

    tiny_random.save_pretrained(str(tmp_path / "nan"))
    weights = next((tmp_path / "nan" / "mogle").glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name][..., 0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=rf"nan: mogle weight {name} holds NaN or infinite values"):
        load_pipeline("tiny", weights=tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"holds NaN"):
        load_pipeline("saved", path=tmp_path / "nan")
