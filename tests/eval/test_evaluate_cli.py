"""``facemogle evaluate`` end to end, offline, with tiny random feature extractors on small PNGs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facemogle.cli import main
from facemogle.eval.cache import CACHE_FOLDER_NAME
from facemogle.eval.protocol import PAPER_TABLE1
from facemogle.labels import CLASS_NAMES
from facemogle.masks import save_mask

NUM_IMAGES = 3
FIRST_SENTENCES = ["a young woman with wavy blond hair", "an old man with a grey beard", "a smiling girl"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_image, make_id_map) -> dict[str, Path]:
    """gen/ (PNG), real/ (JPEG, one extra photo), masks/ (palette PNG), text.json (several sentences)."""
    root = tmp_path_factory.mktemp("evaluate")
    paths = {name: root / name for name in ("gen", "real", "masks")}
    for path in paths.values():
        path.mkdir()
    captions = {}
    for index in range(NUM_IMAGES):
        stem = str(27000 + index)
        make_image(index).save(paths["gen"] / f"{stem}.png")
        make_image(100 + index).save(paths["real"] / f"{stem}.jpg", quality=95)
        save_mask(make_id_map(index), paths["masks"] / f"{stem}.png")
        captions[f"{stem}.jpg"] = [FIRST_SENTENCES[index], "a second sentence that must not be used"]
    make_image(999).save(paths["real"] / "29999.jpg")  # a real photo without generated partner: ignored
    paths["prompts"] = root / "text.json"
    paths["prompts"].write_text(json.dumps(captions))
    return paths


class StubParser:
    """Predicts each mask rolled by 4 pixels, at half resolution (the command resizes it back)."""

    def __init__(self, make_id_map):
        self.predictions = [np.roll(make_id_map(index), 4, axis=1)[::2, ::2] for index in range(NUM_IMAGES)]
        self.calls = 0

    def parse(self, images):
        batch = self.predictions[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return np.stack(batch)


def model_arguments(tiny_inception_file, tiny_clip_dir, tiny_dino_dir) -> list[str]:
    return [
        "--inception", str(tiny_inception_file), "--clip", str(tiny_clip_dir), "--clip-large", str(tiny_clip_dir),
        "--dino", str(tiny_dino_dir), "--device", "cpu", "--offline", "--quiet",
    ]


def expected_text_score(clip_dir: Path, image_paths: list[Path]) -> float:
    """Mean 100 x cosine(image, first sentence) with transformers' own processor and tokenizer."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = CLIPModel.from_pretrained(clip_dir).eval()
    images = [Image.open(path).convert("RGB") for path in image_paths]
    pixels = CLIPImageProcessorPil.from_pretrained(clip_dir)(images=images, return_tensors="pt")["pixel_values"]
    tokens = AutoTokenizer.from_pretrained(clip_dir)(FIRST_SENTENCES, padding=True, truncation=True,
                                                     max_length=model.config.text_config.max_position_embeddings,
                                                     return_tensors="pt")
    with torch.no_grad():
        image_embeddings = model.visual_projection(model.vision_model(pixel_values=pixels.float()).pooler_output)
        text_embeddings = model.text_projection(model.text_model(**tokens).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1)
    return float(100 * cosine.mean())


def expected_mask_scores(make_id_map) -> tuple[float, float]:
    """mIoU over classes present in either (accumulated counts) and pixel accuracy, by explicit loops."""
    references = [make_id_map(index) for index in range(NUM_IMAGES)]
    predictions = [np.kron(np.roll(r, 4, axis=1)[::2, ::2], np.ones((2, 2), np.uint8)) for r in references]
    ious = []
    for c in range(len(CLASS_NAMES)):
        union = sum(np.logical_or(p == c, r == c).sum() for p, r in zip(predictions, references))
        if union:
            ious.append(sum(np.logical_and(p == c, r == c).sum() for p, r in zip(predictions, references)) / union)
    accuracy = sum((p == r).sum() for p, r in zip(predictions, references)) / sum(r.size for r in references)
    return float(np.mean(ious)), float(accuracy)


def test_evaluate_writes_json_and_table_and_reuses_cached_features(
    folders, tiny_inception_file, tiny_clip_dir, tiny_dino_dir, make_id_map, monkeypatch, tmp_path, capsys
):
    import facemogle.eval.evaluate as evaluate_module
    from facemogle.eval.features import ClipEncoder, InceptionFeatures

    parser = StubParser(make_id_map)
    monkeypatch.setattr(evaluate_module, "load_face_parser", lambda path: parser)
    output, table = tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.md"
    arguments = [
        "evaluate", "--generated", str(folders["gen"]), "--real", str(folders["real"]),
        "--masks", str(folders["masks"]), "--prompts", str(folders["prompts"]),
        "--metrics", "fid,kid,cmmd,text,dino,miou", "--label", "tiny run",
        *model_arguments(tiny_inception_file, tiny_clip_dir, tiny_dino_dir), "-o", str(output), "--table", str(table),
    ]
    assert main(arguments) == 0
    report = json.loads(output.read_text())
    metrics = report["metrics"]

    assert report["inputs"]["num_images"] == NUM_IMAGES
    assert report["metrics_requested"] == ["fid", "kid", "cmmd", "dino", "text", "miou"]
    assert metrics["fid"] > 0 and np.isfinite(metrics["fid"])
    assert np.isfinite(metrics["kid_x1000"]) and metrics["kid_subset_size"] == NUM_IMAGES
    assert metrics["cmmd_x1000"] > 0
    assert metrics["text"] == pytest.approx(expected_text_score(tiny_clip_dir, sorted(folders["gen"].glob("*.png"))),
                                            abs=1e-3)
    # Fewer than 64 images: one reference batch, whose sum is N x the per-image mean.
    assert metrics["dino_structure_per_image"] > 0
    assert metrics["dino_structure_reference"] == pytest.approx(NUM_IMAGES * metrics["dino_structure_per_image"])
    miou, accuracy = expected_mask_scores(make_id_map)
    assert metrics["mask_miou"] == pytest.approx(miou)
    assert metrics["mask_pixel_accuracy"] == pytest.approx(accuracy)
    assert set(metrics["mask_per_class_iou"]) <= set(CLASS_NAMES)
    assert "image_reward" not in metrics
    assert set(report["extractors"]) == {"inception", "clip", "clip_large", "dino", "parser"}

    markdown = table.read_text()
    assert "| Method | FID ↓ | KID ↓ | CMMD ↓ | Mask ↓ | Text ↑ | IR ↑ |" in markdown
    assert f"| **tiny run** | {metrics['fid']:.2f} | {metrics['kid_x1000']:.2f} | {metrics['cmmd_x1000']:.3f} | " \
           f"{metrics['dino_structure_reference']:.2f} | {metrics['text']:.2f} | – |" in markdown
    assert all(name in markdown for name, _ in PAPER_TABLE1)
    assert f"| **tiny run** | {100 * miou:.2f} | {100 * accuracy:.2f} |" in markdown
    assert "| class | IoU (%) |" in markdown
    assert "wrote" in capsys.readouterr().out

    # A second run reads every image feature from the caches beside the images.
    assert any((folders["gen"] / CACHE_FOLDER_NAME).glob("inception-*.safetensors"))
    assert any((folders["real"] / CACHE_FOLDER_NAME).glob("cmmd-clip-*.safetensors"))

    def refuse(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(InceptionFeatures, "from_pretrained", staticmethod(refuse))  # not even loaded
    monkeypatch.setattr(InceptionFeatures, "__call__", refuse)
    monkeypatch.setattr(ClipEncoder, "encode_images", refuse)
    monkeypatch.setattr(evaluate_module._Evaluation, "_dino_batch", staticmethod(refuse))
    again = tmp_path / "again.json"
    arguments[arguments.index("-o") + 1] = str(again)
    parser.calls = 0
    assert main(arguments) == 0
    assert json.loads(again.read_text())["metrics"] == metrics


def test_identical_folders_give_zero_distances(folders, tiny_inception_file, tiny_clip_dir, tiny_dino_dir, tmp_path):
    output = tmp_path / "same.json"
    arguments = [
        "evaluate", "--generated", str(folders["gen"]), "--real", str(folders["gen"]), "--metrics", "fid,kid,cmmd,dino",
        "--kid-subsets", "5", *model_arguments(tiny_inception_file, tiny_clip_dir, tiny_dino_dir), "-o", str(output),
    ]
    assert main(arguments) == 0
    metrics = json.loads(output.read_text())["metrics"]
    assert abs(metrics["fid"]) < 1e-6
    assert metrics["cmmd_x1000"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["dino_structure_per_image"] == pytest.approx(0.0, abs=1e-9)


def _error_cases(folders, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    partial_real = tmp_path / "partial"
    partial_real.mkdir()
    (partial_real / "27000.jpg").write_bytes((folders["real"] / "27000.jpg").read_bytes())
    partial_prompts = tmp_path / "prompts.json"
    partial_prompts.write_text(json.dumps({"27000": "a face"}))
    gen, real = str(folders["gen"]), str(folders["real"])
    return {
        "empty generated folder": (["--generated", str(empty), "--real", real, "--inception", "x"], "holds no images"),
        "missing generated folder": (["--generated", str(tmp_path / "nope"), "--real", real, "--inception", "x"],
                                     "does not exist"),
        "unpaired files": (["--generated", gen, "--real", str(partial_real), "--metrics", "dino", "--dino", "x/y"],
                           "2 of 3 generated images have no real photo"),
        "unknown metric": (["--generated", gen, "--metrics", "fid,lpips"], "unknown metric(s) lpips"),
        "no real folder": (["--generated", gen, "--metrics", "kid"], "give --real DIR"),
        "missing extractor": (["--generated", gen, "--real", real], "needs the FID Inception-v3 weights"),
        "missing extractor path": (["--generated", gen, "--real", real, "--inception", str(tmp_path / "no.pth")],
                                   "do not exist"),
        "missing model folder": (["--generated", gen, "--real", real, "--metrics", "cmmd",
                                  "--clip-large", str(tmp_path / "no" / "clip")], "does not exist"),
        "no prompts": (["--generated", gen, "--metrics", "text", "--clip", "x/y"], "give --prompts FILE"),
        "missing prompts": (["--generated", gen, "--metrics", "text", "--clip", "x/y", "--prompts", str(partial_prompts)],
                            "2 of 3 generated images have no prompt"),
        "no masks": (["--generated", gen, "--metrics", "miou"], "give --masks DIR"),
        "output not json": (["--generated", gen, "--real", real, "--inception", "x"], "must end in .json"),
    }


@pytest.mark.parametrize("case", [
    "empty generated folder", "missing generated folder", "unpaired files", "unknown metric", "no real folder",
    "missing extractor", "missing extractor path", "missing model folder", "no prompts", "missing prompts",
    "no masks", "output not json",
])
def test_evaluate_errors_are_one_line_messages(case, folders, tmp_path, capsys):
    arguments, message = _error_cases(folders, tmp_path)[case]
    output = tmp_path / ("out.txt" if case == "output not json" else "out.json")
    assert main(["evaluate", *arguments, "--quiet", "-o", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("facemogle evaluate: error: ") and message in error
    assert error.count("\n") == 1
    assert not output.exists()


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None, reason="ImageReward is installed")
def test_image_reward_without_its_package_is_a_clear_error(folders, tmp_path, capsys):
    arguments = ["evaluate", "--generated", str(folders["gen"]), "--prompts", str(folders["prompts"]),
                 "--metrics", "ir", "--image-reward", str(tmp_path), "-o", str(tmp_path / "ir.json")]
    assert main(arguments) == 2
    assert "needs the optional ImageReward package" in capsys.readouterr().err


def test_metric_names_and_all():
    from facemogle.errors import InputError
    from facemogle.eval.evaluate import parse_metrics
    from facemogle.eval.protocol import METRICS

    assert parse_metrics(" KID, fid ") == ("fid", "kid")  # table order, case and spaces ignored
    assert parse_metrics("all") == METRICS
    with pytest.raises(InputError, match="no metric"):
        parse_metrics(" , ")
