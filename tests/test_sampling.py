"""facemogle.sampling: the single model prediction (shared with training), mask guidance, the loop's hook point."""

from __future__ import annotations

import pytest
import torch

from facemogle.sampling import Prediction, StepHook, denoise, flux_timesteps, mask_guidance
from facemogle.specs import load_pipeline
from facemogle.train.trainer import FaceMoGLETrainingModel

CALL = dict(prompt="a face", height=64, width=64, num_inference_steps=3, seed=4, output_type="latent")


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny-random", seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained-looking condition LoRA, so that the mask matters
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return pipe


class Recorder(StepHook):
    def __init__(self):
        self.inputs, self.sigmas, self.predictions = [], [], []

    def before_prediction(self, state):
        self.inputs.append((state.latents.clone(), state.timestep))

    def after_step(self, state):
        self.sigmas.append((state.sigma, state.sigma_next))
        self.predictions.append(state.prediction)


def test_training_makes_the_prediction_generation_makes(pipe, example_mask_ids):
    recorder = Recorder()
    pipe(mask=example_mask_ids, guidance_scale=1.0, mask_guidance_scale=1.0, step_hooks=[recorder], **CALL)
    latents, t = recorder.inputs[1]
    t_unit = (t / 1000).reshape(1)
    condition = pipe.encode_masks([example_mask_ids], 64, 64)
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=["a face"], prompt_2=None, max_sequence_length=512)
    image_ids = pipe.prepare_latents(1, 64, 64, torch.float32, "cpu", None)[1]
    model = FaceMoGLETrainingModel(pipe.transformer, pipe.mogle)  # what accelerate wraps; FLUX guidance 1
    with torch.no_grad():
        trained = model(latents, t_unit, condition, embeds, pooled, image_ids, text_ids)
    torch.testing.assert_close(trained, recorder.predictions[1].velocity, atol=1e-6, rtol=0)


def test_mask_guidance_mixes_the_mask_and_empty_mask_predictions(pipe, example_mask_ids):
    own, empty, guided = Recorder(), Recorder(), Recorder()
    pipe(mask=example_mask_ids, mask_guidance_scale=1.0, step_hooks=[own], **CALL)
    pipe(mask=None, mask_guidance_scale=1.0, step_hooks=[empty], **CALL)  # text only = the empty mask
    pipe(mask=example_mask_ids, mask_guidance_scale=2.5, step_hooks=[guided], **CALL)
    first = [r.predictions[0].velocity for r in (own, empty, guided)]  # step 1: the same noise for all three
    assert (first[0] - first[1]).abs().max() > 1e-4 and (first[2] - first[0]).abs().max() > 1e-4  # the mask matters
    # the guided call predicts both in one batch of 2: equal up to float rounding of another batch shape
    torch.testing.assert_close(first[2], mask_guidance(first[0], first[1], 2.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(mask_guidance(first[0], first[1], 1.0), first[0])
    # what the hooks see of a guided call is the images' own half
    assert guided.predictions[0].condition_tokens.shape[0] == 1
    torch.testing.assert_close(guided.predictions[0].condition_tokens, own.predictions[0].condition_tokens)


def test_hooks_see_every_step_and_can_replace_the_latents(pipe, example_mask_ids):
    class Replace(StepHook):
        def after_step(self, state):
            if state.index == 0:
                state.latents = torch.zeros_like(state.latents)

    recorder = Recorder()
    pipe(mask=example_mask_ids, step_hooks=[Replace(), recorder], **CALL)
    assert len(recorder.inputs) == 3
    assert torch.count_nonzero(recorder.inputs[1][0]) == 0  # step 2 started from what the hook put there
    sigmas = recorder.sigmas
    assert sigmas[0][0] == pytest.approx(1.0) and sigmas[-1][1] == 0.0
    assert all(a[1] == pytest.approx(b[0], abs=1e-6) for a, b in zip(sigmas, sigmas[1:]))  # sigma_next -> next sigma


def test_denoise_is_a_plain_function_of_predict_and_scheduler(pipe):
    timesteps = flux_timesteps(pipe.scheduler, 4, 16, "cpu")
    assert len(timesteps) == 4 and float(timesteps[0]) == pytest.approx(1000.0)
    start = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    seen = []

    def predict(latents, t):
        seen.append(t.clone())
        return Prediction(velocity=latents, condition_tokens=latents)  # v = x: Euler steps scale x by 1 - dt

    out = denoise(predict, pipe.scheduler, start, timesteps)
    sigmas = [float(t) / 1000 for t in timesteps] + [0.0]
    scale = torch.prod(torch.tensor([1 + (b - a) for a, b in zip(sigmas, sigmas[1:])]))
    torch.testing.assert_close(out, start * scale)
    assert [s.shape for s in seen] == [(2,)] * 4 and torch.equal(seen[0], torch.ones(2))
    flux_timesteps(pipe.scheduler, 4, 16, "cpu")
    assert torch.equal(denoise(predict, pipe.scheduler, start, timesteps, interrupted=lambda: True), start)
    assert len(seen) == 4
