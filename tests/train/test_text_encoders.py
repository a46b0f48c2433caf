"""The text stage of the bundled-model recipe: contrastive training of the CLIP / T5 pair."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, T5EncoderModel

from facemogle.train.text_encoders import TEXT_ENCODER_DIRS, info_nce, train_text_encoders


def test_info_nce_prefers_matching_pairs():
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    temperature = torch.tensor(2.6)
    matched = info_nce(a, a + 0.01 * torch.randn(8, 16), temperature)
    shuffled = info_nce(a, a[torch.randperm(8)], temperature)
    assert matched < 0.1 < shuffled


class Faces(torch.utils.data.Dataset):
    """Two kinds of face: dark and bright photos."""

    def __init__(self, n: int):
        self.images = [torch.full((3, 32, 32), 30 if i % 2 else 220, dtype=torch.uint8) for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def test_trains_both_encoders_and_saves_them(tmp_path):
    from facemogle.specs import load_pipeline

    pipe = load_pipeline("tiny-random", seed=0)
    before = [p.clone() for p in pipe.text_encoder.parameters()] + [p.clone() for p in pipe.text_encoder_2.parameters()]
    captions = [["A dark photo."] if i % 2 else ["A bright photo."] for i in range(8)]
    result = train_text_encoders(pipe, Faces(8), captions, tmp_path, max_steps=3, batch_size=4, max_sequence_length=32,
                                 progress=False)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    after = list(pipe.text_encoder.parameters()) + list(pipe.text_encoder_2.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(after) // 2
    assert not any(p.requires_grad for p in after) and not pipe.text_encoder.training
    clip = CLIPTextModel.from_pretrained(str(tmp_path / TEXT_ENCODER_DIRS[0]))
    t5 = T5EncoderModel.from_pretrained(str(tmp_path / TEXT_ENCODER_DIRS[1]))
    torch.testing.assert_close(next(clip.parameters()), next(pipe.text_encoder.parameters()))
    torch.testing.assert_close(next(t5.parameters()), next(pipe.text_encoder_2.parameters()))
    assert (tmp_path / "text_log.csv").read_text().startswith("step,loss")


def test_text_image_score_prefers_the_matching_caption_after_training(tmp_path):
    from facemogle.specs import load_pipeline
    from facemogle.train.text_encoders import SCORE_FILE, TextImageScore

    torch.manual_seed(0)
    pipe = load_pipeline("tiny-random", seed=0)
    captions = [["A dark photo."] if i % 2 else ["A bright photo."] for i in range(8)]
    train_text_encoders(pipe, Faces(8), captions, tmp_path, max_steps=40, batch_size=4, lr=3e-3,
                        max_sequence_length=32, progress=False)
    score = TextImageScore(pipe, tmp_path / SCORE_FILE)
    photos = torch.stack([Faces(2)[0]["image"], Faces(2)[1]["image"]])  # bright, dark
    matching = score(photos, ["A bright photo.", "A dark photo."])
    swapped = score(photos, ["A dark photo.", "A bright photo."])
    assert matching.shape == (2,) and (matching > swapped).all()


def test_text_image_score_names_a_missing_file(tmp_path):
    import pytest

    from facemogle.errors import CheckpointError
    from facemogle.specs import load_pipeline
    from facemogle.train.text_encoders import TextImageScore

    with pytest.raises(CheckpointError, match="no text-image score weights"):
        TextImageScore(load_pipeline("tiny-random", seed=0), tmp_path / "missing.safetensors")
