"""A cache of everything the frozen encoders compute for training, computed once and reused.

Per sample (at the training resolution; METHOD.md section 2):

* the image latents: (N, D) packed tokens (VAE posterior mean, normalised);
* the ``NUM_CONDITIONS`` mask latents: the global mask's (N, D) tokens, and the (N, D) tokens of
  each local mask whose class is present. An absent class gives an all-black local image, whose
  latents are the *blank* latents: computed once per cache (``blank.safetensors``) and used for
  every absent class **and** for local-mask dropout (a dropped local mask is a zeroed map, METHOD.md
  section 5). About half of the 19 local maps are blank in a typical face, so this halves the
  VAE work and the storage without changing a value;
* the caption sentences (all, or the first ``captions_per_sample``), as indices into one table
  of unique sentences whose T5 ``prompt_embeds`` (L, Dt) and CLIP pooled (P,) embeddings are
  stored once each (template captions repeat a lot). The empty prompt (text dropout) is in
  ``blank.safetensors``.

Layout of a cache directory ``<cache root>/<key>/``::

    manifest.json              written last: completion marker + what the cache holds
    blank.safetensors          blank local-mask latents, empty-prompt embeddings
    samples-00000.safetensors  image_tokens (S,N,D), global_tokens (S,N,D), local_present (S,C) u8,
                               local_offsets (S+1,), local_tokens (K,N,D), caption_offsets (S+1,),
                               caption_ids (M,)
    texts-00000.safetensors    prompt_embeds (T,L,Dt), pooled_prompt_embeds (T,P)

``key`` is a hash of the *model fingerprint* (class, config and a weight hash of the VAE and both
text encoders, the tokenizers, the text length) and the *data fingerprint* (every sample's file
paths, sizes and modification times, the sentences, resolution, resize filter, mask order, caption
count, storage dtype, shard size, format version). Any change gives another key, so a stale
cache is never read. Every file is written to a temporary name and renamed
(``os.replace``); a build that is interrupted keeps its finished shards and computes only the
missing ones when started again. With several processes, shard ``k`` is built by process
``k % num_processes``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm.auto import tqdm

from facemogle.data.stream import draw_for_position, sample_order
from facemogle.errors import InputError
from facemogle.labels import NUM_CLASSES, NUM_CONDITIONS
from facemogle.condition_tokens import MaskLatents, encode_blank, encode_in_chunks, encode_mask_latents
from facemogle.files import atomic_save_safetensors, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: photos and masks encoded in separate VAE passes (facemogle.condition_tokens)
MANIFEST_NAME = "manifest.json"
BLANK_NAME = "blank.safetensors"
#: Caches up to this size are loaded into memory when opened (else read lazily, row by row).
PRELOAD_BYTES = 2 * 1024**3
#: Tensors larger than this many elements are fingerprinted from a strided sample + sums.
FULL_HASH_ELEMENTS = 1 << 22
SAMPLED_HASH_ELEMENTS = 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CacheSettings:
    """What the cached values depend on besides the model and the files."""

    resolution: int
    image_resize: str = "bicubic"
    mask_order: str = "official"
    captions_per_sample: int | None = None
    dtype: str = "float32"
    shard_size: int = 256
    encode_batch_size: int = 8
    max_sequence_length: int = 512


# ----------------------------------------------------------------------------------- fingerprints


def _tensor_digest(tensor: torch.Tensor) -> str:
    """Hash of a tensor's dtype, shape and values (a strided sample + sums for very large ones)."""
    tensor = tensor.detach()
    hasher = hashlib.blake2b(f"{tensor.dtype}{tuple(tensor.shape)}".encode(), digest_size=16)
    flat = tensor.reshape(-1)
    if flat.numel() > FULL_HASH_ELEMENTS:
        step = flat.numel() // SAMPLED_HASH_ELEMENTS
        as_float = flat.double()
        hasher.update(f"{as_float.sum().item():.17g}/{as_float.abs().sum().item():.17g}".encode())
        flat = flat[::step]
    hasher.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _config_dict(module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in sorted(raw.items()) if not k.startswith("_") and k != "transformers_version"}


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's class, config and every parameter and buffer (name, dtype, shape, values)."""
    hasher = hashlib.sha256(type(module).__name__.encode())
    hasher.update(json.dumps(_config_dict(module), sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(_tensor_digest(tensor).encode())
    return hasher.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of a tokenizer's class, length limit and vocabulary / merges."""
    hasher = hashlib.sha256(type(tokenizer).__name__.encode())
    hasher.update(str(getattr(tokenizer, "model_max_length", None)).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        hasher.update(backend.to_str().encode())
    else:
        hasher.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return hasher.hexdigest()


def model_fingerprint(pipe, max_sequence_length: int = 512) -> dict:
    """The parts of a pipeline the cache depends on: VAE, text encoders, tokenizers."""
    return {
        "vae": module_fingerprint(pipe.vae),
        "text_encoder": module_fingerprint(pipe.text_encoder),
        "text_encoder_2": module_fingerprint(pipe.text_encoder_2),
        "tokenizer": tokenizer_fingerprint(pipe.tokenizer),
        "tokenizer_2": tokenizer_fingerprint(pipe.tokenizer_2),
        "max_sequence_length": max_sequence_length,
    }


def _file_stat(path: Path | None) -> list | None:
    if path is None:
        return None
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def data_fingerprint(records, settings: CacheSettings) -> dict:
    """Sample files (path, size, mtime), sentences and the settings that change cached values."""
    hasher = hashlib.sha256()
    for record in records:
        entry = [record.stem, _file_stat(record.image), _file_stat(record.mask), _file_stat(record.caption_file),
                 list(record.captions[: settings.captions_per_sample])]
        hasher.update(json.dumps(entry).encode())
    return {
        "format": CACHE_FORMAT_VERSION,
        "num_samples": len(records),
        "files": hasher.hexdigest(),
        "resolution": settings.resolution,
        "image_resize": settings.image_resize,
        "mask_order": settings.mask_order,
        "captions_per_sample": settings.captions_per_sample,
        "dtype": settings.dtype,
        "shard_size": settings.shard_size,
    }


def cache_key(model_fp: dict, data_fp: dict) -> str:
    payload = json.dumps({"model": model_fp, "data": data_fp}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------------- encoding


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def encode_texts(pipe, sentences: list[str], batch_size: int, max_sequence_length: int = 512):
    """FLUX text embeddings of ``sentences``: (T, L, Dt) T5 sequence and (T, P) CLIP pooled (CPU).

    Batches have exactly ``batch_size`` prompts (the last one padded with empty prompts): one
    batch shape, and every sentence's embedding is independent of the others."""
    prompt_embeds, pooled = [], []
    device = _device(pipe.text_encoder_2)
    padded = list(sentences) + [""] * (-len(sentences) % batch_size)
    for start in range(0, len(padded), batch_size):
        embeds, pooled_embeds, _ = pipe.encode_prompt(
            prompt=padded[start : start + batch_size], prompt_2=None, device=device,
            num_images_per_prompt=1, max_sequence_length=max_sequence_length,
        )
        prompt_embeds.append(embeds.cpu())
        pooled.append(pooled_embeds.cpu())
    return torch.cat(prompt_embeds)[: len(sentences)], torch.cat(pooled)[: len(sentences)]


# ----------------------------------------------------------------------------------- building


def _shard_is_complete(path: Path, keys: tuple[str, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(keys) <= set(handle.keys())
    except Exception:  # a damaged file: rebuild it
        return False


SAMPLE_KEYS = ("image_tokens", "global_tokens", "local_present", "local_offsets", "local_tokens",
               "caption_offsets", "caption_ids")
TEXT_KEYS = ("prompt_embeds", "pooled_prompt_embeds")
BLANK_KEYS = ("blank_local_tokens", "empty_prompt_embeds", "empty_pooled_prompt_embeds")


def build_cache(
    pipe,
    faces,
    cache_root: str | os.PathLike,
    settings: CacheSettings,
    *,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> "LatentCache":
    """Compute (or find) the cache of ``faces`` (a :class:`facemogle.data.datasets.FaceDataset`).

    Shards already on disk are skipped; a complete cache (manifest present) computes nothing.
    With ``num_processes`` > 1 every process must call this with the same arguments and a
    ``barrier`` (e.g. ``accelerator.wait_for_everyone``).

    Returns:
        the opened :class:`LatentCache`; ``cache.stats["computed_samples"]`` /
        ``["computed_sentences"]`` say how much was encoded by this process in this call.
    """
    if faces.resolution != settings.resolution:
        raise InputError(f"dataset resolution {faces.resolution} differs from the cache's {settings.resolution}")
    barrier = barrier or (lambda: None)
    records = faces.records
    model_fp = model_fingerprint(pipe, settings.max_sequence_length)
    data_fp = data_fingerprint(records, settings)
    key = cache_key(model_fp, data_fp)
    directory = Path(cache_root) / key
    stats = {"computed_samples": 0, "computed_sentences": 0, "seconds": 0.0}
    if (directory / MANIFEST_NAME).is_file():
        logger.info("reusing the latent cache %s", directory)
        cache = LatentCache(directory)
        cache.stats = stats
        return cache
    logger.info("building the latent cache %s (%d samples)", directory, len(records))

    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    store_dtype = DTYPES[settings.dtype]
    sentences = sorted({s for r in records for s in r.captions[: settings.captions_per_sample]})
    sentence_index = {s: i for i, s in enumerate(sentences)}
    size = settings.shard_size
    sample_shards = [f"samples-{k:05d}.safetensors" for k in range((len(records) + size - 1) // size)]
    text_shards = [f"texts-{k:05d}.safetensors" for k in range((len(sentences) + size - 1) // size)]
    jobs = [("samples", k, name) for k, name in enumerate(sample_shards)] + \
           [("texts", k, name) for k, name in enumerate(text_shards)]
    mine = [job for j, job in enumerate(jobs) if j % num_processes == process_index]
    todo = [job for job in mine if not _shard_is_complete(directory / job[2], SAMPLE_KEYS if job[0] == "samples" else TEXT_KEYS)]
    total = sum(min(size, (len(records) if kind == "samples" else len(sentences)) - k * size) for kind, k, _ in todo)
    bar = tqdm(total=total, desc=f"caching latents ({directory.name[:8]})", unit="item",
               disable=not progress or process_index != 0 or total == 0)

    # every absent class and dropped local mask is the blank map: encoded once, by each process
    blank = encode_blank(pipe.vae, settings.resolution, settings.resolution, settings.encode_batch_size,
                         fixed_shape=True).cpu()  # (N, D)
    for kind, k, name in todo:
        first, last = k * size, min((k + 1) * size, len(records) if kind == "samples" else len(sentences))
        if kind == "texts":
            embeds, pooled = encode_texts(pipe, sentences[first:last], settings.encode_batch_size,
                                          settings.max_sequence_length)
            atomic_save_safetensors(directory / name, {"prompt_embeds": embeds.to(store_dtype),
                                                       "pooled_prompt_embeds": pooled.to(store_dtype)})
            stats["computed_sentences"] += last - first
        else:
            subset = torch.utils.data.Subset(faces, range(first, last))
            images, masks = [], []
            loader = torch.utils.data.DataLoader(subset, batch_size=settings.encode_batch_size,
                                                 num_workers=num_workers, collate_fn=_collate_pixels)
            for image_batch, mask_batch in loader:
                images.append(image_batch)
                masks.append(mask_batch)
            chunk = settings.encode_batch_size
            image_tokens = encode_in_chunks(pipe.vae, torch.cat(images), chunk, fixed_shape=True).cpu()  # (S, N, D)
            mask_latents = encode_mask_latents(pipe.vae, torch.cat(masks).numpy(), blank_tokens=blank,
                                               chunk_size=chunk, fixed_shape=True)
            present = mask_latents.local_present  # (S, C)
            local_counts = present.sum(dim=1)
            caption_lists = [[sentence_index[s] for s in records[i].captions[: settings.captions_per_sample]]
                             for i in range(first, last)]
            caption_counts = torch.tensor([len(c) for c in caption_lists], dtype=torch.int64)
            tensors = {
                "image_tokens": image_tokens.to(store_dtype),
                "global_tokens": mask_latents.global_tokens.cpu().to(store_dtype),
                "local_present": present.to(torch.uint8),
                "local_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), local_counts.cumsum(0)]),
                "local_tokens": mask_latents.local_tokens.cpu().to(store_dtype),
                "caption_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), caption_counts.cumsum(0)]),
                "caption_ids": torch.tensor([i for c in caption_lists for i in c], dtype=torch.int64),
            }
            atomic_save_safetensors(directory / name, tensors, metadata={"stems": json.dumps([r.stem for r in records[first:last]])})
            stats["computed_samples"] += last - first
        bar.update(last - first)
    bar.close()
    barrier()

    if process_index == 0:
        if not _shard_is_complete(directory / BLANK_NAME, BLANK_KEYS):
            empty_embeds, empty_pooled = encode_texts(pipe, [""], settings.encode_batch_size, settings.max_sequence_length)
            atomic_save_safetensors(directory / BLANK_NAME, {"blank_local_tokens": blank.to(store_dtype),
                                                             "empty_prompt_embeds": empty_embeds[0].to(store_dtype),
                                                             "empty_pooled_prompt_embeds": empty_pooled[0].to(store_dtype)})
        manifest = {
            "version": CACHE_FORMAT_VERSION,
            "key": key,
            "fingerprint": {"model": model_fp, "data": data_fp},
            "num_samples": len(records),
            "stems": [r.stem for r in records],
            "sentences": sentences,
            "sample_shards": sample_shards,
            "text_shards": text_shards,
            "shard_size": size,
            "dtype": settings.dtype,
            "num_local": NUM_CLASSES,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    barrier()
    stats["seconds"] = time.perf_counter() - started
    cache = LatentCache(directory)
    cache.stats = stats
    return cache


def _collate_pixels(items):
    return torch.stack([item["image"] for item in items]), torch.stack([item["mask"] for item in items])


# ----------------------------------------------------------------------------------- reading


class LatentCache:
    """Read access to a complete cache directory.

    Args:
        directory: the ``<cache root>/<key>`` directory (with ``manifest.json``).
        preload: load every shard into memory (default: when the cache is below ``PRELOAD_BYTES``);
            otherwise rows are read on demand from the memory-mapped safetensors files.
    """

    def __init__(self, directory: str | os.PathLike, preload: bool | None = None):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise InputError(f"{self.directory} is not a complete latent cache (no {MANIFEST_NAME})")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("version") != CACHE_FORMAT_VERSION:
            raise InputError(f"latent cache {self.directory} has format {self.manifest.get('version')}, "
                             f"this version reads {CACHE_FORMAT_VERSION}")
        self.num_samples: int = self.manifest["num_samples"]
        self.shard_size: int = self.manifest["shard_size"]
        self.num_local: int = self.manifest["num_local"]
        self.sentences: list[str] = self.manifest["sentences"]
        blank = load_file(str(self.directory / BLANK_NAME))
        self.blank_local_tokens = blank["blank_local_tokens"]  # (N, D)
        self.empty_prompt_embeds = blank["empty_prompt_embeds"]  # (L, Dt)
        self.empty_pooled_prompt_embeds = blank["empty_pooled_prompt_embeds"]  # (P,)
        self.stats: dict = {}
        if preload is None:
            total = sum((self.directory / n).stat().st_size
                        for n in self.manifest["sample_shards"] + self.manifest["text_shards"])
            preload = total <= PRELOAD_BYTES
        self._preloaded: dict[str, dict[str, torch.Tensor]] | None = None
        if preload:
            self._preloaded = {n: load_file(str(self.directory / n))
                               for n in self.manifest["sample_shards"] + self.manifest["text_shards"]}
        self._handles: dict[str, object] = {}
        self._handles_pid = os.getpid()

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def token_shape(self) -> tuple[int, int]:
        return tuple(self.blank_local_tokens.shape)

    def __getstate__(self):  # DataLoader workers reopen the files themselves
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _rows(self, shard: str, key: str, start: int, stop: int) -> torch.Tensor:
        if self._preloaded is not None:
            return self._preloaded[shard][key][start:stop]
        if self._handles_pid != os.getpid():
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
        return handle.get_slice(key)[start:stop]

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        """Cached tensors of sample ``index``: ``image_tokens`` (N, D), ``global_tokens`` (N, D),
        ``local_present`` (C,) bool, ``local_tokens`` (K, N, D) of the present classes,
        ``caption_ids`` (M,) indices of its sentences (see :meth:`text`)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} outside 0..{self.num_samples - 1}")
        shard, row = self.manifest["sample_shards"][index // self.shard_size], index % self.shard_size
        local = self._rows(shard, "local_offsets", row, row + 2)
        captions = self._rows(shard, "caption_offsets", row, row + 2)
        return {
            "image_tokens": self._rows(shard, "image_tokens", row, row + 1)[0],
            "global_tokens": self._rows(shard, "global_tokens", row, row + 1)[0],
            "local_present": self._rows(shard, "local_present", row, row + 1)[0].bool(),
            "local_tokens": self._rows(shard, "local_tokens", int(local[0]), int(local[1])),
            "caption_ids": self._rows(shard, "caption_ids", int(captions[0]), int(captions[1])),
        }

    def condition_tokens(self, sample: dict[str, torch.Tensor], dropped: torch.Tensor | None = None) -> torch.Tensor:
        """The (E, N, D) MoGLE input of a cached sample: global, then one map per class; absent and
        ``dropped`` (C,) local masks get the blank latents."""
        latents = MaskLatents(global_tokens=sample["global_tokens"][None], local_present=sample["local_present"][None],
                              local_tokens=sample["local_tokens"], blank_tokens=self.blank_local_tokens)
        return latents.dense(None if dropped is None else dropped[None])[0]  # (E, N, D)

    def covered_tokens(self, sample: dict[str, torch.Tensor], classes) -> torch.Tensor:
        """(N,) bool: the tokens the sample's own mask covers with any of ``classes`` (class ids;
        :meth:`MaskLatents.covered_tokens`)."""
        latents = MaskLatents(global_tokens=sample["global_tokens"][None], local_present=sample["local_present"][None],
                              local_tokens=sample["local_tokens"], blank_tokens=self.blank_local_tokens)
        return latents.covered_tokens(classes)[0]

    def text(self, sentence: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (L, Dt), pooled (P,)) of sentence ``sentence`` of ``self.sentences``."""
        shard, row = self.manifest["text_shards"][sentence // self.shard_size], sentence % self.shard_size
        return (self._rows(shard, "prompt_embeds", row, row + 1)[0],
                self._rows(shard, "pooled_prompt_embeds", row, row + 1)[0])


class CachedTrainingDataset(torch.utils.data.Dataset):
    """Stream position -> training tensors from a :class:`LatentCache`, with the position's
    seeded draws (:mod:`facemogle.data.stream`) applied to the cached values:

    * text dropout (p = ``text_dropout``): the empty-prompt embeddings replace the caption's;
    * local-mask dropout: each of the C local maps independently becomes the blank latents with
      p = ``mask_dropout``; the global map (index 0) is not;
    * empty-mask dropout (p = ``empty_mask_dropout``): every map, the global one too, becomes the
      blank latents, the empty mask of text-only generation (all background = black);
    * ``weights`` (one per cached sample, None: every sample once per epoch): samples drawn in
      proportion to them (:class:`facemogle.data.stream.WeightedPositions`);
    * ``first_caption_share``: the share of samples that take caption sentence 0 (every face fact);
    * ``part_classes`` (class ids; None: off): the item also holds ``part_tokens`` (N,) bool, the
      tokens its mask covers with them, whatever was dropped (the loss's part weights).

    Item: ``{"position", "index", "image_tokens" (N, D), "condition_tokens" (E, N, D),
    "prompt_embeds" (L, Dt), "pooled_prompt_embeds" (P,), "noise" (N, D), "timestep" (),
    "text_dropped" (), "local_dropped" (C,), "mask_emptied" ()}`` (float tensors in float32).
    """

    def __init__(self, cache: LatentCache, seed: int, text_dropout: float, mask_dropout: float,
                 empty_mask_dropout: float = 0.0, weights=None, first_caption_share: float = 0.0,
                 part_classes=None):
        if cache.num_local + 1 != NUM_CONDITIONS:
            raise InputError(f"cache has {cache.num_local} local masks, this version needs {NUM_CONDITIONS - 1}")
        self.cache = cache
        self.seed = seed
        self.text_dropout = text_dropout
        self.mask_dropout = mask_dropout
        self.empty_mask_dropout = empty_mask_dropout
        self.first_caption_share = first_caption_share
        self.part_classes = None if part_classes is None else list(part_classes)
        self.order = sample_order(cache.num_samples, seed, weights)  # weights: one per cached sample

    def __len__(self) -> int:
        return self.cache.num_samples

    def __getitem__(self, position: int) -> dict:
        cache = self.cache
        index = self.order.sample_index(position)
        sample = cache.sample(index)
        captions = sample["caption_ids"]
        draws = draw_for_position(self.seed, position, cache.token_shape, cache.num_local, len(captions),
                                  self.text_dropout, self.mask_dropout, self.empty_mask_dropout,
                                  self.first_caption_share)
        if draws.text_dropped or len(captions) == 0:
            prompt_embeds, pooled = cache.empty_prompt_embeds, cache.empty_pooled_prompt_embeds
        else:
            prompt_embeds, pooled = cache.text(int(captions[draws.caption]))
        item = {
            "position": position,
            "index": index,
            "image_tokens": sample["image_tokens"].float(),
            "condition_tokens": (cache.blank_local_tokens.expand(NUM_CONDITIONS, *cache.token_shape)
                                 if draws.mask_emptied else cache.condition_tokens(sample, draws.local_dropped)).float(),
            "prompt_embeds": prompt_embeds.float(),
            "pooled_prompt_embeds": pooled.float(),
            "noise": draws.noise,
            "timestep": draws.timestep,
            "text_dropped": torch.tensor(draws.text_dropped),
            "local_dropped": draws.local_dropped,
            "mask_emptied": torch.tensor(draws.mask_emptied),
        }
        if self.part_classes is not None:
            item["part_tokens"] = cache.covered_tokens(sample, self.part_classes)
        return item
