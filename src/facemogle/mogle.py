"""MoGLE: the mixture of global and local experts (METHOD.md section 3).

MoGLE turns the ``E = NUM_CONDITIONS`` condition-token maps of one face mask (index 0: the
global colour mask, index ``1 + c``: the binary mask of class ``c``) into one map of condition
tokens for the transformer's condition stream::

    e_i   = expert_i(condition_tokens[:, i])                      # (B, N, D), one MLP per mask
    w     = softmax(gate(global tokens + noise_proj(x_t) + MLP(sincos(t))))   # (B, N, E)
    out   = sum_i w[..., i] * e_i                                  # (B, N, D)

Weights and state-dict keys match the official ``global_local_mask_moe.pt``; see
:meth:`MoGLE.from_official_checkpoint`.

Ablation switches (config of :class:`MoGLE`; numbers: paper, mask + text, FID / KID / Mask / Text,
full model 22.24 / 10.87 / 2.44 / 26.32):

==========================  ==================================================  ======================
switch                      what it does                                         paper
==========================  ==================================================  ======================
``use_experts=False``       identity experts: the gate mixes the raw             with ``gating_mode=
                            condition tokens (official ``has_expert=False``)     "none"``: "no experts
                                                                                 and no gating" 33.25 /
                                                                                 23.07 / 2.49 / 26.71
``gating_mode="none"``      plain, unnormalised sum of the experts' outputs      (see above)
                            (official ``has_gating=False``)
``gating_mode="static"``    the gate reads only the global-mask tokens, not t    "static weights" 25.74
                            and x_t: weights vary per token but not per step     / 13.12 / 2.37 / 26.53
``gating_mode="scalar"``    dynamic gate, weights averaged over the tokens:      "scalar gating" 43.48 /
                            one weight per expert and sample (official           30.58 / 4.74 / 26.72
                            ``weight_is_scale=True``)
``active_experts="global"`` only the global mask and its expert (one expert:     "only global" 30.36 /
                            nothing to gate, so ``gating_mode`` must be "none")  18.16 / 2.47 / 26.30
``active_experts="local"``  only the local masks and their experts; the gate     "only local" 33.62 /
                            sees x_t and t but not the (unused) global mask      20.45 / 4.87 / 27.07
==========================  ==================================================  ======================

The timestep is t in (0, 1), the value of training (x_t = (1 - t) x_0 + t noise). The official
``generate()`` passes the scheduler's 0..1000 value instead (GOLDEN.md "surprises" 1); the
sinusoidal embedding does not rescale, so that scale gives different weights. Callers must divide
a scheduler timestep by ``num_train_timesteps`` before calling MoGLE.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from facemogle.errors import CheckpointError, InputError
from facemogle.files import read_state_dict_file
from facemogle.labels import NUM_CONDITIONS

GATING_MODES: tuple[str, ...] = ("dynamic", "none", "static", "scalar")
ACTIVE_EXPERTS: tuple[str, ...] = ("all", "global", "local")
GLOBAL_INDEX = 0  # index of the global mask among the condition images


class Expert(nn.Module):
    """Token-wise MLP: Linear(token_dim, hidden_dim) -> ReLU -> Linear(hidden_dim, token_dim)."""

    def __init__(self, token_dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(token_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, token_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (..., D) -> (..., D)."""
        return self.net(tokens)


class DynamicGate(nn.Module):
    """Per-token softmax weights over the experts.

    ``weights = softmax(gate(mask_tokens + noise_proj(noisy_tokens) + time_emb))`` with
    ``time_emb = timestep_embedding(time_proj(t))`` broadcast over tokens. Each of the three
    terms can be left out: ``reads_time_and_noise=False`` is the static gate (no
    ``timestep_embedding`` / ``noise_proj`` weights), ``reads_mask=False`` the only-local gate.

    Args:
        token_dim: D, size of a condition / latent token.
        hidden_dim: width of the gate; the mask tokens are added to it, so it must equal D.
        num_outputs: number of experts to weigh.
    """

    def __init__(
        self,
        token_dim: int,
        hidden_dim: int,
        num_outputs: int,
        reads_time_and_noise: bool = True,
        reads_mask: bool = True,
    ):
        super().__init__()
        if hidden_dim != token_dim:
            raise InputError(
                f"gate_hidden_dim ({hidden_dim}) must equal token_dim ({token_dim}): the gate adds "
                "the mask tokens to the projected noisy tokens and time embedding"
            )
        self.reads_time_and_noise = reads_time_and_noise
        self.reads_mask = reads_mask
        if reads_time_and_noise:
            # Sinusoidal features, cos first, no frequency shift; t is NOT rescaled.
            self.time_proj = Timesteps(token_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.timestep_embedding = TimestepEmbedding(token_dim, hidden_dim)  # linear_1, SiLU, linear_2
            self.noise_proj = nn.Linear(token_dim, hidden_dim)
        self.gate = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_outputs),
        )

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.gate[0].weight.dtype

    def time_features(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``timestep`` (B,) -> (sinusoidal features (B, D), time embedding (B, D)).

        The sin/cos are computed in float32 and then cast to the module's dtype.
        """
        time_proj = self.time_proj(timestep.reshape(-1)).to(self.weight_dtype)  # (B, D)
        return time_proj, self.timestep_embedding(time_proj)  # (B, D), (B, D)

    def forward(
        self,
        mask_tokens: torch.Tensor | None,
        noisy_tokens: torch.Tensor | None,
        timestep: torch.Tensor | None,
    ) -> torch.Tensor:
        """Gate weights.

        Args:
            mask_tokens: (B, N, D) global-mask tokens (ignored when ``reads_mask`` is False).
            noisy_tokens: (B, N, D) noisy latent tokens x_t (ignored by the static gate).
            timestep: (B,) or (1,), t in (0, 1) (ignored by the static gate).

        Returns:
            (B, N, num_outputs) weights summing to 1 over the last axis (batch broadcast between
            the inputs).
        """
        terms = []
        if self.reads_mask:
            terms.append(mask_tokens.to(self.weight_dtype))  # (B, N, D)
        if self.reads_time_and_noise:
            terms.append(self.noise_proj(noisy_tokens.to(self.weight_dtype)))  # (B, N, D)
            terms.append(self.time_features(timestep)[1][:, None, :])  # (B, 1, D)
        gate_input = terms[0]
        for term in terms[1:]:
            gate_input = gate_input + term  # (B, N, D)
        return self.gate(gate_input).softmax(dim=-1)  # (B, N, E)


class MoGLE(ModelMixin, ConfigMixin):
    """Mixture of global and local experts (about 0.1 M parameters in the default config).

    Args:
        num_experts: number of condition images E (global + one per class).
        token_dim: D, size of a VAE latent token (16 channels x 2 x 2).
        expert_hidden_dim: hidden width of each expert MLP.
        gate_hidden_dim: hidden width of the gate; must equal ``token_dim``.
        use_experts: False -> identity experts (official ``has_expert=False``).
        gating_mode: "dynamic" (paper), "none" (plain sum), "static" (gate without t and x_t),
            "scalar" (token-averaged dynamic weights, official ``weight_is_scale``).
        active_experts: "all" (paper), "global" (only the global mask), "local" (only the
            local masks).

    See the module docstring for what each switch does and what the paper reports for it.
    """

    @register_to_config
    def __init__(
        self,
        num_experts: int = NUM_CONDITIONS,
        token_dim: int = 64,
        expert_hidden_dim: int = 32,
        gate_hidden_dim: int = 64,
        use_experts: bool = True,
        gating_mode: str = "dynamic",
        active_experts: str = "all",
    ):
        super().__init__()
        if gating_mode not in GATING_MODES:
            raise InputError(f"gating_mode {gating_mode!r} is not one of {', '.join(GATING_MODES)}")
        if active_experts not in ACTIVE_EXPERTS:
            raise InputError(
                f"active_experts {active_experts!r} is not one of {', '.join(ACTIVE_EXPERTS)}"
            )
        if num_experts < 2:
            raise InputError(f"num_experts must be >= 2 (one global + local masks), got {num_experts}")
        if active_experts == "global" and gating_mode != "none":
            raise InputError(
                "active_experts='global' leaves one expert, so there is nothing to gate: "
                "use gating_mode='none'"
            )
        if active_experts == "local" and gating_mode == "static":
            raise InputError(
                "gating_mode='static' gates on the global mask alone, which active_experts='local' leaves out"
            )

        uses_global = active_experts in ("all", "global")
        uses_local = active_experts in ("all", "local")
        self.expert_indices: list[int] = ([GLOBAL_INDEX] if uses_global else []) + (
            list(range(1, num_experts)) if uses_local else []
        )
        if use_experts:
            if uses_global:
                self.global_expert = Expert(token_dim, expert_hidden_dim)
            if uses_local:
                self.local_experts = nn.ModuleList(
                    Expert(token_dim, expert_hidden_dim) for _ in range(num_experts - 1)
                )
        if gating_mode != "none":
            self.gating = DynamicGate(
                token_dim,
                gate_hidden_dim,
                num_outputs=len(self.expert_indices),
                reads_time_and_noise=gating_mode != "static",
                reads_mask=uses_global,
            )

    # ------------------------------------------------------------------ forward

    def _experts(self) -> list[nn.Module]:
        """The active experts, in the order of ``expert_indices``."""
        experts = []
        if hasattr(self, "global_expert"):
            experts.append(self.global_expert)
        if hasattr(self, "local_experts"):
            experts.extend(self.local_experts)
        return experts

    def _check_inputs(
        self, condition_tokens: torch.Tensor, noisy_tokens: torch.Tensor, timestep: torch.Tensor
    ) -> int:
        """Validate shapes; returns the output batch size."""
        num_experts, token_dim = self.config.num_experts, self.config.token_dim
        if condition_tokens.ndim != 4 or condition_tokens.shape[1] != num_experts:
            raise InputError(
                f"condition_tokens must be (B, {num_experts}, N, {token_dim}), "
                f"got {tuple(condition_tokens.shape)}"
            )
        if noisy_tokens.ndim != 3:
            raise InputError(f"noisy_tokens must be (B, N, {token_dim}), got {tuple(noisy_tokens.shape)}")
        if condition_tokens.shape[-1] != token_dim or noisy_tokens.shape[-1] != token_dim:
            raise InputError(
                f"token size must be {token_dim}: condition_tokens {tuple(condition_tokens.shape)}, "
                f"noisy_tokens {tuple(noisy_tokens.shape)}"
            )
        if condition_tokens.shape[2] != noisy_tokens.shape[1]:
            raise InputError(
                f"condition and noisy latent must have the same token count (same resolution): "
                f"{condition_tokens.shape[2]} vs {noisy_tokens.shape[1]}"
            )
        try:
            batch = torch.broadcast_shapes(
                (condition_tokens.shape[0],), (noisy_tokens.shape[0],), (timestep.numel(),)
            )[0]
        except RuntimeError:
            raise InputError(
                f"batch sizes do not broadcast: condition_tokens {condition_tokens.shape[0]}, "
                f"noisy_tokens {noisy_tokens.shape[0]}, timestep {timestep.numel()}"
            ) from None
        if timestep.ndim > 1:
            raise InputError(f"timestep must be (B,) or (1,), got {tuple(timestep.shape)}")
        return batch

    def forward(
        self,
        condition_tokens: torch.Tensor,
        noisy_tokens: torch.Tensor,
        timestep: torch.Tensor,
        return_gate_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mix the condition tokens.

        Args:
            condition_tokens: (B, E, N, D) VAE tokens of the E condition images, index 0 global.
            noisy_tokens: (B, N, D) noisy latent tokens x_t.
            timestep: (B,) or (1,) t in (0, 1) (a 0-d tensor or float is taken as (1,)). Any of
                the three batch sizes may be 1 and broadcasts against the others.
            return_gate_weights: also return the weights that were applied.

        Returns:
            (B, N, D) condition tokens for the transformer; with ``return_gate_weights`` also the
            applied weights (B, N, A) over the A active experts (token-averaged weights repeated
            over N for "scalar", ones for "none").
        """
        timestep = torch.as_tensor(timestep, device=noisy_tokens.device).reshape(-1)  # (B,)
        self._check_inputs(condition_tokens, noisy_tokens, timestep)
        return self.mix(self.expert_outputs(condition_tokens), condition_tokens[:, GLOBAL_INDEX], noisy_tokens,
                        timestep, return_gate_weights=return_gate_weights)

    def expert_outputs(self, condition_tokens: torch.Tensor) -> torch.Tensor:
        """The active experts' outputs (B, A, N, D) for condition tokens (B, E, N, D).

        They depend on the mask only, not on x_t or t: generation computes them once per call and
        :meth:`mix` them at every step (``forward`` = ``mix(expert_outputs(...), ...)``, the same ops).
        """
        experts = self._experts()
        if not experts:  # identity experts
            return condition_tokens[:, self.expert_indices]  # (B, A, N, D)
        dtype = experts[0].net[0].weight.dtype
        return torch.stack(
            [expert(condition_tokens[:, index].to(dtype)) for expert, index in zip(experts, self.expert_indices)],
            dim=1,
        )  # (B, A, N, D)

    def mix(
        self,
        expert_outputs: torch.Tensor,
        global_tokens: torch.Tensor,
        noisy_tokens: torch.Tensor,
        timestep: torch.Tensor,
        return_gate_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The gate's step: weigh precomputed :meth:`expert_outputs` (B, A, N, D) by the gate on the
        global-mask tokens (B, N, D), x_t (B, N, D) and t (B,) or (1,). Returns what :meth:`forward` does."""
        timestep = torch.as_tensor(timestep, device=noisy_tokens.device).reshape(-1)  # (B,)
        num_tokens = noisy_tokens.shape[1]
        try:
            batch = torch.broadcast_shapes((expert_outputs.shape[0],), (noisy_tokens.shape[0],), (timestep.numel(),))[0]
        except RuntimeError:
            raise InputError(f"batch sizes do not broadcast: expert outputs {expert_outputs.shape[0]}, "
                             f"noisy_tokens {noisy_tokens.shape[0]}, timestep {timestep.numel()}") from None
        if self.config.gating_mode == "none":
            output = expert_outputs.sum(dim=1)  # (B, N, D)
            weights = expert_outputs.new_ones(batch, num_tokens, len(self.expert_indices))  # (B, N, A)
        else:
            weights = self.gating(global_tokens, noisy_tokens, timestep)  # (B, N, A)
            if self.config.gating_mode == "scalar":
                weights = weights.mean(dim=1, keepdim=True)  # (B, 1, A)
            per_expert = weights.permute(0, 2, 1).unsqueeze(-1)  # (B, A, N, 1) or (B, A, 1, 1)
            output = (per_expert * expert_outputs.to(weights.dtype)).sum(dim=1)  # (B, N, D)

        output = output.expand(batch, num_tokens, -1)  # (B, N, D)
        if return_gate_weights:
            return output, weights.expand(batch, num_tokens, -1)
        return output

    # ------------------------------------------------------- official checkpoints

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in the official ``global_local_mask_moe.pt`` layout (the same names)."""
        return self.state_dict()

    def save_official_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the weights as a plain ``torch.save`` state dict, like the official file (atomically)."""
        from facemogle.files import atomic_torch_save

        atomic_torch_save(path, self.official_state_dict())

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load an official-layout state dict, cast to this module's dtype.

        Raises:
            CheckpointError: missing or unexpected keys (listed), non-tensor values, or shapes
                that do not match this configuration.
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        for key in sorted(set(own) & set(state_dict)):
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                problems.append(f"{key} is a {type(value).__name__}, not a tensor")
            elif value.shape != own[key].shape:
                problems.append(
                    f"{key} has shape {tuple(value.shape)}, this config needs {tuple(own[key].shape)}"
                )
        if problems:
            raise CheckpointError(
                f"MoGLE state dict does not match the config ({self._variant_summary()}): "
                + "; ".join(problems)
            )
        self.load_state_dict(dict(state_dict), strict=True)

    def _variant_summary(self) -> str:
        c = self.config
        return (
            f"use_experts={c.use_experts}, gating_mode={c.gating_mode!r}, "
            f"active_experts={c.active_experts!r}"
        )

    @classmethod
    def from_official_checkpoint(
        cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None, **config_overrides
    ) -> MoGLE:
        """Build and load a MoGLE from an official-format file (``global_local_mask_moe.pt``).

        The file is read with ``torch.load(weights_only=True)`` (``.safetensors`` with
        safetensors). The variant is inferred from the keys where possible (no ``gating.*`` ->
        gating "none", no expert keys -> identity experts, no time/noise weights -> "static");
        ``config_overrides`` set what keys cannot tell (``gating_mode="scalar"``, the official
        ``weight_is_scale``) and win over the inference.

        Args:
            path: the checkpoint file.
            torch_dtype: module dtype; default: the dtype of the file's tensors.

        Raises:
            CheckpointError: unreadable / non-checkpoint file, or keys that do not match.
            InputError: unknown or invalid config overrides.
        """
        state_dict = read_state_dict_file(path)
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config_overrides) - known)
        if unknown:
            raise InputError(
                f"unknown MoGLE config option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        config = {**infer_config_from_state_dict(state_dict), **config_overrides}
        if torch_dtype is None:
            dtypes = {value.dtype for value in state_dict.values() if value.is_floating_point()}
            torch_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        model = cls(**config)
        # nn.Module.to: diffusers' ModelMixin.to warns about "fp32 modules" on every dtype cast.
        nn.Module.to(model, torch_dtype)
        try:
            model.load_official_state_dict(state_dict)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        return model.eval()


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """MoGLE config options that the keys and shapes of an official-layout state dict imply.

    Cannot tell "scalar" from "dynamic" gating (same weights): that one is left to the caller.
    """
    config: dict = {}
    has_global = any(k.startswith("global_expert.") for k in state_dict)
    local_indices = {
        int(key.split(".")[1])
        for key in state_dict
        if key.startswith("local_experts.") and key.split(".")[1].isdigit()
    }
    has_gate = any(k.startswith("gating.gate.") for k in state_dict)
    has_time = any(k.startswith(("gating.timestep_embedding.", "gating.noise_proj.")) for k in state_dict)

    config["use_experts"] = has_global or bool(local_indices)
    if has_global and not local_indices:
        config["active_experts"] = "global"
    elif local_indices and not has_global:
        config["active_experts"] = "local"
    if local_indices:
        config["num_experts"] = max(local_indices) + 2  # + the global one; gaps show up as missing keys
    config["gating_mode"] = "dynamic" if has_time else ("static" if has_gate else "none")

    expert_first = state_dict.get(
        "global_expert.net.0.weight", state_dict.get("local_experts.0.net.0.weight")
    )
    if isinstance(expert_first, torch.Tensor) and expert_first.ndim == 2:
        config["expert_hidden_dim"], config["token_dim"] = expert_first.shape
    gate_first = state_dict.get("gating.gate.0.weight")
    if isinstance(gate_first, torch.Tensor) and gate_first.ndim == 2:
        config["gate_hidden_dim"] = gate_first.shape[0]
        config.setdefault("token_dim", gate_first.shape[1])
    gate_last = state_dict.get("gating.gate.2.weight")
    if "num_experts" not in config and isinstance(gate_last, torch.Tensor) and gate_last.ndim == 2:
        config["num_experts"] = gate_last.shape[0]  # identity experts, all masks gated
    return config
