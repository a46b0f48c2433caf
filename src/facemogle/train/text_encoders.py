"""The text stage of the bundled-model recipe: train the byte-level CLIP / T5 pair on the captions.

The diffusion trainer keeps the text encoders frozen (their outputs are cached), and a frozen
*random* encoder maps "blond hair" and "black hair" to unrelated but uninformative vectors. Before
the diffusion stage, :func:`train_text_encoders` therefore trains both encoders of a small preset
with a CLIP-style contrastive loss against a small image tower that reads the photos at
``IMAGE_SIDE`` px:

    text_clip  = proj_c(CLIP pooled output)                       # (B, W)
    text_t5    = proj_t(mean of the T5 states over real tokens)   # (B, W)
    image      = ImageTower(photo)                                 # (B, W)
    loss       = InfoNCE(text_clip, image) + InfoNCE(text_t5, image)

so captions that describe visibly different faces (hair colour, length, glasses, hat, smile,
clothing and background colour: what the auto-captions say) get different embeddings, and the
diffusion transformer can learn to read them. The encoders are written with ``save_pretrained``
to ``<output_dir>/text_encoder`` and ``<output_dir>/text_encoder_2``; the image tower and the CLIP
projection are kept in ``<output_dir>/text_image_score.safetensors`` so that
:class:`TextImageScore` can measure how well a generated face matches its prompt (a CLIP-score
analogue for the tiny model, whose text side is not CLIP).
"""

from __future__ import annotations

import csv
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from facemogle.files import atomic_save_pretrained, atomic_save_safetensors, atomic_write_text

IMAGE_SIDE = 64
TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")
SCORE_FILE = "text_image_score.safetensors"
#: Linear learning-rate warm-up of the text stage (steps).
WARMUP_STEPS = 20


class ImageTower(nn.Module):
    """(B, 3, IMAGE_SIDE, IMAGE_SIDE) in [-1, 1] -> (B, width) embedding: strided convs + mean pool."""

    def __init__(self, width: int, channels: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        layers, previous = [], 3
        for c in channels:
            layers += [nn.Conv2d(previous, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            previous = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))  # (B, width)


def info_nce(a: torch.Tensor, b: torch.Tensor, log_temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss of matching rows of (B, W) ``a`` and ``b``."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T * log_temperature.exp()  # (B, B)
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def downsample(image: torch.Tensor) -> torch.Tensor:
    """(3, R, R) uint8 -> (3, IMAGE_SIDE, IMAGE_SIDE) float in [-1, 1] (area filter)."""
    pixels = image.float()[None] / 127.5 - 1
    return F.interpolate(pixels, size=(IMAGE_SIDE, IMAGE_SIDE), mode="area")[0]


@dataclass
class TextStageResult:
    output_dir: Path
    losses: list
    step_seconds: list


def encode_caption_batch(pipe, captions: list[str], max_sequence_length: int):
    """(CLIP pooled (B, Wc), T5 masked mean (B, Wt)) with gradients."""
    device = next(pipe.text_encoder.parameters()).device
    clip_inputs = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer_max_length,
                                 truncation=True, return_tensors="pt").to(device)
    pooled = pipe.text_encoder(clip_inputs.input_ids, output_hidden_states=False).pooler_output  # (B, Wc)
    t5_inputs = pipe.tokenizer_2(captions, padding="max_length", max_length=max_sequence_length, truncation=True,
                                 return_tensors="pt").to(device)
    states = pipe.text_encoder_2(t5_inputs.input_ids)[0]  # (B, L, Wt)
    real = t5_inputs.attention_mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
    return pooled, (states * real).sum(1) / real.sum(1).clamp_min(1)


def train_text_encoders(pipe, faces, captions: list[list[str]], output_dir: str | Path, *, max_steps: int,
                        batch_size: int = 32, lr: float = 3e-4, seed: int = 0, max_sequence_length: int = 512,
                        log_every: int = 10, time_budget_s: float | None = None, progress: bool = True) -> TextStageResult:
    """Train ``pipe.text_encoder`` and ``pipe.text_encoder_2`` in place (see the module docstring).

    Args:
        faces: a :class:`facemogle.data.datasets.FaceDataset` (``["image"]``: (3, R, R) uint8).
        captions: the sentences of each face (same order as ``faces``); one is drawn per step.
        time_budget_s: stop early after this many seconds (the recipe's pilot).
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    generator = random.Random(seed)
    torch.manual_seed(seed)
    width = pipe.text_encoder.config.hidden_size
    tower = ImageTower(width)
    proj_clip = nn.Linear(width, width)
    proj_t5 = nn.Linear(pipe.text_encoder_2.config.d_model, width)
    log_temperature = nn.Parameter(torch.tensor(2.6))  # exp = 13.5, CLIP's 1/0.07 init
    encoders = (pipe.text_encoder, pipe.text_encoder_2)
    for encoder in encoders:
        encoder.requires_grad_(True).train()
    parameters = [p for m in (*encoders, tower, proj_clip, proj_t5) for p in m.parameters()] + [log_temperature]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / WARMUP_STEPS))
    usable = [i for i, sentences in enumerate(captions) if sentences]
    photos = {i: downsample(faces[i]["image"]) for i in usable}  # read each photo once: (3, S, S) in [-1, 1]
    result = TextStageResult(output_dir=output_dir, losses=[], step_seconds=[])
    started_all = time.perf_counter()
    rows = []
    for step in tqdm(range(1, max_steps + 1), desc="text encoders", unit="step", disable=not progress):
        started = time.perf_counter()
        chosen = generator.sample(usable, min(batch_size, len(usable)))
        images = torch.stack([photos[i] for i in chosen])  # (B, 3, S, S)
        texts = [generator.choice(captions[i]) for i in chosen]
        pooled, mean_t5 = encode_caption_batch(pipe, texts, max_sequence_length)
        image_embeddings = tower(images)
        loss = info_nce(proj_clip(pooled), image_embeddings, log_temperature) + \
            info_nce(proj_t5(mean_t5), image_embeddings, log_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        warmup.step()
        result.losses.append(loss.item())
        result.step_seconds.append(time.perf_counter() - started)
        if step % log_every == 0 or step == max_steps:
            rows.append({"step": step, "loss": f"{result.losses[-1]:.5f}"})
        if time_budget_s is not None and time.perf_counter() - started_all > time_budget_s:
            break
    for encoder in encoders:
        encoder.requires_grad_(False).eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, encoder in zip(TEXT_ENCODER_DIRS, encoders):
        atomic_save_pretrained(encoder, output_dir / name, safe_serialization=True)
    atomic_save_safetensors(output_dir / SCORE_FILE, {**{f"tower.{k}": v for k, v in tower.state_dict().items()},
                                                      **{f"proj_clip.{k}": v for k, v in proj_clip.state_dict().items()}},
                            metadata={"width": str(width)})
    log = io.StringIO()
    writer = csv.DictWriter(log, fieldnames=["step", "loss"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output_dir / "text_log.csv", log.getvalue())
    return result


class TextImageScore(nn.Module):
    """Cosine similarity of a caption and a photo in the text stage's joint space, x 100 like CLIP score.

    Built from ``<text dir>/text_image_score.safetensors`` and the pipeline whose CLIP encoder was
    trained with it (``pipe.text_encoder``, ``pipe.tokenizer``).
    """

    def __init__(self, pipe, path: str | Path):
        super().__init__()
        from facemogle.errors import CheckpointError

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no text-image score weights (written by the tiny model's text stage)")
        state = load_file(str(path))
        width = pipe.text_encoder.config.hidden_size
        self.pipe = pipe
        self.tower = ImageTower(width)
        self.proj_clip = nn.Linear(width, width)
        self.tower.load_state_dict({k[len("tower."):]: v.float() for k, v in state.items() if k.startswith("tower.")})
        self.proj_clip.load_state_dict({k[len("proj_clip."):]: v.float() for k, v in state.items()
                                        if k.startswith("proj_clip.")})
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """(B, 3, H, W) uint8 photos + B captions -> (B,) scores in [-100, 100]."""
        pixels = F.interpolate(images.float() / 127.5 - 1, size=(IMAGE_SIDE, IMAGE_SIDE), mode="area")
        image = F.normalize(self.tower(pixels), dim=-1)  # (B, W)
        inputs = self.pipe.tokenizer(captions, padding="max_length", max_length=self.pipe.tokenizer_max_length,
                                     truncation=True, return_tensors="pt")
        encoder = self.pipe.text_encoder
        pooled = encoder(inputs.input_ids.to(encoder.device), output_hidden_states=False).pooler_output.float()
        text = F.normalize(self.proj_clip(pooled), dim=-1)  # (B, W)
        return 100 * (image * text).sum(-1)
