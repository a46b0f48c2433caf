"""Recording the MoGLE gate weights over the denoising steps, and their plot."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch

from facemogle.errors import InputError
from facemogle.eval.gate_weights import GateRecorder, GateStep, gate_weights_svg
from facemogle.mogle import MoGLE


@pytest.fixture(scope="module")
def pipe():
    from facemogle.specs import load_pipeline

    return load_pipeline("tiny-random", seed=0)


def test_one_step_per_denoising_step_with_weights_that_sum_to_one(pipe, example_mask_ids):
    recorder = GateRecorder(pipe.mogle)
    pipe(mask=example_mask_ids, prompt="a face", num_inference_steps=3, height=64, width=64, seed=0,
         output_type="latent", step_hooks=[recorder])
    steps = recorder.steps
    assert len(steps) == 3
    assert steps[0].expert_names[0] == "global" and steps[0].expert_names[1] == "background"
    assert len(steps[0].mean_weights) == 20
    for step in steps:
        assert step.global_weight + step.local_weight == pytest.approx(1.0, abs=1e-5)
        assert 0 < step.global_weight < 1
    assert steps[0].timestep > steps[-1].timestep  # t goes from noise (1) towards data (0)
    pipe(mask=example_mask_ids, num_inference_steps=2, height=64, width=64, seed=0, output_type="latent")
    assert len(steps) == 3  # only the calls it is given to


def test_the_recorded_weights_are_the_gate_output(pipe, example_mask_ids):
    """The weights the gate applied at each step, whether read as a step hook or as diffusers' callback."""
    seen = []
    mogle_mix = pipe.mogle.mix  # the gate's step (the experts run once per call)

    def spy(expert_outputs, global_tokens, noisy_tokens, timestep, **kwargs):
        out = mogle_mix(expert_outputs, global_tokens, noisy_tokens, timestep, **kwargs)
        _, weights = mogle_mix(expert_outputs, global_tokens, noisy_tokens, timestep, return_gate_weights=True)
        seen.append((float(timestep.reshape(-1)[0]), weights.mean(dim=(0, 1))))
        return out

    hook, callback = GateRecorder(pipe.mogle), GateRecorder(pipe.mogle)
    pipe.mogle.mix = spy
    try:
        pipe(mask=example_mask_ids, num_inference_steps=2, height=64, width=64, seed=0, output_type="latent",
             step_hooks=[hook], callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["gate_weights"])
    finally:
        del pipe.mogle.mix
    assert len(seen) == len(hook.steps) == len(callback.steps) == 2
    for (t, weights), a, b in zip(seen, hook.steps, callback.steps):
        torch.testing.assert_close(torch.tensor(a.mean_weights), weights)
        assert a.mean_weights == b.mean_weights
        assert a.timestep == pytest.approx(t) and b.timestep == pytest.approx(t)
    assert seen[0][0] > seen[1][0]
    with pytest.raises(InputError, match="gate_weights"):
        callback(pipe, 0, torch.tensor(500.0), {"latents": torch.zeros(1)})


def test_a_mogle_without_gate_is_refused():
    class Pipe:
        mogle = MoGLE(token_dim=64, gate_hidden_dim=64, gating_mode="none")

    with pytest.raises(InputError, match="no gate"):
        GateRecorder(Pipe().mogle)


def test_svg_plot_has_both_curves():
    steps = [GateStep(1 - i / 4, ("global", "skin"), (0.2 + 0.1 * i, 0.8 - 0.1 * i)) for i in range(5)]
    svg = gate_weights_svg(steps)
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    global_points = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    assert len(global_points) == 5 and global_points[0][1] > global_points[-1][1]  # rising weight = falling y
    with pytest.raises(InputError):
        gate_weights_svg([])


def test_mask_guided_calls_record_the_masked_half_only(pipe, example_mask_ids):
    call = dict(prompt="a face", num_inference_steps=2, height=64, width=64, seed=0, output_type="latent")
    plain, guided = GateRecorder(pipe.mogle), GateRecorder(pipe.mogle)
    pipe(mask=example_mask_ids, step_hooks=[plain], **call)
    pipe(mask=example_mask_ids, mask_guidance_scale=3.0, step_hooks=[guided], **call)
    plain, guided = plain.steps, guided.steps
    assert len(guided) == 2
    # step 1 sees the same noise and mask: the same gate weights as without guidance
    assert guided[0].mean_weights == pytest.approx(plain[0].mean_weights, abs=1e-6)


def test_token_weights_are_the_per_token_gate_averaged_over_the_steps():
    import torch

    from facemogle.eval.gate_weights import GateRecorder

    class Mogle:
        gating = object()
        expert_indices = (0, 1, 2)

    recorder = GateRecorder(Mogle())
    assert recorder.token_weights is None
    first, second = torch.rand(2, 4, 3), torch.rand(2, 4, 3)
    recorder.add(0.9, first)
    recorder.add(0.5, second)
    torch.testing.assert_close(recorder.token_weights, (first + second) / 2)
    assert [round(s.timestep, 2) for s in recorder.steps] == [0.9, 0.5]
