"""Recording the MoGLE gate weights over the denoising steps, and their plot."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch

from facemogle.errors import InputError
from facemogle.eval.gate_weights import GateStep, gate_weights_svg, record_gate_weights
from facemogle.mogle import MoGLE


@pytest.fixture(scope="module")
def pipe():
    from facemogle.specs import load_pipeline

    return load_pipeline("tiny-random", seed=0)


def test_one_step_per_denoising_step_with_weights_that_sum_to_one(pipe, example_mask_ids):
    with record_gate_weights(pipe) as steps:
        pipe(mask=example_mask_ids, prompt="a face", num_inference_steps=3, height=64, width=64, seed=0,
             output_type="latent")
    assert len(steps) == 3
    assert steps[0].expert_names[0] == "global" and steps[0].expert_names[1] == "background"
    assert len(steps[0].mean_weights) == 20
    for step in steps:
        assert step.global_weight + step.local_weight == pytest.approx(1.0, abs=1e-5)
        assert 0 < step.global_weight < 1
    assert steps[0].timestep > steps[-1].timestep  # t goes from noise (1) towards data (0)
    with torch.no_grad():  # the hook is gone after the block
        pipe(mask=example_mask_ids, num_inference_steps=2, height=64, width=64, seed=0, output_type="latent")
    assert len(steps) == 3


def test_the_recorded_weights_are_the_gate_output(pipe):
    mogle = pipe.mogle
    tokens = torch.randn(1, 20, 16, mogle.config.token_dim)
    noisy = torch.randn(1, 16, mogle.config.token_dim)
    with record_gate_weights(pipe) as steps:
        _, weights = mogle(tokens, noisy, torch.tensor([0.3]), return_gate_weights=True)
    torch.testing.assert_close(torch.tensor(steps[0].mean_weights), weights.mean(dim=(0, 1)))
    assert steps[0].timestep == pytest.approx(0.3)


def test_a_mogle_without_gate_is_refused():
    class Pipe:
        mogle = MoGLE(token_dim=64, gate_hidden_dim=64, gating_mode="none")

    with pytest.raises(InputError, match="no gate"):
        with record_gate_weights(Pipe()):
            pass


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
    with record_gate_weights(pipe) as plain:
        pipe(mask=example_mask_ids, **call)
    with record_gate_weights(pipe) as guided:
        pipe(mask=example_mask_ids, mask_guidance_scale=3.0, **call)
    assert len(guided) == 2
    # step 1 sees the same noise and mask: the same gate weights as without guidance
    assert guided[0].mean_weights == pytest.approx(plain[0].mean_weights, abs=1e-6)
