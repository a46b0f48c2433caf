"""The seeded stream of training samples: which sample comes next, and its random draws.

Training reads an endless *stream* of positions 0, 1, 2, ...: position ``p`` is the
``p % n``-th entry of epoch ``p // n``'s permutation of the ``n`` samples, and every random
choice made for that position (timestep t, noise, which caption sentence, text dropout, the
dropout of each local mask) comes from a generator seeded by ``(seed, p)`` alone.

Consequences, on which exact resume and multi-process training rely:

* the data position of a run is one integer (``samples_seen``): a resumed run continues the
  stream where it stopped, and gets the very same samples and draws;
* what a sample receives does not depend on the batch size, the number of processes, the data
  loader workers or any global random state, so 2 processes x batch b see exactly the samples
  and noise of 1 process x batch 2b.

Seeds are derived with ``numpy.random.SeedSequence`` (well-mixed, stable across versions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facemogle.errors import InputError
from facemogle.flow import RectifiedFlow

_TAG_EPOCH = 1
_TAG_POSITION = 2
_TAG_WEIGHTED = 3


def derive_seed(seed: int, tag: int, value: int) -> int:
    """A 63-bit seed from ``(seed, tag, value)`` (all non-negative integers)."""
    if seed < 0 or value < 0:
        raise InputError(f"seeds and positions must be >= 0, got seed {seed}, value {value}")
    state = np.random.SeedSequence([int(seed), int(tag), int(value)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


class EpochPermutations:
    """Position -> sample index: a fresh seeded permutation of ``num_samples`` per epoch."""

    def __init__(self, num_samples: int, seed: int):
        if num_samples < 1:
            raise InputError("the training set is empty")
        self.num_samples = num_samples
        self.seed = seed
        self._epoch = -1
        self._order: list[int] = []

    def locate(self, position: int) -> tuple[int, int]:
        """``(epoch, index in that epoch's permutation)`` of a stream position."""
        return divmod(int(position), self.num_samples)

    def sample_index(self, position: int) -> int:
        epoch, offset = self.locate(position)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, _TAG_EPOCH, epoch))
            self._order = torch.randperm(self.num_samples, generator=generator).tolist()
            self._epoch = epoch
        return self._order[offset]


class WeightedPositions:
    """Position -> sample index drawn with probability proportional to ``weights`` (with
    replacement), from a generator seeded by ``(seed, position)`` alone: the same stream
    properties as :class:`EpochPermutations` (exact resume, any batch split), for training that
    shows some samples more often (:mod:`facemogle.data.balance`)."""

    def __init__(self, weights, seed: int):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.ndim != 1 or len(weights) < 1:
            raise InputError("the training set is empty")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise InputError("sample weights must be finite, non-negative and not all zero")
        self.num_samples = len(weights)
        self.seed = seed
        self._cumulative = torch.cumsum(weights / weights.sum(), 0)  # (n,)

    def sample_index(self, position: int) -> int:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _TAG_WEIGHTED, int(position)))
        u = torch.rand(1, generator=generator, dtype=torch.float64)
        # right=True: the first index whose cumulative share exceeds u, so a weight-0 sample is never drawn
        return min(int(torch.searchsorted(self._cumulative, u, right=True)[0]), self.num_samples - 1)


def sample_order(num_samples: int, seed: int, weights=None):
    """The stream's position -> sample map: epoch permutations, or weighted draws when ``weights``."""
    return EpochPermutations(num_samples, seed) if weights is None else WeightedPositions(weights, seed)


@dataclass(frozen=True)
class PositionDraws:
    """The random draws of one stream position.

    ``timestep`` () in (0, 1); ``noise`` (N, D) standard normal; ``caption`` index into the
    sample's sentences (0 when it has none); ``text_dropped`` bool; ``local_dropped`` (C,) bool,
    one per local mask; ``mask_emptied`` bool: the whole mask (global map too) becomes the empty
    mask, a text-only sample.
    """

    timestep: torch.Tensor
    noise: torch.Tensor
    caption: int
    text_dropped: bool
    local_dropped: torch.Tensor
    mask_emptied: bool = False


def draw_for_position(seed: int, position: int, token_shape: tuple[int, int], num_local: int, num_captions: int,
                      text_dropout: float, mask_dropout: float, empty_mask_dropout: float = 0.0,
                      first_caption_share: float = 0.0) -> PositionDraws:
    """Draw, in a fixed order from one generator seeded by ``(seed, position)``: t, noise, the
    text-dropout coin, the ``num_local`` mask-dropout coins, the caption index, the empty-mask
    coin, the first-caption coin (the later coins last, so the earlier draws do not depend on
    whether they are used). The first-caption coin (p ``first_caption_share``) makes the caption
    sentence 0: the captioner's sentence that states every fact about the face."""
    generator = torch.Generator().manual_seed(derive_seed(seed, _TAG_POSITION, position))
    timestep = RectifiedFlow().sample_timesteps(1, generator=generator)[0]  # ()
    noise = torch.randn(token_shape, generator=generator)  # (N, D)
    text_coin = torch.rand(1, generator=generator)[0]
    local_coins = torch.rand(num_local, generator=generator)  # (C,)
    caption = int(torch.randint(max(num_captions, 1), (1,), generator=generator)[0])
    empty_coin = torch.rand(1, generator=generator)[0]
    if first_caption_share > 0 and float(torch.rand(1, generator=generator)[0]) < first_caption_share:
        caption = 0
    return PositionDraws(
        timestep=timestep,
        noise=noise,
        caption=caption,
        text_dropped=bool(text_coin < text_dropout),
        local_dropped=local_coins < mask_dropout,
        mask_emptied=bool(empty_coin < empty_mask_dropout),
    )


class PositionBatchSampler:
    """Batches of consecutive stream positions: ``[start + k*B, start + (k+1)*B)`` for k < ``num_batches``.

    A batch sampler for ``torch.utils.data.DataLoader`` (and accelerate, which deals batch k to
    process ``k % num_processes``). ``drop_last`` is True: every batch is full.
    """

    drop_last = True

    def __init__(self, start: int, batch_size: int, num_batches: int):
        if batch_size < 1 or num_batches < 0 or start < 0:
            raise InputError(f"invalid stream slice: start {start}, batch_size {batch_size}, batches {num_batches}")
        self.start = start
        self.batch_size = batch_size
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for k in range(self.num_batches):
            first = self.start + k * self.batch_size
            yield list(range(first, first + self.batch_size))


class RawTrainingDataset(torch.utils.data.Dataset):
    """Stream position -> raw sample + draws, for training without a cache (everything is encoded
    every step, as the reference does).

    Item: ``{"position", "index", "image": (3, R, R) uint8, "mask": (R, R) uint8, "caption": str
    ("" when dropped or absent), "local_dropped": (C,) bool, "mask_emptied": bool (the mask is then
    all background), "noise": (N, D), "timestep": ()}``.
    """

    def __init__(self, faces, seed: int, token_shape: tuple[int, int], num_local: int, text_dropout: float,
                 mask_dropout: float, captions_per_sample: int | None = None, empty_mask_dropout: float = 0.0,
                 weights=None, first_caption_share: float = 0.0):
        self.faces = faces  # facemogle.data.datasets.FaceDataset
        self.captions_per_sample = captions_per_sample
        self.order = sample_order(len(faces), seed, weights)
        self.first_caption_share = first_caption_share
        self.seed = seed
        self.token_shape = tuple(token_shape)
        self.num_local = num_local
        self.text_dropout = text_dropout
        self.mask_dropout = mask_dropout
        self.empty_mask_dropout = empty_mask_dropout

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, position: int) -> dict:
        index = self.order.sample_index(position)
        item = self.faces[index]
        captions = item["captions"][: self.captions_per_sample]
        draws = draw_for_position(self.seed, position, self.token_shape, self.num_local, len(captions),
                                  self.text_dropout, self.mask_dropout, self.empty_mask_dropout,
                                  self.first_caption_share)
        caption = "" if draws.text_dropped or not captions else captions[draws.caption]
        mask = torch.zeros_like(item["mask"]) if draws.mask_emptied else item["mask"]  # all background
        return {"position": position, "index": index, "image": item["image"], "mask": mask,
                "caption": caption, "local_dropped": draws.local_dropped, "mask_emptied": draws.mask_emptied,
                "noise": draws.noise,
                "timestep": draws.timestep}
