"""Big requests go through ``facemogle evaluate`` in bounded batches: no extractor call sees more than
``--batch-size`` images, images are decoded batch by batch (the number alive at once stays bounded,
whatever the number of images), and the numbers do not depend on the batch size. The same for the
generation step of ``evaluate --protocol``.

The extractors are stand-ins (per-image statistics of the pixels), so the tests run in a second;
``test_evaluate_cli`` runs the real loaders on tiny models.
"""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.labels import NUM_CLASSES
from facemogle.masks import save_mask

BATCH = 2
NUM_IMAGES = 3 * BATCH + 1
SIZE = 16
METRICS = ("fid", "kid", "cmmd", "dino", "text", "miou")


class AliveImages:
    """Wraps an image loader; counts the images it returned that are still referenced somewhere."""

    def __init__(self, load):
        self.load = load
        self.alive = 0
        self.most_alive = 0
        self.decoded = 0

    def _gone(self) -> None:
        self.alive -= 1

    def track(self, image):
        weakref.finalize(image, self._gone)
        self.alive += 1
        self.decoded += 1
        self.most_alive = max(self.most_alive, self.alive)
        return image

    def __call__(self, *args, **kwargs):
        return self.track(self.load(*args, **kwargs))


def pixel_features(images) -> torch.Tensor:
    """``(b, 6)``: per-channel mean and std of each image (a stand-in for Inception / CLIP)."""
    rows = []
    for image in images:
        pixels = np.asarray(image, dtype=np.float64) / 255.0
        rows.append(np.concatenate([pixels.mean((0, 1)), pixels.std((0, 1))]))
    return torch.tensor(np.stack(rows), dtype=torch.float32)


class Recorder:
    """The batch sizes every stand-in extractor was called with, and how many images were alive then."""

    def __init__(self, alive: AliveImages):
        self.alive = alive
        self.calls: dict[str, list[tuple[int, int]]] = {}

    def saw(self, name: str, images) -> None:
        self.calls.setdefault(name, []).append((len(images), self.alive.alive))


def install_stand_ins(monkeypatch, recorder: Recorder, *, dino_patch: int = 4):
    import facemogle.eval.evaluate as evaluate_module
    from facemogle.eval.features import ClipEncoder, DinoKeys, InceptionFeatures, cosine_self_similarity

    monkeypatch.setattr(evaluate_module, "load_rgb", recorder.alive)

    class Inception:
        def __init__(self, source):
            self.identity = InceptionFeatures.identity_of(source)

        def __call__(self, images):
            recorder.saw("inception", images)
            return pixel_features(images)

    class Clip:
        def __init__(self, source, preprocessing):
            self.identity = f"stand-in-clip|{source}|{preprocessing}"
            self.name = f"clip-{preprocessing}"

        def encode_images(self, images):
            recorder.saw(self.name, images)
            return torch.nn.functional.normalize(pixel_features(images), dim=-1)

        def encode_texts(self, texts):
            recorder.saw("texts", texts)
            return torch.nn.functional.normalize(
                torch.tensor([[len(text), text.count("a"), text.count("e"), 1.0, 2.0, 3.0] for text in texts]), dim=-1
            )

    class Dino:
        def __init__(self, source, input_mode):
            self.identity = f"stand-in-dino|{source}|{input_mode}"
            self.input_mode = input_mode
            self.patch_size = dino_patch

        def self_similarity(self, images):
            recorder.saw("dino", images)
            tokens = []
            for image in images:  # 4 tokens: the mean colour of each quadrant
                pixels = np.asarray(image, dtype=np.float32) / 255.0
                half = pixels.shape[0] // 2
                tokens.append([pixels[r : r + half, c : c + half].mean((0, 1)) for r in (0, half) for c in (0, half)])
            return cosine_self_similarity(torch.tensor(np.asarray(tokens)))

    monkeypatch.setattr(InceptionFeatures, "from_pretrained", staticmethod(lambda source, **_: Inception(source)))
    monkeypatch.setattr(ClipEncoder, "from_pretrained",
                        staticmethod(lambda source, *, preprocessing="clip", **_: Clip(source, preprocessing)))
    monkeypatch.setattr(DinoKeys, "from_pretrained",
                        staticmethod(lambda source, *, input_mode="reference", **_: Dino(source, input_mode)))


class PixelParser:
    """Class ids from the red channel of each image (so a mis-paired mask changes the score)."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def parse(self, images):
        self.recorder.saw("parser", images)
        return np.stack([(np.asarray(image)[..., 0] // 16 % NUM_CLASSES).astype(np.uint8) for image in images])


@pytest.fixture(scope="module")
def many_images(tmp_path_factory, make_image, make_id_map) -> dict[str, Path]:
    """3 x BATCH + 1 tiny generated images with real photos, masks and prompts of the same stems."""
    root = tmp_path_factory.mktemp("many")
    folders = {name: root / name for name in ("gen", "real", "masks")}
    for folder in folders.values():
        folder.mkdir()
    prompts = {}
    for index in range(NUM_IMAGES):
        stem = str(27000 + index)
        make_image(index, SIZE).save(folders["gen"] / f"{stem}.png")
        make_image(500 + index, SIZE).save(folders["real"] / f"{stem}.png")
        save_mask(make_id_map(index, SIZE), folders["masks"] / f"{stem}.png")
        prompts[stem] = f"a face number {index}" + " with a smile" * (index % 3)
    folders["prompts"] = root / "prompts.json"
    folders["prompts"].write_text(json.dumps(prompts))
    folders["inception"] = root / "stand-in-inception.pth"
    folders["inception"].write_bytes(b"not read: the extractor is a stand-in")
    return folders


def run_evaluation(folders: dict[str, Path], batch_size: int, monkeypatch, *, metrics=METRICS,
                   dino_patch: int = 4) -> tuple[dict, Recorder]:
    from facemogle.eval.evaluate import EvaluationSettings, evaluate
    from facemogle.eval.image_sets import load_rgb

    recorder = Recorder(AliveImages(load_rgb))
    install_stand_ins(monkeypatch, recorder, dino_patch=dino_patch)
    settings = EvaluationSettings(
        generated=folders["gen"], real=folders["real"], masks=folders["masks"], prompts=folders["prompts"],
        metrics=metrics, inception=str(folders["inception"]), clip="org/clip", clip_large="org/clip-large",
        dino="org/dino", batch_size=batch_size, cache=False, kid_subsets=3, progress=False,
    )
    return evaluate(settings, parser=PixelParser(recorder)), recorder


def test_evaluate_decodes_and_extracts_in_bounded_batches(many_images, monkeypatch):
    report, recorder = run_evaluation(many_images, BATCH, monkeypatch)
    assert report["inputs"]["num_images"] == NUM_IMAGES
    batches = math.ceil(NUM_IMAGES / BATCH)
    expected_calls = {  # per folder: generated, then real
        "inception": 2 * batches, "clip-cmmd": 2 * batches, "clip-clip": batches, "texts": batches,
        "dino": 2 * batches, "parser": batches,
    }
    assert {name: len(calls) for name, calls in recorder.calls.items()} == expected_calls
    for name, calls in recorder.calls.items():
        sizes = [size for size, _ in calls]
        assert max(sizes) <= BATCH, name
        per_folder = 2 if name in ("inception", "clip-cmmd", "dino") else 1
        assert sum(sizes) == per_folder * NUM_IMAGES, name
        if name in ("inception", "clip-cmmd", "clip-clip", "parser"):
            # nothing but the batch being encoded is decoded: earlier batches are gone, later not read yet
            assert all(alive == size for size, alive in calls), (name, calls)
        elif name == "dino":  # a batch of generated images and their real photos
            assert all(alive <= 2 * size for size, alive in calls), (name, calls)
    assert recorder.alive.most_alive <= 2 * BATCH < NUM_IMAGES
    assert recorder.alive.alive == 0  # nothing decoded is kept once the report is made


def test_evaluate_numbers_do_not_depend_on_the_batch_size(many_images, monkeypatch):
    batched, _ = run_evaluation(many_images, BATCH, monkeypatch)
    whole, recorder = run_evaluation(many_images, NUM_IMAGES, monkeypatch)
    assert max(size for calls in recorder.calls.values() for size, _ in calls) == NUM_IMAGES  # one batch
    assert batched["metrics"].keys() == whole["metrics"].keys()
    for name, value in whole["metrics"].items():  # numbers, and the per-class IoU dictionary
        assert batched["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert whole["metrics"]["fid"] > 0 and whole["metrics"]["mask_miou"] > 0


def test_dino_reference_mode_refuses_images_smaller_than_a_patch_by_name(many_images, monkeypatch):
    from facemogle.errors import InputError

    with pytest.raises(InputError, match=rf"27000.png is {SIZE}x{SIZE} pixels, smaller than the DINO patch"):
        run_evaluation(many_images, BATCH, monkeypatch, metrics=("dino",), dino_patch=SIZE + 1)


class StandInPipeline:
    """Returns a flat grey image per request; records the batch sizes, the files already written at each
    call, and how many of its earlier outputs are still alive then."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.outputs = AliveImages(lambda seed: Image.new("RGB", (SIZE, SIZE), (seed % 256,) * 3))
        self.calls: list[tuple[int, int, int]] = []

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, *, mask, prompt, seed, **kwargs):
        assert len(mask) == len(prompt) == len(seed)
        self.calls.append((len(seed), len(list(self.output_dir.glob("*.png"))), self.outputs.alive))
        return SimpleNamespace(images=[self.outputs(one) for one in seed])


def test_protocol_generation_writes_each_bounded_batch_before_the_next(tmp_path):
    from facemogle.eval.paper_protocol import GenerationSettings, ProtocolImage, generate_images

    images = [ProtocolImage(str(27000 + index), tmp_path / "face.jpg", tmp_path / "mask.png", f"face {index}")
              for index in range(NUM_IMAGES)]
    output_dir = tmp_path / "generated"
    pipe = StandInPipeline(output_dir)
    generated = generate_images(lambda: pipe, images, "mask+text", GenerationSettings(batch_size=BATCH), output_dir,
                                progress=False)
    assert generated == [image.stem for image in images]
    assert sorted(path.stem for path in output_dir.glob("*.png")) == generated
    sizes = [size for size, _, _ in pipe.calls]
    assert max(sizes) <= BATCH and sum(sizes) == NUM_IMAGES
    # each batch is on disk before the next is asked for, and at most the previous batch is still in memory
    assert [written for _, written, _ in pipe.calls] == [BATCH * k for k in range(len(pipe.calls))]
    assert all(alive <= BATCH for _, _, alive in pipe.calls)
    assert pipe.outputs.most_alive <= 2 * BATCH < NUM_IMAGES
