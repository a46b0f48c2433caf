"""``facemogle evaluate --protocol``: test-set selection, prompts, per-image seeds, resuming, reports.

A tiny MM-CelebA-HQ-layout folder (3 test ids, 3 ids that are not test ids) is generated from with
the in-memory ``tiny-random`` model at 64 px and 1 step, and evaluated with the tiny random feature
extractors of ``conftest.py``. The pipeline is built once and wrapped in a spy that records every call.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemogle.cli import main
from facemogle.errors import InputError
from facemogle.eval import paper_protocol
from facemogle.eval.paper_protocol import (
    GENERATED_FOLDER,
    MANIFEST_NAME,
    PAPER_SEED,
    GenerationSettings,
    generate_images,
    generation_manifest,
    image_seed,
    prepare_mode_folder,
    seeded_choice,
    select_images,
)
from facemogle.eval.protocol import PAPER_TABLE1
from facemogle.masks import save_mask

from .test_evaluate_cli import model_arguments

TEST_IDS = ["27000", "27003", "29999"]
NOT_TEST_IDS = ["5", "26999", "30001"]  # train ids, and an id past CelebA-HQ's 30,000 images
SIZE = 64
SENTENCES_PER_CAPTION = 3
TEXT_JSON_ID = "29999"  # captioned in text.json only; the others in text/<id>.txt
#: PNG pixels of one image generated in different batches may differ by one grey level (float
#: sums of a batched matmul are not bit-identical on CPU); different seeds differ by far more.
BATCH_ROUNDING = 1


def caption(stem: str) -> list[str]:
    return [f"sentence {k} of face {stem}" for k in range(SENTENCES_PER_CAPTION)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_image, make_id_map) -> Path:
    """face/<id>.jpg, mask/<id>.png, text/<id>.txt (+ text.json for one id), test and non-test ids."""
    root = tmp_path_factory.mktemp("mm-celeba-hq")
    for name in ("face", "mask", "text"):
        (root / name).mkdir()
    for index, stem in enumerate(TEST_IDS + NOT_TEST_IDS):
        make_image(index).save(root / "face" / f"{stem}.jpg", quality=95)
        save_mask(make_id_map(index), root / "mask" / f"{stem}.png")
        if stem != TEXT_JSON_ID:
            (root / "text" / f"{stem}.txt").write_text("\n".join(caption(stem)) + "\n")
    (root / "text.json").write_text(json.dumps({f"{TEXT_JSON_ID}.jpg": caption(TEXT_JSON_ID)}))
    return root


@pytest.fixture(scope="module")
def tiny_pipe():
    from facemogle.specs import load_pipeline

    return load_pipeline("tiny-random", seed=0)


class SpyPipeline:
    """Forwards to the tiny pipeline and records the keyword arguments of every call."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.calls: list[dict] = []

    def set_progress_bar_config(self, **kwargs):
        self.pipe.set_progress_bar_config(**kwargs)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)

    def seeds(self) -> list[int]:
        return [seed for call in self.calls for seed in call["seed"]]


@pytest.fixture
def spy(tiny_pipe, monkeypatch) -> SpyPipeline:
    """Replaces ``facemogle.specs.load_pipeline``; ``spy.loads`` lists (name, options) of each load."""
    import facemogle.specs

    spy = SpyPipeline(tiny_pipe)
    spy.loads = []

    def load(name, **options):
        spy.loads.append((name, options))
        return spy

    monkeypatch.setattr(facemogle.specs, "load_pipeline", load)
    return spy


class ZeroParser:
    """A face parser that predicts background everywhere."""

    def parse(self, images):
        return np.zeros((len(images), SIZE, SIZE), dtype=np.uint8)


def protocol_arguments(dataset: Path, work: Path, *extra: str) -> list[str]:
    return ["evaluate", "--protocol", "mmcelebahq", str(dataset), "--model", "tiny-random", "--size", str(SIZE),
            "--steps", "1", "--work-dir", str(work), "--device", "cpu", "--quiet", *extra]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_protocol_generates_the_test_ids_then_evaluates_and_resumes(
    dataset, spy, tmp_path, tiny_inception_file, tiny_clip_dir, tiny_dino_dir, monkeypatch, capsys
):
    import facemogle.eval.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "load_face_parser", lambda path: ZeroParser())
    work = tmp_path / "work"
    arguments = protocol_arguments(
        dataset, work, "--batch-size", "2", "--metrics", "fid,kid,cmmd,dino,text,miou",
        *model_arguments(tiny_inception_file, tiny_clip_dir, tiny_dino_dir),
    )
    assert main(arguments) == 0
    assert spy.loads == [("tiny-random", {"device": "cpu"})]

    # Only the test ids, in id order, in batches of 2, each with its first sentence, its mask and seed 42 + id.
    generated = work / "mask-text" / GENERATED_FOLDER
    assert sorted(path.name for path in generated.iterdir()) == [f"{stem}.png" for stem in TEST_IDS]
    assert all(Image.open(generated / f"{stem}.png").size == (SIZE, SIZE) for stem in TEST_IDS)
    assert [len(call["prompt"]) for call in spy.calls] == [2, 1]
    assert [p for call in spy.calls for p in call["prompt"]] == [caption(stem)[0] for stem in TEST_IDS]
    assert [Path(m).name for call in spy.calls for m in call["mask"]] == [f"{stem}.png" for stem in TEST_IDS]
    assert spy.seeds() == [PAPER_SEED + int(stem) for stem in TEST_IDS]
    assert all(call["num_inference_steps"] == 1 and call["height"] == SIZE and call["guidance_scale"] == 3.5
               for call in spy.calls)
    assert json.loads((work / "mask-text" / "prompts.json").read_text()) == {s: caption(s)[0] for s in TEST_IDS}

    result = json.loads((work / "eval.json").read_text())
    (report,) = result["runs"]
    assert report["label"] == "facemogle (mask + text)"
    assert report["inputs"]["num_images"] == len(TEST_IDS)
    assert report["inputs"]["real"] == str(dataset / "face")
    assert report["protocol"]["generation"]["seed"] == PAPER_SEED
    assert report["protocol"]["generation"]["model"] == "tiny-random"
    metrics = report["metrics"]
    assert {"fid", "kid_x1000", "cmmd_x1000", "dino_structure_reference", "text", "mask_miou"} <= set(metrics)
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert json.loads((work / "mask-text" / "eval.json").read_text())["metrics"] == metrics
    table = (work / "eval.md").read_text()
    assert f"| **facemogle (mask + text)** | {metrics['fid']:.2f} | {metrics['kid_x1000']:.2f} |" in table
    assert all(name in table for name, _ in PAPER_TABLE1)
    assert "wrote" in capsys.readouterr().out
    assert not any(path.name.startswith(".") for path in (dataset / "face").iterdir())  # the dataset stays untouched

    # Resume: every image exists, so nothing is generated and the model is not even loaded.
    modified = {stem: (generated / f"{stem}.png").stat().st_mtime_ns for stem in TEST_IDS}
    assert main(arguments) == 0
    assert len(spy.loads) == 1 and len(spy.calls) == 2
    assert {stem: (generated / f"{stem}.png").stat().st_mtime_ns for stem in TEST_IDS} == modified
    again = json.loads((work / "eval.json").read_text())["runs"][0]
    assert again["metrics"] == metrics and again["protocol"]["generated_this_run"] == 0


def test_an_image_depends_only_on_its_id_and_the_seed(dataset, tiny_pipe, tmp_path):
    settings = GenerationSettings(model="tiny-random", steps=1, size=SIZE, batch_size=len(TEST_IDS))
    everything = select_images("mmcelebahq", dataset)
    assert generate_images(lambda: tiny_pipe, everything, "mask+text", settings, tmp_path / "all",
                           progress=False) == TEST_IDS
    # The first two ids only, in reverse order, one per call.
    subset = list(reversed(select_images("mmcelebahq", dataset, limit=2)))
    alone = GenerationSettings(model="tiny-random", steps=1, size=SIZE, batch_size=1)
    assert generate_images(lambda: tiny_pipe, subset, "mask+text", alone, tmp_path / "subset",
                           progress=False) == ["27003", "27000"]
    for stem in ("27000", "27003"):
        difference = np.abs(pixels(tmp_path / "all" / f"{stem}.png") - pixels(tmp_path / "subset" / f"{stem}.png"))
        assert difference.max() <= BATCH_ROUNDING and difference.mean() < 0.05
    # ... while another id or another base seed gives another image.
    assert np.abs(pixels(tmp_path / "all" / "27000.png") - pixels(tmp_path / "all" / "27003.png")).mean() > 10
    reseeded = GenerationSettings(model="tiny-random", steps=1, size=SIZE, seed=PAPER_SEED + 1, batch_size=1)
    generate_images(lambda: tiny_pipe, subset[1:], "mask+text", reseeded, tmp_path / "reseeded", progress=False)
    assert np.abs(pixels(tmp_path / "all" / "27000.png") - pixels(tmp_path / "reseeded" / "27000.png")).mean() > 10
    assert image_seed(PAPER_SEED, "29999") == 30041
    assert image_seed(0, "00129b5490b5") == int(hashlib.sha256(b"00129b5490b5").hexdigest()[:8], 16)
    assert image_seed(1, "00129b5490b5") == image_seed(0, "00129b5490b5") + 1


def test_resume_generates_only_the_missing_images(dataset, tiny_pipe, tmp_path):
    images = select_images("mmcelebahq", dataset)
    settings = GenerationSettings(model="tiny-random", steps=1, size=SIZE, batch_size=2)
    generate_images(lambda: tiny_pipe, images, "mask", settings, tmp_path, progress=False)
    (tmp_path / "27003.png").unlink()
    kept = {stem: (tmp_path / f"{stem}.png").stat().st_mtime_ns for stem in TEST_IDS if stem != "27003"}

    spy = SpyPipeline(tiny_pipe)
    before = (tmp_path / "27000.png").read_bytes()  # 27003's batch partner
    assert generate_images(lambda: spy, images, "mask", settings, tmp_path, progress=False) == ["27003"]
    # its batch is made whole again (the same batch as an uninterrupted run), only 27003 is written
    assert spy.seeds() == [PAPER_SEED + 27000, PAPER_SEED + 27003]
    assert (tmp_path / "27000.png").read_bytes() == before
    assert spy.calls[0]["prompt"] is None  # mask only: the empty prompt
    assert {stem: (tmp_path / f"{stem}.png").stat().st_mtime_ns for stem in kept} == kept
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no partial files left

    def must_not_load():
        raise AssertionError("the pipeline was loaded although every image exists")

    assert generate_images(must_not_load, images, "mask", settings, tmp_path, progress=False) == []


def test_mode_all_runs_the_paper_three_rows(dataset, spy, tmp_path, tiny_clip_dir):
    work = tmp_path / "work"
    arguments = protocol_arguments(dataset, work, "--mode", "all", "--limit", "2", "--metrics", "text",
                                   "--clip", str(tiny_clip_dir), "--offline")
    assert main(arguments) == 0
    assert len(spy.loads) == 1  # one pipeline for the three modes
    for folder in ("mask-text", "mask", "text"):
        assert sorted(p.name for p in (work / folder / GENERATED_FOLDER).iterdir()) == ["27000.png", "27003.png"]
    both, mask_only, text_only = spy.calls
    assert both["prompt"] == [caption("27000")[0], caption("27003")[0]] and len(both["mask"]) == 2
    assert mask_only["prompt"] is None and len(mask_only["mask"]) == 2
    assert text_only["mask"] is None and text_only["prompt"] == both["prompt"]
    assert all(call["seed"] == [PAPER_SEED + 27000, PAPER_SEED + 27003] for call in spy.calls)

    result = json.loads((work / "eval.json").read_text())
    labels = [report["label"] for report in result["runs"]]
    assert labels == ["facemogle (mask + text)", "facemogle (mask only)", "facemogle (text only)"]
    table = (work / "eval.md").read_text()
    for report in result["runs"]:
        assert f"| **{report['label']}** | – | – | – | – | {report['metrics']['text']:.2f} | – |" in table


def test_a_work_dir_of_other_settings_or_images_is_refused(dataset, tmp_path):
    protocol, mode = paper_protocol.PROTOCOLS["mmcelebahq"], paper_protocol.MODES["mask+text"]
    settings = GenerationSettings(model="tiny-random", steps=1, size=SIZE)
    manifest = generation_manifest(protocol, mode, dataset, settings)
    prepare_mode_folder(tmp_path, manifest, TEST_IDS)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["num_inference_steps"] == 1
    for stem in TEST_IDS:
        (tmp_path / GENERATED_FOLDER / f"{stem}.png").write_bytes(b"")
    prepare_mode_folder(tmp_path, manifest, TEST_IDS)  # same settings: resumes

    other = generation_manifest(protocol, mode, dataset, GenerationSettings(model="tiny-random", steps=2, size=SIZE))
    with pytest.raises(InputError, match="num_inference_steps: 1 then, 2 now"):
        prepare_mode_folder(tmp_path, other, TEST_IDS)
    with pytest.raises(InputError, match=r"holds 2 image\(s\) outside this selection \(27003, 29999\)"):
        prepare_mode_folder(tmp_path, manifest, TEST_IDS[:1])
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(InputError, match="holds images but no generation.json"):
        prepare_mode_folder(tmp_path, manifest, TEST_IDS)


def test_a_manifest_without_images_does_not_lock_the_work_dir(dataset, tmp_path):
    """A run that failed before its first image (e.g. a size the model refuses) left only its manifest:
    a run with other settings takes the folder over instead of asking for another --work-dir."""
    protocol, mode = paper_protocol.PROTOCOLS["mmcelebahq"], paper_protocol.MODES["mask+text"]
    failed = generation_manifest(protocol, mode, dataset, GenerationSettings(model="tiny-random", steps=1, size=17))
    prepare_mode_folder(tmp_path, failed, TEST_IDS)
    fixed = generation_manifest(protocol, mode, dataset, GenerationSettings(model="tiny-random", steps=1, size=SIZE))
    prepare_mode_folder(tmp_path, fixed, TEST_IDS)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["size"] == SIZE
    (tmp_path / GENERATED_FOLDER / f"{TEST_IDS[0]}.png").write_bytes(b"")  # once an image exists, it is locked
    with pytest.raises(InputError, match=f"size: {SIZE} then, 17 now"):
        prepare_mode_folder(tmp_path, failed, TEST_IDS)


def test_zero_shot_protocol_uses_every_image_and_a_seeded_sentence(dataset):
    images = select_images("mmffhq", dataset, seed=PAPER_SEED)
    assert [image.stem for image in images] == ["5", "26999", "27000", "27003", "29999", "30001"]
    for image in images:
        assert image.sentence == caption(image.stem)[seeded_choice(PAPER_SEED, image.stem, SENTENCES_PER_CAPTION)]
    assert select_images("mmffhq", dataset, seed=PAPER_SEED) == images  # deterministic
    chosen = [caption(image.stem).index(image.sentence) for image in images]
    assert len(set(chosen)) > 1  # not always the same sentence
    other_seed = [caption(i.stem).index(i.sentence) for i in select_images("mmffhq", dataset, seed=PAPER_SEED + 1)]
    assert other_seed != chosen
    assert paper_protocol.row_label("facemogle", paper_protocol.PROTOCOLS["mmffhq"],
                                    paper_protocol.MODES["mask+text"]) == "facemogle, zero-shot (mask + text)"


def _error_cases(dataset: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    train_only = tmp_path / "train-only"
    uncaptioned = tmp_path / "uncaptioned"
    for root, stem in ((train_only, "5"), (uncaptioned, "27000")):
        for name, suffix in (("face", ".jpg"), ("mask", ".png")):
            (root / name).mkdir(parents=True)
            source = dataset / name / f"{'5' if root is train_only else '27000'}{suffix}"
            (root / name / f"{stem}{suffix}").write_bytes(source.read_bytes())
    work = tmp_path / "work"
    return {
        "no test ids": (protocol_arguments(train_only, work, "--metrics", "fid", "--inception", "x"),
                        "holds no MM-CelebA-HQ test image (ids 27000..29999"),
        "no caption": (protocol_arguments(uncaptioned, work, "--metrics", "fid", "--inception", "x"),
                       "1 of 1 images of"),
        "not the layout": (protocol_arguments(tmp_path / "missing", work), "does not exist"),
        "bad limit": (protocol_arguments(dataset, work, "--limit", "0"), "limit must be >= 1"),
        "too few for fid": (protocol_arguments(dataset, work, "--limit", "1", "--metrics", "fid", "--inception", "x"),
                            "metric(s) fid need at least 2 images, got 1 (limit 1)"),
        "missing metric model": (protocol_arguments(dataset, work, "--metrics", "cmmd"), "give --clip-large"),
        "no work dir": (["evaluate", "--protocol", "mmcelebahq", str(dataset)], "needs DATA_DIR and --work-dir"),
        "generated and protocol": (protocol_arguments(dataset, work, "--generated", str(tmp_path)),
                                   "--generated cannot be combined with --protocol"),
        "flux options": (protocol_arguments(dataset, work, "--lora", "x.safetensors"),
                         "--lora only apply to --model flux-dev"),
        "protocol options alone": (["evaluate", "--generated", str(tmp_path), "--steps", "3", "-o", "x.json"],
                                   "--steps only apply with --protocol"),
        "nothing to evaluate": (["evaluate", "-o", "x.json"], "give --generated DIR"),
    }


@pytest.mark.parametrize("case", [
    "no test ids", "no caption", "not the layout", "bad limit", "too few for fid", "missing metric model", "no work dir",
    "generated and protocol", "flux options", "protocol options alone", "nothing to evaluate",
])
def test_protocol_errors_are_one_line_messages_before_any_generation(case, dataset, spy, tmp_path, capsys):
    arguments, message = _error_cases(dataset, tmp_path)[case]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("facemogle evaluate: error: ") and message in error
    assert error.count("\n") == 1
    assert spy.loads == [] and not (tmp_path / "work").exists()


def test_two_launched_processes_share_the_protocol_and_match_one(dataset, tmp_path):
    """accelerate launch with two CPU processes: each makes its batches, the main one evaluates; the
    images and the report's numbers are those of a single process."""
    from launch import run_facemogle

    single, shared = tmp_path / "single", tmp_path / "shared"
    extra = ("--batch-size", "1", "--metrics", "miou")
    run_facemogle(protocol_arguments(dataset, single, *extra))
    run_facemogle(protocol_arguments(dataset, shared, *extra), processes=2)
    for stem in TEST_IDS:
        name = f"mask-text/{GENERATED_FOLDER}/{stem}.png"
        assert np.array_equal(pixels(single / name), pixels(shared / name)), stem
    one, two = (json.loads((work / "eval.json").read_text())["runs"][0] for work in (single, shared))
    assert one["metrics"] == two["metrics"] and two["inputs"]["num_images"] == len(TEST_IDS)
    assert two["protocol"]["generated_this_run"] == 2  # the main process's share: batches 1 and 3 of 3
