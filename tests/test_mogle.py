"""MoGLE: Golden A (official outputs on tiny random weights), checkpoints, ablation switches."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file
from tolerances import GOLDEN_MOGLE_ATOL

from facemogle.errors import CheckpointError, InputError
from facemogle.labels import NUM_CONDITIONS
from facemogle.mogle import MoGLE

ATOL = GOLDEN_MOGLE_ATOL  # GOLDEN.md: MoGLE outputs, float32 CPU (tests/tolerances.py)
# Official variant name -> (file in ../shared/golden, config the keys cannot tell).
VARIANT_FILES = {
    "default": ("global_local_mask_moe.pt", {}),
    "no_gating": ("mogle_no_gating.pt", {}),
    "no_expert": ("mogle_no_expert.pt", {}),
    "weight_is_scale": ("mogle_weight_is_scale.pt", {"gating_mode": "scalar"}),
}
GATED_VARIANTS = ("default", "no_expert", "weight_is_scale")
CASES = ("N16", "N64", "N16_t1000scale")
DEFAULT_PARAMETERS = 101_780  # GOLDEN.md: params.default = 90 tensors, 101780 values
TOKEN_DIM = MoGLE().config.token_dim  # 16 VAE channels x 2 x 2


@pytest.fixture(scope="module")
def golden_a(golden_dir):
    return load_file(golden_dir / "golden_A_mogle.safetensors")


@pytest.fixture(scope="module")
def official_models(golden_dir):
    return {
        name: MoGLE.from_official_checkpoint(golden_dir / file, **overrides)
        for name, (file, overrides) in VARIANT_FILES.items()
    }


def _inputs(golden_a, case):
    return golden_a[f"{case}.x"], golden_a[f"{case}.noise_latent"], golden_a[f"{case}.timestep"]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------- Golden A


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", list(VARIANT_FILES))
def test_golden_a_output(official_models, golden_a, variant, case):
    x, noise, t = _inputs(golden_a, case)
    with torch.no_grad():
        output = official_models[variant](x, noise, t)
    expected = golden_a[f"{case}.{variant}.output"]
    assert output.shape == expected.shape
    assert _max_diff(output, expected) < ATOL


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", GATED_VARIANTS)
def test_golden_a_gate_and_time_embedding(official_models, golden_a, variant, case):
    x, noise, t = _inputs(golden_a, case)
    gating = official_models[variant].gating
    with torch.no_grad():
        weights = gating(x[:, 0], noise, t)
        time_proj, time_emb = gating.time_features(t)
    assert _max_diff(weights, golden_a[f"{case}.{variant}.gating_weights"]) < ATOL
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-6)
    # At t = 1000 the sin/cos arguments are ~400 rad, where one float32 ulp of the frequency
    # (torch.exp differs by 1 ulp between AVX2 and AVX-512 CPUs) moves them by ~3e-5.
    time_atol = 5e-5 if case == "N16_t1000scale" else ATOL
    assert _max_diff(time_proj, golden_a[f"{case}.{variant}.time_proj"]) < time_atol
    assert _max_diff(time_emb, golden_a[f"{case}.{variant}.time_emb"]) < ATOL


@pytest.mark.parametrize("case", CASES)
def test_scalar_gating_applies_token_averaged_weights(official_models, golden_a, case):
    x, noise, t = _inputs(golden_a, case)
    with torch.no_grad():
        _, applied = official_models["weight_is_scale"](x, noise, t, return_gate_weights=True)
    per_token = golden_a[f"{case}.weight_is_scale.gating_weights"]  # before the token mean
    expected = per_token.mean(dim=1, keepdim=True).expand_as(per_token)
    assert _max_diff(applied, expected) < ATOL


def test_returned_gate_weights_match_golden(official_models, golden_a):
    x, noise, t = _inputs(golden_a, "N16")
    with torch.no_grad():
        _, weights = official_models["default"](x, noise, t, return_gate_weights=True)
    assert weights.shape == (2, 16, NUM_CONDITIONS)
    assert _max_diff(weights, golden_a["N16.default.gating_weights"]) < ATOL


def test_timestep_scale_0_1000_is_not_the_training_scale(official_models, golden_a):
    """Feeding the scheduler's 0..1000 timestep (the official generate() defect) fails the golden."""
    x, noise, t = _inputs(golden_a, "N16")
    model = official_models["default"]
    with torch.no_grad():
        right_scale = model(x, noise, t)
        wrong_scale = model(x, noise, t * 1000)
    expected = golden_a["N16.default.output"]
    assert _max_diff(right_scale, expected) < ATOL
    assert _max_diff(wrong_scale, expected) > 1e-2


def test_condition_batch_one_broadcasts_against_latent_batch(official_models, golden_a):
    """The official generate() passes a batch-1 condition and a (1,) timestep."""
    x, noise, t = _inputs(golden_a, "N16")
    model = official_models["default"]
    with torch.no_grad():
        broadcast = model(x[:1], noise, t[:1])
        repeated = model(x[:1].expand(2, -1, -1, -1), noise, t[:1].expand(2))
        scalar_t = model(x[:1], noise, float(t[0]))
    assert broadcast.shape == (2, 16, TOKEN_DIM)
    assert torch.allclose(broadcast, repeated, atol=1e-6, rtol=0)
    assert torch.allclose(broadcast, scalar_t, atol=1e-6, rtol=0)
    assert _max_diff(broadcast[0], golden_a["N16.default.output"][0]) < ATOL
    # Ungated variant: the output still has the latent's batch.
    with torch.no_grad():
        plain_sum = official_models["no_gating"](x[:1], noise, t[:1])
    assert plain_sum.shape == (2, 16, TOKEN_DIM)
    assert torch.equal(plain_sum[0], plain_sum[1])


def test_deterministic(official_models, golden_a):
    x, noise, t = _inputs(golden_a, "N64")
    model = official_models["default"]
    with torch.no_grad():
        assert torch.equal(model(x, noise, t), model(x, noise, t))


# ----------------------------------------------------------------------------- checkpoints


def test_variants_are_inferred_from_keys(official_models):
    assert official_models["default"].config.gating_mode == "dynamic"
    assert official_models["default"].config.use_experts is True
    assert official_models["no_gating"].config.gating_mode == "none"
    assert official_models["no_expert"].config.use_experts is False
    assert official_models["no_expert"].config.num_experts == NUM_CONDITIONS
    for model in official_models.values():
        assert model.config.active_experts == "all"


def test_official_state_dict_round_trip(official_models, golden_dir, tmp_path):
    for name, (file, overrides) in VARIANT_FILES.items():
        original = torch.load(golden_dir / file, map_location="cpu", weights_only=True)
        written = official_models[name].official_state_dict()
        assert sorted(written) == sorted(original)
        assert all(torch.equal(written[key], original[key]) for key in original)
        path = tmp_path / f"{name}.pt"
        official_models[name].save_official_checkpoint(path)
        reloaded = MoGLE.from_official_checkpoint(path, **overrides)
        assert dict(reloaded.config) == dict(official_models[name].config)


def test_bf16_file_loads_and_runs_in_bf16(golden_dir, golden_a, tmp_path):
    state = torch.load(golden_dir / "global_local_mask_moe.pt", map_location="cpu", weights_only=True)
    path = tmp_path / "mogle_bf16.pt"
    torch.save({key: value.bfloat16() for key, value in state.items()}, path)

    model = MoGLE.from_official_checkpoint(path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    x, noise, t = _inputs(golden_a, "N16")
    with torch.no_grad():
        output, weights = model(x.bfloat16(), noise.bfloat16(), t, return_gate_weights=True)
    assert output.dtype == weights.dtype == torch.bfloat16
    expected = golden_a["N16.default.output"]
    assert _max_diff(output, expected) < 0.03  # measured 0.009 (bf16 rounding); |output| <= 1.3

    as_float = MoGLE.from_official_checkpoint(path, torch_dtype=torch.float32)
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    with torch.no_grad():
        assert as_float(x, noise, t).dtype == torch.float32


def test_missing_and_unexpected_keys_are_named(golden_dir, tmp_path):
    state = torch.load(golden_dir / "global_local_mask_moe.pt", map_location="cpu", weights_only=True)
    del state["local_experts.7.net.2.bias"]
    state["gating.extra_layer.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        MoGLE.from_official_checkpoint(path)
    message = str(error.value)
    assert "local_experts.7.net.2.bias" in message
    assert "gating.extra_layer.weight" in message
    assert "broken.pt" in message


def test_override_that_contradicts_the_file_is_refused(golden_dir):
    with pytest.raises(CheckpointError, match="missing keys: gating.gate.0.bias"):
        MoGLE.from_official_checkpoint(golden_dir / "mogle_no_gating.pt", gating_mode="dynamic")
    with pytest.raises(CheckpointError, match=rf"gating.gate.2.weight has shape \({NUM_CONDITIONS}, {TOKEN_DIM}\)"):
        MoGLE.from_official_checkpoint(golden_dir / "mogle_no_expert.pt", num_experts=12)
    with pytest.raises(InputError, match="unknown MoGLE config option"):
        MoGLE.from_official_checkpoint(golden_dir / "global_local_mask_moe.pt", weight_is_scale=True)


class _NotATensor:
    pass


def test_non_checkpoint_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        MoGLE.from_official_checkpoint(text)

    arbitrary_pickle = tmp_path / "object.pt"
    arbitrary_pickle.write_bytes(pickle.dumps(_NotATensor(), protocol=2))
    with pytest.raises(CheckpointError, match="object.pt"):
        MoGLE.from_official_checkpoint(arbitrary_pickle)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_state_dict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        MoGLE.from_official_checkpoint(not_a_state_dict)

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        MoGLE.from_official_checkpoint(tmp_path / "absent.pt")


def test_safetensors_file_loads(golden_dir, golden_a, official_models, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "mogle.safetensors"
    save_file(official_models["default"].official_state_dict(), path)
    model = MoGLE.from_official_checkpoint(path)
    x, noise, t = _inputs(golden_a, "N16")
    with torch.no_grad():
        assert _max_diff(model(x, noise, t), golden_a["N16.default.output"]) < ATOL


@pytest.mark.parametrize(
    "config", [{}, {"use_experts": False, "gating_mode": "scalar"}, {"active_experts": "local"}]
)
def test_save_pretrained_round_trip(tmp_path, config):
    torch.manual_seed(0)
    model = MoGLE(**config).eval()
    model.save_pretrained(tmp_path)
    reloaded = MoGLE.from_pretrained(tmp_path).eval()
    assert {k: v for k, v in reloaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    x, noise, t = _random_inputs()
    with torch.no_grad():
        assert torch.equal(model(x, noise, t), reloaded(x, noise, t))


def test_parameter_count():
    count = sum(p.numel() for p in MoGLE().parameters())
    assert count == DEFAULT_PARAMETERS  # "about 0.1 M" (METHOD.md section 3)


# ----------------------------------------------------------------------------- ablations


def _random_inputs(batch=2, tokens=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, NUM_CONDITIONS, tokens, TOKEN_DIM, generator=generator)
    noise = torch.randn(batch, tokens, TOKEN_DIM, generator=generator)
    t = torch.rand(batch, generator=generator)
    return x, noise, t


def _gating_keys(time_and_noise=True):
    keys = {"gating.gate.0.weight", "gating.gate.0.bias", "gating.gate.2.weight", "gating.gate.2.bias"}
    if time_and_noise:
        keys |= {f"gating.timestep_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
        keys |= {"gating.noise_proj.weight", "gating.noise_proj.bias"}
    return keys


def _expert_keys(prefixes):
    return {
        f"{prefix}.net.{layer}.{p}" for prefix in prefixes for layer in (0, 2) for p in ("weight", "bias")
    }


GLOBAL = ["global_expert"]
LOCAL = [f"local_experts.{i}" for i in range(NUM_CONDITIONS - 1)]
ABLATIONS = {
    "identity_experts": ({"use_experts": False}, _gating_keys(), NUM_CONDITIONS),
    "no_gating": ({"gating_mode": "none"}, _expert_keys(GLOBAL + LOCAL), None),
    "static": ({"gating_mode": "static"}, _expert_keys(GLOBAL + LOCAL) | _gating_keys(False), NUM_CONDITIONS),
    "scalar": ({"gating_mode": "scalar"}, _expert_keys(GLOBAL + LOCAL) | _gating_keys(), NUM_CONDITIONS),
    "only_global": ({"active_experts": "global", "gating_mode": "none"}, _expert_keys(GLOBAL), None),
    "only_local": ({"active_experts": "local"}, _expert_keys(LOCAL) | _gating_keys(), NUM_CONDITIONS - 1),
    "no_experts_no_gating": ({"use_experts": False, "gating_mode": "none"}, set(), None),
}


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    return MoGLE().eval()


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_state_dict_and_output(reference_model, name):
    config, expected_keys, gate_width = ABLATIONS[name]
    model = MoGLE(**config).eval()
    state = model.state_dict()
    assert set(state) == expected_keys
    if gate_width is not None:
        assert state["gating.gate.2.weight"].shape == (gate_width, TOKEN_DIM)

    # Share every weight with the reference so that only the switch differs.
    reference = reference_model.state_dict()
    shared = {key: reference[key] for key in state}
    if name == "only_local":  # the gate drops the global expert's row
        shared["gating.gate.2.weight"] = reference["gating.gate.2.weight"][1:]
        shared["gating.gate.2.bias"] = reference["gating.gate.2.bias"][1:]
    model.load_official_state_dict(shared)

    x, noise, t = _random_inputs()
    with torch.no_grad():
        output, weights = model(x, noise, t, return_gate_weights=True)
        reference_output = reference_model(x, noise, t)
    assert output.shape == (2, 16, TOKEN_DIM)
    assert weights.shape == (2, 16, len(model.expert_indices))
    assert _max_diff(output, reference_output) > 1e-2


def test_ablation_semantics(reference_model):
    x, noise, t = _random_inputs()
    with torch.no_grad():
        raw_sum = MoGLE(use_experts=False, gating_mode="none")(x, noise, t)
        global_only = MoGLE(active_experts="global", gating_mode="none")
        global_only.global_expert.load_state_dict(reference_model.global_expert.state_dict())
        global_output = global_only(x, noise, t)
        static = MoGLE(gating_mode="static").eval()
        static_a = static(x, noise, t, return_gate_weights=True)[1]
        static_b = static(x, torch.randn_like(noise), torch.rand(2), return_gate_weights=True)[1]
    assert torch.allclose(raw_sum, x.sum(dim=1))
    assert torch.equal(global_output, reference_model.global_expert(x[:, 0]))
    assert torch.equal(static_a, static_b)  # static weights ignore x_t and t


@pytest.mark.parametrize(
    "config, message",
    [
        ({"gate_hidden_dim": 32}, "must equal token_dim"),
        ({"gating_mode": "sparse"}, "gating_mode 'sparse'"),
        ({"active_experts": "some"}, "active_experts 'some'"),
        ({"active_experts": "global"}, "nothing to gate"),
        ({"active_experts": "local", "gating_mode": "static"}, "global mask alone"),
    ],
)
def test_invalid_config_is_refused(config, message):
    with pytest.raises(InputError, match=message):
        MoGLE(**config)


def test_bad_input_shapes_are_refused(reference_model):
    x, noise, t = _random_inputs()
    with pytest.raises(InputError, match=f"\\(B, {NUM_CONDITIONS}, N, {TOKEN_DIM}\\)"):
        reference_model(x[:, 1:], noise, t)
    with pytest.raises(InputError, match="same token count"):
        reference_model(x, noise[:, :8], t)
    with pytest.raises(InputError, match="token size"):
        reference_model(x[..., :32], noise[..., :32], t)
    with pytest.raises(InputError, match="do not broadcast"):
        reference_model(x, noise, torch.rand(3))
