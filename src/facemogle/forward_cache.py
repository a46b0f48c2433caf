"""What the transformer's condition forward keeps between the denoising steps of one call.

Generation makes one :class:`ForwardCache` per call and hands it to every step's
:func:`facemogle.condition.condition_forward`. It always holds the **step invariants** (exact:
the condition stream's t = 0 modulation, the embedded text tokens, the rotary embeddings; computed
at the first step, the same tensors after). Two opt-in approximations use it too:

* **condition cache** (``condition_cache="every:K"``, OminiControl2-style): the condition stream
  is fully computed every K steps and each block's condition keys/values are kept; the steps in
  between run the text and image tokens only, attending to the kept keys/values. MoGLE's gate
  changes the condition tokens at every step, so this is an approximation. ``"every:K+first"``
  also recomputes, at every step, the gate-weighted condition tokens' input projection and the
  first block's condition keys/values from them (cheap: no attention queries for them), reusing
  the deeper blocks' only.
* **step cache** (``step_cache="first-block:T"``, diffusers' ``FirstBlockCacheConfig(threshold=T)``
  done inside the condition forward, whose blocks diffusers' hooks cannot see): each step runs the
  first block; when the change of its image residual since the last fully computed step, mean
  ``|r - r_last|`` / mean ``|r_last|``, is below T, the other blocks are skipped and their last
  residual is added instead.

``"off"`` (the default of both) is the exact sampling. ``condition_cache="none"`` (text-only calls
only) runs no condition stream at all: the base transformer's text-to-image prediction (for
FLUX.1-dev, plain FLUX.1-dev); the bench's reference for what the condition stream costs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from facemogle.errors import InputError

if TYPE_CHECKING:  # torch loads with the model, not when the command line reads its options
    import torch

OFF = "off"
NONE = "none"
_CONDITION_CACHE = re.compile(r"every:(\d+)(\+first)?")
_STEP_CACHE = re.compile(r"first-block:([0-9.eE+-]+)")
CONDITION_CACHE_HELP = ("off (exact), every:K (condition stream every K steps), every:K+first, "
                        "or none (text-only: no condition stream)")
STEP_CACHE_HELP = "off (exact) or first-block:T (skip the other blocks while the first block's residual changes < T)"


@dataclass(frozen=True)
class CachePolicy:
    """``condition_every``: full condition stream every K steps (1: every step, exact).
    ``refresh_first_block``: between those, recompute the input projection and the first block's
    condition keys/values. ``first_block_threshold``: step cache threshold (0: off, exact)."""

    condition_every: int = 1
    refresh_first_block: bool = False
    first_block_threshold: float = 0.0
    condition_stream: bool = True

    @property
    def exact(self) -> bool:
        return self.condition_every == 1 and self.first_block_threshold == 0.0 and self.condition_stream


def parse_condition_cache(text: str | None) -> tuple[int, bool]:
    """``"off"`` -> (1, False); ``"every:K"`` -> (K, False); ``"every:K+first"`` -> (K, True);
    ``"none"`` -> (0, False) (no condition stream)."""
    text = OFF if text is None else str(text).strip()
    if text == OFF:
        return 1, False
    if text == NONE:
        return 0, False
    match = _CONDITION_CACHE.fullmatch(text)
    if match is None or not 1 <= int(match.group(1)) <= 1000:
        raise InputError(f"condition_cache must be {CONDITION_CACHE_HELP} with K in 1..1000, got {text!r}")
    return int(match.group(1)), bool(match.group(2))


def parse_step_cache(text: str | None) -> float:
    """``"off"`` -> 0.0; ``"first-block:T"`` -> T (a finite threshold in (0, 10])."""
    text = OFF if text is None else str(text).strip()
    if text == OFF:
        return 0.0
    match = _STEP_CACHE.fullmatch(text)
    try:
        threshold = float(match.group(1)) if match else math.nan
    except ValueError:
        threshold = math.nan
    if not (math.isfinite(threshold) and 0 < threshold <= 10):
        raise InputError(f"step_cache must be {STEP_CACHE_HELP} with T in (0, 10], got {text!r}")
    return threshold


def cache_policy(condition_cache: str | None = OFF, step_cache: str | None = OFF) -> CachePolicy:
    """The :class:`CachePolicy` of the pipeline's ``condition_cache`` and ``step_cache`` strings."""
    every, refresh = parse_condition_cache(condition_cache)
    return CachePolicy(condition_every=max(every, 1), refresh_first_block=refresh,
                       first_block_threshold=parse_step_cache(step_cache), condition_stream=every > 0)


@dataclass
class ForwardCache:
    """The state of one call's denoising (see the module docstring); ``counts`` says what each step did:
    ``full`` (everything computed), ``condition_reused`` (text + image tokens on kept condition
    keys/values), ``blocks_skipped`` (first block only for every row, step cache)."""

    policy: CachePolicy = field(default_factory=CachePolicy)
    invariants: dict | None = None
    invariants_key: tuple | None = None
    condition_kv: list | None = None  # per block: (keys, values) (B, N, heads, head_dim) of the condition tokens
    since_condition: int = 0  # steps run on condition_kv since it was computed
    head_residual: torch.Tensor | None = None  # the first block's image residual at the last full step
    tail_residual: torch.Tensor | None = None  # what the other blocks added to the image tokens then
    counts: dict = field(default_factory=lambda: {"full": 0, "condition_reused": 0, "blocks_skipped": 0})

    def step_invariants(self, key: tuple, compute) -> dict:
        """The step-independent tensors for inputs identified by ``key`` (computed once per key)."""
        if self.invariants is None or self.invariants_key != key:
            self.invariants, self.invariants_key = compute(), key
        return self.invariants

    def reuse_condition(self, batch: int) -> bool:
        """Whether this step runs on the kept condition keys/values."""
        every = self.policy.condition_every
        kept = self.condition_kv is not None and self.condition_kv[0][0].shape[0] == batch
        return every > 1 and kept and self.since_condition < every - 1

    def rows_to_skip(self, head_residual: torch.Tensor) -> torch.Tensor | None:
        """Step cache: (B,) bool, the rows whose first-block residual changed by less than the
        threshold since their last full step (None: nothing to compare with). Decided per row, so an
        image's steps do not depend on the rest of its batch."""
        threshold = self.policy.first_block_threshold
        if threshold <= 0 or self.head_residual is None or self.head_residual.shape != head_residual.shape:
            return None
        dims = tuple(range(1, head_residual.ndim))
        change = ((head_residual - self.head_residual).abs().mean(dim=dims)
                  / self.head_residual.abs().mean(dim=dims).clamp_min(1e-12))  # (B,)
        return change < threshold

    def keep_residuals(self, head_residual: torch.Tensor, tail_residual: torch.Tensor,
                       skipped: torch.Tensor | None) -> None:
        """After a full step: the rows that were computed keep their new residuals."""
        import torch

        if skipped is None or self.head_residual is None:
            self.head_residual, self.tail_residual = head_residual, tail_residual
            return
        keep = skipped[:, None, None]
        self.head_residual = torch.where(keep, self.head_residual, head_residual)
        self.tail_residual = torch.where(keep, self.tail_residual, tail_residual)
