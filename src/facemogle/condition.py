"""The condition stream on diffusers' ``FluxTransformer2DModel`` (OminiControl style) and its LoRA.

This is the one place where facemogle's transformer forward differs from diffusers'
``FluxTransformer2DModel.forward``. Every module and weight is diffusers' own (``x_embedder``,
``time_text_embed``, ``pos_embed``, the blocks' norms, attention projections and feed-forwards,
``norm_out``, ``proj_out``); only the way the tokens are routed through them differs. To route
them, the joint and single block forwards are written out here (``_joint_block``,
``_single_block``, same math and op order as diffusers 0.42), calling the blocks' modules:

1. **A third token group.** Next to the text tokens (L) and the noisy image tokens (N), the MoGLE
   condition tokens (N, same grid) go through ``x_embedder`` and every block, using the *image*
   stream's modules (joint blocks: ``norm1``, ``attn.to_q/k/v`` + ``norm_q/k``, ``attn.to_out.0``,
   ``norm2``, ``ff``; single blocks: the same modules as [text; image]), never the ``*_context``
   ones. After the last single block they are dropped: ``norm_out``/``proj_out`` see image tokens only.
2. **Their own modulation at t = 0.** The condition tokens are clean, so every adaLN modulation of
   the condition stream uses ``cond_temb = time_text_embed(0, 1000 * guidance, pooled)`` instead
   of ``temb = time_text_embed(1000 * t, 1000 * guidance, pooled)``.
3. **Same rotary positions as the image.** RoPE ids of the condition tokens = ``condition_ids``,
   which the caller sets to the image ids (no offset: the condition is pixel-aligned).
4. **One joint attention over [text, image, condition]** in every block (one SDPA, no mask).
5. **LoRA on the condition stream only.** The LoRA layers sit on the shared Linear modules
   (``CONDITION_LORA_TARGETS``). Text and image tokens are projected with the frozen base layer
   (``lora_layer.get_base_layer()(x)``); condition tokens with the LoRA layer itself
   (``lora_layer(x)`` = base + active adapters). Nothing is toggled, so the forward has no mutable
   state; ``transformer.disable_adapters()`` turns the LoRA off for the condition stream too.

With ``condition_tokens=None`` this equals diffusers' forward of the base model (bit-exact in
float32 on CPU). Do not call ``transformer(...)`` itself on a transformer with the condition LoRA:
diffusers would apply the LoRA to the image tokens. Not supported here: ControlNet residuals,
IP-Adapter, ``joint_attention_kwargs``. As in the official code, the last single block's condition
outputs are discarded, so its ``proj_mlp``/``proj_out`` LoRA never affects the prediction (no gradient).
Reference numbers: ``../shared/golden/GOLDEN.md``, Golden B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import safetensors
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.loaders import FluxLoraLoaderMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from facemogle.errors import CheckpointError, InputError
from facemogle.files import LORA_WEIGHT_NAME
from facemogle.forward_cache import ForwardCache

CONDITION_ADAPTER_NAME = "condition"
"""peft adapter name of the condition-stream LoRA."""

LORA_KEY_PREFIX = "transformer"
"""Key prefix of the transformer's LoRA tensors in a diffusers LoRA file."""

CONDITION_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "": ("x_embedder",),
    "transformer_blocks": ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2"),
    "single_transformer_blocks": ("norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v"),
}
"""Modules that carry the condition LoRA, per block list ("" = top level), as in Face-MoGLE's config.

Nothing on the text path (``norm1_context``, ``add_*_proj``, ``to_add_out``, ``ff_context``,
``context_embedder``), not ``ff.net.0.proj``, not the final ``norm_out``/``proj_out``."""


# ----------------------------------------------------------------------------------------- LoRA


def condition_lora_target_modules(transformer: FluxTransformer2DModel) -> list[str]:
    """Full module names (e.g. ``single_transformer_blocks.1.attn.to_q``) of ``CONDITION_LORA_TARGETS``.

    Full names keep peft's suffix matching from also hitting the top-level ``proj_out``.
    """
    names = []
    for block_list, suffixes in CONDITION_LORA_TARGETS.items():
        if not block_list:
            names.extend(suffixes)
            continue
        for index in range(len(getattr(transformer, block_list))):
            names.extend(f"{block_list}.{index}.{suffix}" for suffix in suffixes)
    return names


def add_condition_lora(
    transformer: FluxTransformer2DModel, rank: int = 4, alpha: float = 4, init: bool | str = "gaussian"
) -> None:
    """Attach a fresh condition-stream LoRA (adapter ``CONDITION_ADAPTER_NAME``) to ``transformer``.

    Args:
        rank: LoRA rank r.
        alpha: LoRA alpha (scaling = alpha / r).
        init: peft ``init_lora_weights`` ("gaussian": lora_A ~ N(0, 1/r^2) from the global torch RNG,
            lora_B = 0, as Face-MoGLE; True: peft's default).

    peft freezes every non-LoRA parameter of the transformer.
    """
    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}")
    if CONDITION_ADAPTER_NAME in getattr(transformer, "peft_config", {}):
        raise InputError(f"the transformer already has a LoRA adapter named {CONDITION_ADAPTER_NAME!r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights=init,
        target_modules=condition_lora_target_modules(transformer),
    )
    transformer.add_adapter(config, adapter_name=CONDITION_ADAPTER_NAME)


def condition_lora_state_dict(transformer: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    """The condition LoRA tensors with the official keys ``transformer.<module>.lora_{A,B}.weight``.

    ``safetensors.torch.save_file`` of this dict is a file that ``load_condition_lora`` and
    diffusers' ``FluxPipeline.load_lora_weights`` read (alpha is not stored: it is read back as
    alpha = r; use ``save_condition_lora`` to keep another alpha).
    """
    if CONDITION_ADAPTER_NAME not in getattr(transformer, "peft_config", {}):
        raise InputError(f"the transformer has no LoRA adapter named {CONDITION_ADAPTER_NAME!r}")
    state_dict = get_peft_model_state_dict(transformer, adapter_name=CONDITION_ADAPTER_NAME)
    return {f"{LORA_KEY_PREFIX}.{key}": value.detach().clone() for key, value in state_dict.items()}


def save_condition_lora(transformer: FluxTransformer2DModel, directory: str | Path) -> Path:
    """Write ``<directory>/pytorch_lora_weights.safetensors`` with diffusers' ``FluxPipeline.save_lora_weights``
    (adapter config, alpha included, in the file's diffusers metadata). Returns the file path."""
    prefix = f"{LORA_KEY_PREFIX}."
    layers = {key.removeprefix(prefix): value for key, value in condition_lora_state_dict(transformer).items()}
    metadata = transformer.peft_config[CONDITION_ADAPTER_NAME].to_dict()
    FluxLoraLoaderMixin.save_lora_weights(  # = FluxPipeline.save_lora_weights
        directory,
        transformer_lora_layers=layers,
        weight_name=LORA_WEIGHT_NAME,
        transformer_lora_adapter_metadata=metadata,
    )
    return Path(directory) / LORA_WEIGHT_NAME


def load_condition_lora(transformer: FluxTransformer2DModel, path_or_dir: str | Path) -> None:
    """Load a condition LoRA file (official ``pytorch_lora_weights.safetensors`` or our own) into
    ``transformer`` as adapter ``CONDITION_ADAPTER_NAME``. If that adapter exists (e.g. made by
    ``add_condition_lora`` before resuming training), its tensors are overwritten in place (same
    parameters, so an optimizer built on them stays valid); rank and alpha must then match.

    The file is read by diffusers' Flux LoRA loader (safetensors only, never pickle) and must hold
    exactly one lora_A/lora_B pair per module of ``condition_lora_target_modules``, with matching
    shapes and one rank. Without alpha metadata, alpha = r (scaling 1.0, as the official file).

    Raises:
        CheckpointError: missing/unreadable file, wrong keys, shapes, rank, dtype or non-finite values.
    """
    path = Path(path_or_dir)
    file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"LoRA file not found: {file}")
    if file.suffix != ".safetensors":
        raise CheckpointError(f"LoRA file must be a .safetensors file, got {file}")
    try:
        state_dict, metadata = FluxLoraLoaderMixin.lora_state_dict(
            str(file), use_safetensors=True, return_lora_metadata=True
        )
    except (OSError, ValueError, safetensors.SafetensorError) as error:
        raise CheckpointError(f"cannot read LoRA file {file}: {error}") from error
    rank = _check_condition_lora(transformer, state_dict, file)

    alpha = (metadata or {}).get(f"{LORA_KEY_PREFIX}.lora_alpha", rank)  # no metadata: alpha = r
    existing = getattr(transformer, "peft_config", {}).get(CONDITION_ADAPTER_NAME)
    if existing is not None and (existing.r, existing.lora_alpha) != (rank, alpha):
        raise CheckpointError(
            f"LoRA file {file} has rank {rank}, alpha {alpha} but the transformer's condition LoRA has "
            f"rank {existing.r}, alpha {existing.lora_alpha}"
        )
    try:
        transformer.load_lora_adapter(
            state_dict,
            prefix=LORA_KEY_PREFIX,
            adapter_name=CONDITION_ADAPTER_NAME,
            metadata=metadata,
            hotswap=existing is not None,
        )
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"LoRA file {file} does not fit the transformer: {error}") from error


def _check_condition_lora(transformer: FluxTransformer2DModel, state_dict: dict, file: Path) -> int:
    """Validate a diffusers-format LoRA state dict against the transformer; return its rank."""
    modules = dict(transformer.named_modules())
    expected = {}
    for name in condition_lora_target_modules(transformer):
        base = modules[name]
        if isinstance(base, BaseTunerLayer):
            base = base.get_base_layer()
        expected[f"{LORA_KEY_PREFIX}.{name}.lora_A.weight"] = ("in", base.in_features)
        expected[f"{LORA_KEY_PREFIX}.{name}.lora_B.weight"] = ("out", base.out_features)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"LoRA file {file} does not match the condition LoRA of this transformer: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    ranks = set()
    for key, (side, features) in expected.items():
        tensor = state_dict[key]
        if not tensor.is_floating_point() or tensor.ndim != 2:
            raise CheckpointError(
                f"LoRA tensor {key} in {file} must be a 2-D float tensor, got {tensor.dtype} {tuple(tensor.shape)}"
            )
        rank, width = (tensor.shape[0], tensor.shape[1]) if side == "in" else (tensor.shape[1], tensor.shape[0])
        if width != features:
            raise CheckpointError(
                f"LoRA tensor {key} in {file} has shape {tuple(tensor.shape)}: expected {features} {side}put features"
            )
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"LoRA tensor {key} in {file} contains NaN or inf")
        ranks.add(rank)
    if len(ranks) != 1:
        raise CheckpointError(f"LoRA file {file} mixes ranks {sorted(ranks)}")
    return ranks.pop()


# -------------------------------------------------------------------------------------- forward


def condition_forward(
    transformer: FluxTransformer2DModel,
    hidden_states: torch.Tensor,
    condition_tokens: torch.Tensor | None,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    timestep: torch.Tensor,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    guidance: torch.Tensor | None = None,
    condition_ids: torch.Tensor | None = None,
    intermediates: dict[str, torch.Tensor] | None = None,
    *,
    _lora_on_image_tokens: bool = False,
    _condition_timestep: torch.Tensor | None = None,
    cache: ForwardCache | None = None,
) -> torch.Tensor:
    """Flux velocity prediction for the image tokens, with the MoGLE condition tokens attended to.

    Args:
        transformer: diffusers ``FluxTransformer2DModel`` (optionally with ``add_condition_lora``).
        hidden_states: (B, N, C) packed noisy latents, C = ``transformer.config.in_channels``.
        condition_tokens: (B, N, C) condition tokens (MoGLE output), or None for the plain model.
        encoder_hidden_states: (B, L, D) T5 prompt embeddings. pooled_projections: (B, P) CLIP pooled.
        timestep: (B,) in [0, 1] (multiplied by 1000 inside, as diffusers does).
        img_ids: (N, 3) image rotary ids. txt_ids: (L, 3) text rotary ids.
        guidance: (B,) guidance scale (x 1000 inside), required when the model has a guidance embedding.
        condition_ids: (N, 3) rotary ids of the condition tokens; default ``img_ids``.
        intermediates: if a dict is given, it is filled with detached intermediate tensors named as
            Golden B's ``ix.*`` (without the prefix), e.g. ``temb``, ``block0.hidden_states``.
        cache: a :class:`facemogle.forward_cache.ForwardCache` kept over the steps of one call (step
            invariants computed once; its policy may reuse condition keys/values or skip blocks).
            None: a fresh one, everything computed (training, single predictions).
        _lora_on_image_tokens, _condition_timestep: defect variants for tests only (LoRA also on the
            image/text stream; condition modulated at this timestep instead of 0).

    Returns:
        (B, N, C_out) prediction (C_out = ``transformer.out_channels``).
    """
    _check_inputs(transformer, hidden_states, condition_tokens, encoder_hidden_states, img_ids, txt_ids, guidance)
    dtype = transformer.dtype
    capture = _Capture(intermediates)
    if condition_ids is None:
        condition_ids = img_ids
    if condition_tokens is None:  # an empty condition group reduces every step below to diffusers' forward
        condition_tokens = hidden_states[:, :0]
        condition_ids = img_ids[:0]
    elif condition_ids.shape != img_ids.shape:
        raise InputError(
            f"condition_ids must have the shape of img_ids {tuple(img_ids.shape)}, got {tuple(condition_ids.shape)}"
        )
    image_lora = _lora_on_image_tokens
    cache = ForwardCache() if cache is None else cache
    batch, image_len = hidden_states.shape[:2]
    reuse = condition_tokens.shape[1] > 0 and cache.reuse_condition(batch)
    refresh_first = reuse and cache.policy.refresh_first_block

    image = _linear(transformer.x_embedder, hidden_states.to(dtype), image_lora)  # (B, N, inner)
    image_in = image
    condition = None
    if not reuse or refresh_first:
        condition = _linear(transformer.x_embedder, condition_tokens.to(dtype), True)  # (B, N, inner)
        capture("x_embedder_condition_lora_on", condition)
    capture("x_embedder_hidden_lora_off", image)

    key = tuple(None if t is None else (t.data_ptr(), tuple(t.shape), t.dtype)
                for t in (encoder_hidden_states, pooled_projections, guidance, img_ids, txt_ids, condition_ids,
                          _condition_timestep))
    timestep = timestep.to(dtype) * 1000
    pooled_projections = pooled_projections.to(dtype)
    if guidance is not None:
        guidance = guidance.to(dtype) * 1000
    temb = _time_embedding(transformer, timestep, guidance, pooled_projections)  # (B, inner)

    def step_invariants() -> dict:
        condition_timestep = torch.zeros_like(timestep)  # the condition is clean: t = 0
        if _condition_timestep is not None:
            condition_timestep = _condition_timestep.to(dtype) * 1000
        return {"cond_temb": _time_embedding(transformer, condition_timestep, guidance, pooled_projections),
                "text": transformer.context_embedder(encoder_hidden_states.to(dtype)),  # (B, L, inner)
                "rotary_emb": transformer.pos_embed(torch.cat([txt_ids, img_ids, condition_ids]))}  # 2 x (L+N+N, hd)

    invariants = cache.step_invariants(key, step_invariants)
    cond_temb, text, rotary_emb = invariants["cond_temb"], invariants["text"], invariants["rotary_emb"]
    capture("temb", temb)
    capture("cond_temb", cond_temb)
    capture("context_embedder_out", text)

    text_len = text.shape[1]
    capture("image_rotary_emb_cos", rotary_emb[0][: text_len + image_len])
    capture("image_rotary_emb_sin", rotary_emb[1][: text_len + image_len])
    capture("cond_rotary_emb_cos", rotary_emb[0][text_len + image_len :])
    capture("cond_rotary_emb_sin", rotary_emb[1][text_len + image_len :])
    rotary = _Rotary(rotary_emb, text_len + image_len)

    kept = cache.condition_kv if reuse else None
    stored: list | None = [] if condition_tokens.shape[1] > 0 and cache.policy.condition_every > 1 and not reuse else None
    head_image = None
    for index, block in enumerate(transformer.transformer_blocks):
        if kept is not None:
            block_kv = _first_block_condition_kv(block, condition, cond_temb, rotary) if refresh_first and index == 0 \
                else kept[index]
            text, image = _joint_block_on_kept_condition(block, text, image, temb, rotary, block_kv, image_lora)
        else:
            text, image, condition = _checkpointed(transformer, _joint_block)(
                block, text, image, condition, temb, cond_temb, rotary, image_lora, stored
            )
            capture(f"block{index}.condition_latents", condition)
        capture(f"block{index}.encoder_hidden_states", text)
        capture(f"block{index}.hidden_states", image)
        if index == 0 and cache.policy.first_block_threshold > 0:
            head_image, head_residual = image, image - image_in
            skipped = cache.rows_to_skip(head_residual)  # (B,) bool or None
            if skipped is not None and bool(skipped.all()):
                cache.counts["blocks_skipped"] += 1
                return transformer.proj_out(transformer.norm_out(head_image + cache.tail_residual, temb))

    text_image = torch.cat([text, image], dim=1)  # (B, L+N, inner)
    offset = len(transformer.transformer_blocks)
    for index, block in enumerate(transformer.single_transformer_blocks):
        if kept is not None:
            text_image = _single_block_on_kept_condition(block, text_image, temb, rotary, kept[offset + index], image_lora)
        else:
            text_image, condition = _checkpointed(transformer, _single_block)(
                block, text_image, condition, temb, cond_temb, rotary, image_lora, stored
            )
            capture(f"single{index}.condition_latents", condition)
        capture(f"single{index}.hidden_states", text_image)

    if kept is not None:
        cache.since_condition += 1
        cache.counts["condition_reused"] += 1
    else:
        cache.counts["full"] += 1
        if stored is not None:
            cache.condition_kv, cache.since_condition = stored, 0
    image = text_image[:, text_len:]
    if head_image is not None:  # step cache: what the blocks after the first added
        cache.keep_residuals(head_residual, image - head_image, skipped)
        if skipped is not None and bool(skipped.any()):  # those rows take their kept residual
            image = torch.where(skipped[:, None, None], head_image + cache.tail_residual, image)
    image = transformer.norm_out(image, temb)  # condition tokens are dropped here
    capture("norm_out", image)
    return transformer.proj_out(image)


# ------------------------------------------------------------------------------------- internals


class _Capture:
    """Stores detached copies of named tensors into an optional dict (no-op without one)."""

    def __init__(self, store: dict[str, torch.Tensor] | None):
        self.store = store

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if self.store is not None:
            self.store[name] = tensor.detach().clone()


def _check_inputs(transformer, hidden_states, condition_tokens, encoder_hidden_states, img_ids, txt_ids, guidance):
    in_channels = transformer.config.in_channels
    if hidden_states.ndim != 3 or hidden_states.shape[-1] != in_channels:
        raise InputError(f"hidden_states must be (B, N, {in_channels}), got {tuple(hidden_states.shape)}")
    if condition_tokens is not None and condition_tokens.shape != hidden_states.shape:
        raise InputError(
            f"condition tokens {tuple(condition_tokens.shape)} must have the shape of the image tokens "
            f"{tuple(hidden_states.shape)} (same batch, same token count N: condition and image share one grid)"
        )
    if img_ids.shape != (hidden_states.shape[1], 3):
        raise InputError(f"img_ids must be ({hidden_states.shape[1]}, 3), got {tuple(img_ids.shape)}")
    if encoder_hidden_states.ndim != 3 or txt_ids.shape != (encoder_hidden_states.shape[1], 3):
        raise InputError(
            f"txt_ids {tuple(txt_ids.shape)} must be (L, 3) for text embeddings (B, L, D) "
            f"{tuple(encoder_hidden_states.shape)}"
        )
    if transformer.config.guidance_embeds and guidance is None:
        raise InputError("this transformer has a guidance embedding: pass guidance (B,)")


def _linear(layer: torch.nn.Module, x: torch.Tensor, with_lora: bool) -> torch.Tensor:
    """``layer(x)`` with its LoRA adapters (``with_lora``) or with the frozen base Linear only."""
    if not isinstance(layer, BaseTunerLayer):
        return layer(x)
    if layer.merged:
        raise InputError("the LoRA is merged into the base weights; unmerge it (it must not act on image tokens)")
    return layer(x) if with_lora else layer.get_base_layer()(x)


def _checkpointed(transformer: FluxTransformer2DModel, block_fn: Callable) -> Callable:
    """``block_fn``, under gradient checkpointing when the transformer has it on and grads are enabled."""
    if torch.is_grad_enabled() and transformer.gradient_checkpointing:
        return lambda *args: transformer._gradient_checkpointing_func(block_fn, *args)
    return block_fn


def _ada_norm(norm: torch.nn.Module, x: torch.Tensor, emb: torch.Tensor, with_lora: bool):
    """diffusers' AdaLayerNormZero(Single) math with LoRA choice on ``norm.linear``.

    Returns the modulated ``norm(x) * (1 + scale) + shift`` and the remaining chunks (gates, mlp shift/scale).
    """
    modulation = _linear(norm.linear, norm.silu(emb), with_lora)  # (B, k * inner)
    shift, scale, *rest = modulation.chunk(modulation.shape[-1] // x.shape[-1], dim=1)
    return norm.norm(x) * (1 + scale[:, None]) + shift[:, None], rest


def _image_side_qkv(attn: torch.nn.Module, x: torch.Tensor, with_lora: bool):
    """to_q/k/v + norm_q/k (the image stream's projections), each (B, S, heads, head_dim)."""
    query, key, value = (
        _linear(proj, x, with_lora).unflatten(-1, (-1, attn.head_dim)) for proj in (attn.to_q, attn.to_k, attn.to_v)
    )
    return attn.norm_q(query), attn.norm_k(key), value


def _text_side_qkv(attn: torch.nn.Module, x: torch.Tensor):
    """add_q/k/v_proj + norm_added_q/k (the text stream's projections, never LoRA)."""
    query, key, value = (
        _linear(proj, x, False).unflatten(-1, (-1, attn.head_dim))
        for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    )
    return attn.norm_added_q(query), attn.norm_added_k(key), value


class _Rotary:
    """The rotary embeddings (cos, sin) of [text, image, condition] tokens, and their slices."""

    def __init__(self, rotary_emb: tuple[torch.Tensor, torch.Tensor], text_image_len: int):
        self.all = rotary_emb
        self.text_image = tuple(part[:text_image_len] for part in rotary_emb)
        self.condition = tuple(part[text_image_len:] for part in rotary_emb)


def _joint_attention(attn: torch.nn.Module, groups: list[tuple], rotary_emb, kept_kv=None,
                     store: list | None = None) -> list[torch.Tensor]:
    """One SDPA over the concatenated token groups [(q, k, v), ...] (RoPE over all); outputs split per group.

    ``kept_kv``: (keys, values) of condition tokens (RoPE applied) appended to the keys and values
    (they ask no queries). ``store``: a list that gets the last group's (keys, values) after RoPE.
    """
    query, key, value = (torch.cat(parts, dim=1) for parts in zip(*groups))  # (B, S, heads, head_dim)
    query = apply_rotary_emb(query, rotary_emb, sequence_dim=1)
    key = apply_rotary_emb(key, rotary_emb, sequence_dim=1)
    if store is not None:
        last = groups[-1][0].shape[1]
        store.append((key[:, -last:], value[:, -last:]))
    if kept_kv is not None:
        key, value = torch.cat([key, kept_kv[0]], dim=1), torch.cat([value, kept_kv[1]], dim=1)
    out = dispatch_attention_fn(query, key, value, backend=getattr(attn.processor, "_attention_backend", None))
    out = out.flatten(2, 3).to(query.dtype)  # (B, S, inner)
    return list(out.split([group[0].shape[1] for group in groups], dim=1))


def _feed_forward(ff: torch.nn.Module, x: torch.Tensor, with_lora: bool) -> torch.Tensor:
    """diffusers FeedForward (gelu-tanh) with LoRA choice on both Linear layers."""
    gelu, dropout, proj_out = ff.net[0], ff.net[1], ff.net[2]
    hidden = F.gelu(_linear(gelu.proj, x, with_lora), approximate=gelu.approximate)
    return _linear(proj_out, dropout(hidden), with_lora)


def _joint_block(
    block: FluxTransformerBlock, text, image, condition, temb, cond_temb, rotary: _Rotary, image_lora: bool,
    store: list | None = None,
):
    """FluxTransformerBlock over text (B, L, C), image (B, N, C) and condition (B, N, C) tokens.

    The condition tokens use the image modules (with LoRA) and the ``cond_temb`` modulation.
    ``store``: a list that gets the condition tokens' (keys, values) (condition cache).
    """
    attn = block.attn
    text_normed, text_modulation = _ada_norm(block.norm1_context, text, temb, False)
    image_normed, image_modulation = _ada_norm(block.norm1, image, temb, image_lora)
    condition_normed, condition_modulation = _ada_norm(block.norm1, condition, cond_temb, True)

    text_attn, image_attn, condition_attn = _joint_attention(
        attn,
        [
            _text_side_qkv(attn, text_normed),
            _image_side_qkv(attn, image_normed, image_lora),
            _image_side_qkv(attn, condition_normed, True),
        ],
        rotary.all,
        store=store,
    )
    text_attn = _linear(attn.to_add_out, text_attn, False)
    image_attn = attn.to_out[1](_linear(attn.to_out[0], image_attn, image_lora))
    condition_attn = attn.to_out[1](_linear(attn.to_out[0], condition_attn, True))

    text = _gated_residuals(text, text_attn, text_modulation, block.norm2_context, block.ff_context, False)
    image = _gated_residuals(image, image_attn, image_modulation, block.norm2, block.ff, image_lora)
    condition = _gated_residuals(condition, condition_attn, condition_modulation, block.norm2, block.ff, True)
    return text, image, condition


def _gated_residuals(x, attn_out, modulation, norm2, ff, with_lora: bool) -> torch.Tensor:
    """Joint-block tail: gated attention residual, then the modulated, gated feed-forward residual."""
    gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
    x = x + gate_msa[:, None] * attn_out
    x_normed = norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return x + gate_mlp[:, None] * _feed_forward(ff, x_normed, with_lora)


def _single_block(
    block: FluxSingleTransformerBlock, text_image, condition, temb, cond_temb, rotary: _Rotary, image_lora: bool,
    store: list | None = None,
):
    """FluxSingleTransformerBlock over [text; image] (B, L+N, C) and condition (B, N, C) tokens.

    Both groups use the same modules; the condition with LoRA and the ``cond_temb`` modulation.
    ``store``: a list that gets the condition tokens' (keys, values) (condition cache).
    """
    attn = block.attn
    text_image_normed, (text_image_gate,) = _ada_norm(block.norm, text_image, temb, image_lora)
    condition_normed, (condition_gate,) = _ada_norm(block.norm, condition, cond_temb, True)
    text_image_attn, condition_attn = _joint_attention(
        attn,
        [_image_side_qkv(attn, text_image_normed, image_lora), _image_side_qkv(attn, condition_normed, True)],
        rotary.all,
        store=store,
    )
    text_image_out = _single_block_output(block, text_image_normed, text_image_attn, image_lora)
    condition_out = _single_block_output(block, condition_normed, condition_attn, True)
    text_image = text_image + text_image_gate[:, None] * text_image_out
    condition = condition + condition_gate[:, None] * condition_out
    return text_image, condition


def _single_block_output(block: FluxSingleTransformerBlock, x_normed, attn_out, with_lora: bool) -> torch.Tensor:
    """``proj_out(cat(attention, gelu_tanh(proj_mlp(x_normed))))`` of a single block."""
    mlp = block.act_mlp(_linear(block.proj_mlp, x_normed, with_lora))
    return _linear(block.proj_out, torch.cat([attn_out, mlp], dim=2), with_lora)


# ------------------------------------------------------------------------- condition cache steps


def _joint_block_on_kept_condition(block: FluxTransformerBlock, text, image, temb, rotary: _Rotary, kept_kv,
                                   image_lora: bool):
    """:func:`_joint_block` for text and image tokens only, attending to kept condition keys/values."""
    attn = block.attn
    text_normed, text_modulation = _ada_norm(block.norm1_context, text, temb, False)
    image_normed, image_modulation = _ada_norm(block.norm1, image, temb, image_lora)
    text_attn, image_attn = _joint_attention(
        attn, [_text_side_qkv(attn, text_normed), _image_side_qkv(attn, image_normed, image_lora)],
        rotary.text_image, kept_kv=kept_kv,
    )
    text_attn = _linear(attn.to_add_out, text_attn, False)
    image_attn = attn.to_out[1](_linear(attn.to_out[0], image_attn, image_lora))
    text = _gated_residuals(text, text_attn, text_modulation, block.norm2_context, block.ff_context, False)
    image = _gated_residuals(image, image_attn, image_modulation, block.norm2, block.ff, image_lora)
    return text, image


def _single_block_on_kept_condition(block: FluxSingleTransformerBlock, text_image, temb, rotary: _Rotary, kept_kv,
                                    image_lora: bool):
    """:func:`_single_block` for [text; image] tokens only, attending to kept condition keys/values."""
    attn = block.attn
    normed, (gate,) = _ada_norm(block.norm, text_image, temb, image_lora)
    (attn_out,) = _joint_attention(attn, [_image_side_qkv(attn, normed, image_lora)], rotary.text_image,
                                   kept_kv=kept_kv)
    return text_image + gate[:, None] * _single_block_output(block, normed, attn_out, image_lora)


def _first_block_condition_kv(block: FluxTransformerBlock, condition, cond_temb, rotary: _Rotary):
    """The first joint block's condition keys/values (RoPE applied) from fresh condition tokens."""
    normed, _ = _ada_norm(block.norm1, condition, cond_temb, True)
    _, key, value = _image_side_qkv(block.attn, normed, True)
    return apply_rotary_emb(key, rotary.condition, sequence_dim=1), value


def _time_embedding(transformer, timestep, guidance, pooled_projections) -> torch.Tensor:
    """``time_text_embed`` at ``timestep`` (x 1000), with ``guidance`` (x 1000) when the model has it. (B, inner)"""
    if guidance is None:
        return transformer.time_text_embed(timestep, pooled_projections)
    return transformer.time_text_embed(timestep, guidance, pooled_projections)
