"""Condition stream + condition-only LoRA on diffusers' Flux transformer, against Golden B (GOLDEN.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import FluxTransformer2DModel
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tolerances import GOLDEN_ATOL, ROUNDOFF

from facemogle.condition import (
    CONDITION_ADAPTER_NAME,
    LORA_KEY_PREFIX,
    LORA_WEIGHT_NAME,
    add_condition_lora,
    condition_forward,
    condition_lora_state_dict,
    condition_lora_target_modules,
    load_condition_lora,
    save_condition_lora,
)
from facemogle.errors import CheckpointError, InputError

# Against Golden B: the reference's own thread-count spread (2.1e-6) with a margin (tests/tolerances.py).
ATOL, RTOL = GOLDEN_ATOL, 0.0
DEFECT_MARGIN = 1e-3  # a defect must move pred by more than this (GOLDEN.md: separations >= 4e-3)

INTERMEDIATES = (
    "x_embedder_hidden_lora_off",
    "x_embedder_condition_lora_on",
    "temb",
    "cond_temb",
    "context_embedder_out",
    "image_rotary_emb_cos",
    "image_rotary_emb_sin",
    "cond_rotary_emb_cos",
    "cond_rotary_emb_sin",
    "block0.encoder_hidden_states",
    "block0.hidden_states",
    "block0.condition_latents",
    "single0.hidden_states",
    "single0.condition_latents",
    "single1.hidden_states",
    "single1.condition_latents",
    "norm_out",
)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(golden_dir / "golden_B_train_forward.safetensors")


@pytest.fixture(scope="module")
def lora_file(golden_dir):
    return golden_dir / LORA_WEIGHT_NAME


@pytest.fixture(scope="module")
def base_transformer(golden_dir):
    transformer = FluxTransformer2DModel.from_pretrained(
        golden_dir / "tiny-flux", subfolder="transformer", torch_dtype=torch.float32
    )
    return transformer.eval()


@pytest.fixture
def transformer(base_transformer):
    """A fresh copy without LoRA (tests attach adapters to it)."""
    return copy.deepcopy(base_transformer)


def _load_by_copy(transformer, lora_file):
    """add_condition_lora, then the official tensors copied in (Face-MoGLE's init_lora way)."""
    add_condition_lora(transformer)
    prefix = f"{LORA_KEY_PREFIX}."
    tensors = {key.removeprefix(prefix): value for key, value in load_file(lora_file).items()}
    result = set_peft_model_state_dict(transformer, tensors, adapter_name=CONDITION_ADAPTER_NAME)
    assert not result.unexpected_keys


@pytest.fixture(params=["load_condition_lora", "add_condition_lora+copy"])
def lora_transformer(request, transformer, golden_dir, lora_file):
    if request.param == "load_condition_lora":
        load_condition_lora(transformer, golden_dir)  # a directory holding pytorch_lora_weights.safetensors
    else:
        _load_by_copy(transformer, lora_file)
    return transformer


def _forward(transformer, golden, condition=True, **overrides):
    kwargs = dict(
        hidden_states=golden["x_t"],
        condition_tokens=golden["mogle_output"] if condition else None,
        encoder_hidden_states=golden["prompt_embeds"],
        pooled_projections=golden["pooled_prompt_embeds"],
        timestep=golden["t"],
        img_ids=golden["img_ids"],
        txt_ids=golden["text_ids"],
        guidance=golden["guidance"],
        condition_ids=golden["condition_ids"],
    )
    kwargs.update(overrides)
    with torch.no_grad():
        return condition_forward(transformer, **kwargs)


def _max_diff(a, b):
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------- golden parity


def test_pred_and_intermediates_match_golden(lora_transformer, golden):
    intermediates = {}
    pred = _forward(lora_transformer, golden, intermediates=intermediates)
    torch.testing.assert_close(pred, golden["pred"], atol=ATOL, rtol=RTOL)
    assert set(INTERMEDIATES) <= set(intermediates)
    for name in INTERMEDIATES:
        torch.testing.assert_close(intermediates[name], golden[f"ix.{name}"], atol=ATOL, rtol=RTOL, msg=name)
    assert lora_transformer.x_embedder.scaling[CONDITION_ADAPTER_NAME] == 1.0  # alpha / r of the official file


def test_lora_disabled_matches_golden_ablation(lora_transformer, golden):
    lora_transformer.disable_adapters()
    pred = _forward(lora_transformer, golden)
    torch.testing.assert_close(pred, golden["ablation.pred_lora_scale0"], atol=ATOL, rtol=RTOL)
    lora_transformer.enable_adapters()
    torch.testing.assert_close(_forward(lora_transformer, golden), golden["pred"], atol=ATOL, rtol=RTOL)


def test_no_condition_matches_golden_ablation_even_with_lora(lora_transformer, golden):
    # The image/text tokens never see LoRA, so without condition tokens the LoRA has no effect.
    pred = _forward(lora_transformer, golden, condition=False)
    torch.testing.assert_close(pred, golden["ablation.pred_no_condition"], atol=ATOL, rtol=RTOL)


def test_without_condition_equals_diffusers_forward(transformer, golden):
    kwargs = dict(
        hidden_states=golden["x_t"],
        encoder_hidden_states=golden["prompt_embeds"],
        pooled_projections=golden["pooled_prompt_embeds"],
        timestep=golden["t"],
        img_ids=golden["img_ids"],
        txt_ids=golden["text_ids"],
        guidance=golden["guidance"],
    )
    with torch.no_grad():
        expected = transformer(**kwargs, return_dict=False)[0]
        ours = condition_forward(transformer, condition_tokens=None, **kwargs)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, golden["ablation.pred_no_condition"], atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------- the golden catches defects


def test_golden_catches_lora_on_image_stream(lora_transformer, golden):
    pred = _forward(lora_transformer, golden, _lora_on_image_tokens=True)
    assert _max_diff(pred, golden["pred"]) > DEFECT_MARGIN


def test_golden_catches_noisy_condition_timestep(lora_transformer, golden):
    pred = _forward(lora_transformer, golden, _condition_timestep=golden["t"])
    assert _max_diff(pred, golden["pred"]) > DEFECT_MARGIN


def test_golden_catches_offset_condition_ids(lora_transformer, golden):
    offset_ids = golden["condition_ids"].clone()
    offset_ids[:, 1] += golden["img_ids"].shape[0]  # + N on the row axis
    pred = _forward(lora_transformer, golden, condition_ids=offset_ids)
    assert _max_diff(pred, golden["pred"]) > DEFECT_MARGIN


def test_condition_ids_default_to_image_ids(lora_transformer, golden):
    pred = _forward(lora_transformer, golden, condition_ids=None)
    torch.testing.assert_close(pred, golden["pred"], atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------ LoRA


def test_target_modules_are_those_of_the_official_file(base_transformer, lora_file):
    modules = {key.removeprefix(f"{LORA_KEY_PREFIX}.").rsplit(".lora_", 1)[0] for key in load_file(lora_file)}
    targets = condition_lora_target_modules(base_transformer)
    assert len(targets) == 19  # 1 + 6 joint (1 block) + 6 single x 2 blocks
    assert set(targets) == modules


def test_gaussian_init_matches_official_seeded_init(transformer, lora_file):
    torch.manual_seed(20)  # GOLDEN.md section 2: the golden lora_A come from this seed
    add_condition_lora(transformer, rank=4, alpha=4, init="gaussian")
    ours = condition_lora_state_dict(transformer)
    official = load_file(lora_file)
    assert set(ours) == set(official)
    for key, value in ours.items():
        if ".lora_A." in key:
            torch.testing.assert_close(value, official[key], atol=0, rtol=0)
        else:
            assert torch.count_nonzero(value) == 0  # lora_B starts at zero


def test_only_lora_is_trainable(transformer):
    add_condition_lora(transformer)
    trainable = [name for name, p in transformer.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 19
    assert all(f".{CONDITION_ADAPTER_NAME}." in name for name in trainable)


def test_state_dict_round_trips_official_file(golden_dir, lora_file, transformer):
    load_condition_lora(transformer, lora_file)
    ours = condition_lora_state_dict(transformer)
    official = load_file(lora_file)
    assert set(ours) == set(official)
    for key in official:
        torch.testing.assert_close(ours[key], official[key], atol=0, rtol=0)


def test_save_and_load_keep_alpha(base_transformer, golden, tmp_path):
    trained = copy.deepcopy(base_transformer)
    torch.manual_seed(0)
    add_condition_lora(trained, rank=2, alpha=8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    path = save_condition_lora(trained, tmp_path)
    assert path == tmp_path / LORA_WEIGHT_NAME

    loaded = copy.deepcopy(base_transformer)
    load_condition_lora(loaded, tmp_path)
    assert loaded.x_embedder.scaling[CONDITION_ADAPTER_NAME] == 4.0
    expected = _forward(trained, golden)
    torch.testing.assert_close(_forward(loaded, golden), expected, **ROUNDOFF)  # separate instances
    assert _max_diff(expected, golden["ablation.pred_lora_scale0"]) > DEFECT_MARGIN  # the LoRA does act


def test_load_into_existing_adapter_keeps_parameters(transformer, golden, lora_file):
    add_condition_lora(transformer)
    lora_a = transformer.x_embedder.lora_A[CONDITION_ADAPTER_NAME].weight
    load_condition_lora(transformer, lora_file)
    assert transformer.x_embedder.lora_A[CONDITION_ADAPTER_NAME].weight is lora_a  # optimizer stays valid
    torch.testing.assert_close(_forward(transformer, golden), golden["pred"], atol=ATOL, rtol=RTOL)


def test_load_into_adapter_with_other_alpha_is_refused(transformer, lora_file):
    add_condition_lora(transformer, rank=4, alpha=8)
    with pytest.raises(CheckpointError, match="alpha"):
        load_condition_lora(transformer, lora_file)


def _drop_one(tensors):
    tensors.pop(sorted(tensors)[0])


def _bad_shape(tensors):
    key = f"{LORA_KEY_PREFIX}.x_embedder.lora_A.weight"
    tensors[key] = torch.zeros(4, 63)


def _extra_key(tensors):
    tensors[f"{LORA_KEY_PREFIX}.context_embedder.lora_A.weight"] = torch.zeros(4, 32)


def _mixed_rank(tensors):
    tensors[f"{LORA_KEY_PREFIX}.x_embedder.lora_A.weight"] = torch.zeros(2, 64)
    tensors[f"{LORA_KEY_PREFIX}.x_embedder.lora_B.weight"] = torch.zeros(32, 2)


def _nan(tensors):
    tensors[f"{LORA_KEY_PREFIX}.x_embedder.lora_B.weight"][0, 0] = float("nan")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [(_drop_one, "missing"), (_bad_shape, "shape"), (_extra_key, "unexpected"), (_mixed_rank, "ranks"), (_nan, "NaN")],
)
def test_bad_lora_file_is_refused(transformer, lora_file, tmp_path, corrupt, message):
    tensors = load_file(lora_file)
    corrupt(tensors)
    bad = tmp_path / LORA_WEIGHT_NAME
    save_file(tensors, bad)
    with pytest.raises(CheckpointError, match=message):
        load_condition_lora(transformer, bad)
    assert not getattr(transformer, "peft_config", {})  # nothing half-loaded


def test_unreadable_or_missing_lora_file_is_refused(transformer, tmp_path):
    garbage = tmp_path / LORA_WEIGHT_NAME
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_condition_lora(transformer, garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_condition_lora(transformer, tmp_path / "absent")
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_condition_lora(transformer, pickled)


# ------------------------------------------------------------------------------- inputs, training


def test_condition_token_count_must_match_image(lora_transformer, golden):
    with pytest.raises(InputError, match="token count"):
        _forward(lora_transformer, golden, condition_tokens=golden["mogle_output"][:, :-1])
    with pytest.raises(InputError, match="condition_ids"):
        _forward(lora_transformer, golden, condition_ids=golden["condition_ids"][:-1])


def test_merged_lora_is_refused(lora_transformer, golden):
    lora_transformer.fuse_lora()
    with pytest.raises(InputError, match="merged"):
        _forward(lora_transformer, golden)


def test_gradient_checkpointing_gives_same_prediction_and_grads(transformer, golden, lora_file):
    load_condition_lora(transformer, lora_file)
    transformer.train()

    def prediction_and_grads():
        transformer.zero_grad()
        pred = condition_forward(
            transformer,
            golden["x_t"],
            golden["mogle_output"],
            golden["prompt_embeds"],
            golden["pooled_prompt_embeds"],
            golden["t"],
            golden["img_ids"],
            golden["text_ids"],
            golden["guidance"],
        )
        torch.nn.functional.mse_loss(pred, golden["target"]).backward()
        grads = {n: p.grad.clone() for n, p in transformer.named_parameters() if p.grad is not None}
        return pred.detach(), grads

    pred, grads = prediction_and_grads()
    transformer.enable_gradient_checkpointing()
    pred_ckpt, grads_ckpt = prediction_and_grads()

    torch.testing.assert_close(pred, golden["pred"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(pred_ckpt, pred, atol=0, rtol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-7, rtol=0, msg=name)
    # The condition tokens are dropped after the last single block, so its MLP/proj_out LoRA gets no
    # gradient (as in the official code); every other LoRA tensor does, the frozen base none.
    last = f"single_transformer_blocks.{len(transformer.single_transformer_blocks) - 1}"
    dead = {f"{last}.{m}.lora_{ab}.{CONDITION_ADAPTER_NAME}.weight" for m in ("proj_mlp", "proj_out") for ab in "AB"}
    trainable = {n for n, p in transformer.named_parameters() if p.requires_grad}
    assert set(grads) == trainable - dead


def test_computes_in_transformer_dtype(base_transformer, golden, lora_file):
    transformer = copy.deepcopy(base_transformer).to(torch.bfloat16)
    load_condition_lora(transformer, lora_file)
    pred = _forward(transformer, golden)  # float32 inputs
    assert pred.dtype == torch.bfloat16
    torch.testing.assert_close(pred.float(), golden["pred"], atol=0.15, rtol=0)  # bf16 rounding only
