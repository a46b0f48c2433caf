"""The paper's evaluation end to end: pick the test images of a dataset folder, generate one face per
image, then compute the metrics (``facemogle evaluate --protocol NAME DATA_DIR``).

Protocols (METHOD.md sections 7 and 8); the dataset folder has MM-CelebA-HQ's layout
(``face/<id>.jpg``, ``mask/<id>.png``, ``text/<id>.txt`` or ``text.json``, read by
:func:`facemogle.data.datasets.index_dataset`):

==============  ====================================================  ================================
``mmcelebahq``  the official test ids 27000..29999 present, sorted    the **first** caption sentence
``mmffhq``      every image (zero-shot set, e.g. MM-FFHQ-Female)      one sentence per image, chosen by
                                                                      a hash of (seed, id)
==============  ====================================================  ================================

Modes (the paper's three rows): ``mask+text``; ``mask`` (empty prompt); ``text`` (empty mask, i.e.
all background). Whatever the mode, the metrics compare with the real photo ``face/<id>.*``, the
input mask ``mask/<id>.png`` and the caption sentence (so the mask-only row has a text score too).

Reproducibility: image ``<id>`` gets the seed ``seed + int(id)`` (its own generator), so an image
depends neither on the order of the set, nor on the batch it was generated in, nor on ``limit``
(the reference implementation shares one generator across the set; METHOD.md section 9).

Work folder (``work_dir``), one sub-folder per mode (``mask-text``, ``mask``, ``text``)::

    <mode>/generated/<id>.png   generated faces; existing ones are kept (a run resumes)
    <mode>/generation.json      the settings the faces were made with; a resumed run must match
    <mode>/prompts.json         {id: caption sentence}, read by the text metrics
    <mode>/eval.json, eval.md   that mode's report (facemogle.eval.evaluate) and table
    feature-cache/              evaluation features (the real photos' are shared by the modes)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from facemogle import __version__
from facemogle import distributed
from facemogle.errors import InputError
from facemogle.files import atomic_write_text, files_by_stem, natural_key

#: The paper's inference setting (METHOD.md section 6).
PAPER_NUM_STEPS = 28
PAPER_GUIDANCE = 3.5
PAPER_SIZE = 512
PAPER_SEED = 42
#: Images per pipeline call when none is given (FLUX.1-dev at 512 px fits a GPU comfortably).
DEFAULT_GENERATION_BATCH_SIZE = 4
#: MM-CelebA-HQ = CelebA-HQ's 30,000 images; ids from ``datasets.MM_CELEBA_HQ_FIRST_TEST_ID`` on are test.
MM_CELEBA_HQ_NUM_IMAGES = 30_000
#: The model when none is named, and the row name prefix when no label is given.
DEFAULT_LABEL = "facemogle"

GENERATED_FOLDER = "generated"
MANIFEST_NAME = "generation.json"
PROMPTS_NAME = "prompts.json"
REPORT_NAME = "eval.json"
TABLE_NAME = "eval.md"
FEATURE_CACHE_FOLDER = "feature-cache"
GENERATED_SUFFIX = ".png"
SEED_RULE = "seed + int(id) (ids that are not integers: seed + first 4 bytes of sha256(id))"
ALL_MODES = "all"


@dataclass(frozen=True)
class Protocol:
    """Which images of a dataset folder are evaluated and which caption sentence each one gets."""

    name: str
    title: str
    test_ids_only: bool  # True: MM-CelebA-HQ's test ids; False: every image of the folder
    sentence_rule: str  # "first" or "seeded" (one sentence per id, chosen by a hash of seed and id)
    row_prefix: str  # between the label and the mode in the row name

    @property
    def sentence_rule_text(self) -> str:
        if self.sentence_rule == "first":
            return "the first sentence of each caption"
        return "caption sentence number sha256('<seed>:<id>') mod (sentences of the id)"


PROTOCOLS: dict[str, Protocol] = {
    "mmcelebahq": Protocol("mmcelebahq", "MM-CelebA-HQ test set", True, "first", ""),
    "mmffhq": Protocol("mmffhq", "zero-shot set (MM-FFHQ-Female layout)", False, "seeded", ", zero-shot"),
}


@dataclass(frozen=True)
class GenerationMode:
    """What the pipeline gets: the mask, the prompt, or both."""

    name: str
    label: str
    folder: str
    uses_mask: bool
    uses_text: bool


MODES: dict[str, GenerationMode] = {
    mode.name: mode
    for mode in (
        GenerationMode("mask+text", "mask + text", "mask-text", uses_mask=True, uses_text=True),
        GenerationMode("mask", "mask only", "mask", uses_mask=True, uses_text=False),
        GenerationMode("text", "text only", "text", uses_mask=False, uses_text=True),
    )
}


@dataclass(frozen=True)
class ProtocolImage:
    """One evaluated image: its id, real photo, mask and caption sentence (None: no caption)."""

    stem: str
    face: Path
    mask: Path
    sentence: str | None


@dataclass
class GenerationSettings:
    """How the faces are generated (``model_options``: ``facemogle.specs.load_pipeline`` keywords)."""

    model: str = "flux-dev"
    model_options: dict = field(default_factory=dict)
    steps: int = PAPER_NUM_STEPS
    guidance: float = PAPER_GUIDANCE
    size: int = PAPER_SIZE
    seed: int = PAPER_SEED
    batch_size: int = DEFAULT_GENERATION_BATCH_SIZE
    device: str | None = None


@dataclass
class ProtocolSettings:
    """One ``facemogle evaluate --protocol`` run."""

    protocol: str
    data_dir: Path
    work_dir: Path
    modes: tuple[str, ...] = ("mask+text",)
    limit: int | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    label: str = DEFAULT_LABEL
    progress: bool = True


# ------------------------------------------------------------------------------------ selection


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InputError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


def parse_modes(mode: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"mask+text"`` -> ``("mask+text",)``; ``"all"`` -> the three modes in the paper's order."""
    names = [mode] if isinstance(mode, str) else list(mode)
    if names == [ALL_MODES]:
        return tuple(MODES)
    unknown = [name for name in names if name not in MODES]
    if unknown or not names:
        raise InputError(f"unknown mode(s) {', '.join(unknown) or '(none)'}; known: {', '.join(MODES)} or {ALL_MODES}")
    return tuple(dict.fromkeys(names))


def seeded_choice(seed: int, stem: str, count: int) -> int:
    """A deterministic index in ``0..count-1`` for (seed, id): sha256 of ``"<seed>:<id>"``, mod count."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def image_seed(seed: int, stem: str) -> int:
    """The seed of image ``<stem>``: ``seed + int(stem)`` for integer ids (MM-CelebA-HQ), otherwise
    ``seed`` + the first 4 bytes of sha256(stem) (hashed file names such as the mini set's)."""
    if stem.isdigit():
        return seed + int(stem)
    return seed + int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:4], "big")


def _shown(stems: list[str], limit: int = 5) -> str:
    return ", ".join(stems[:limit]) + (", ..." if len(stems) > limit else "")


def select_images(
    protocol: Protocol | str, data_dir: str | os.PathLike, *, seed: int = PAPER_SEED, limit: int | None = None,
    need_sentences: bool = True,
) -> list[ProtocolImage]:
    """The evaluated images of ``data_dir``, sorted by id; ``limit`` keeps the first ``limit``.

    Raises:
        InputError: not the MM-CelebA-HQ layout, no image to evaluate, a bad ``limit``, or (with
            ``need_sentences``) images without a caption.
    """
    from facemogle.data.datasets import MM_CELEBA_HQ, MM_CELEBA_HQ_FIRST_TEST_ID, index_dataset

    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    index = index_dataset(data_dir, layout=MM_CELEBA_HQ.name)
    if protocol.test_ids_only:
        test_ids = range(MM_CELEBA_HQ_FIRST_TEST_ID, MM_CELEBA_HQ_NUM_IMAGES)
        stems = [stem for stem in index.splits["test"] if int(stem) in test_ids]
        if not stems:
            raise InputError(
                f"dataset folder {data_dir} holds no MM-CelebA-HQ test image (ids {test_ids.start}.."
                f"{test_ids.stop - 1} with {MM_CELEBA_HQ.image_dir}/<id>.jpg and {MM_CELEBA_HQ.mask_dir}/<id>.png)"
            )
    else:
        stems = list(index.records)
    stems = sorted(stems, key=natural_key)[:limit]

    records = [index.records[stem] for stem in stems]
    uncaptioned = [record.stem for record in records if not record.captions]
    if need_sentences and uncaptioned:
        raise InputError(
            f"{len(uncaptioned)} of {len(records)} images of {data_dir} have no caption "
            f"({MM_CELEBA_HQ.text_dir}/<id>.txt or {MM_CELEBA_HQ.text_json}): {_shown(uncaptioned)}"
        )
    images = []
    for record in records:
        sentence = None
        if record.captions:
            pick = 0 if protocol.sentence_rule == "first" else seeded_choice(seed, record.stem, len(record.captions))
            sentence = record.captions[pick]
        images.append(ProtocolImage(record.stem, record.image, record.mask, sentence))
    return images


# ----------------------------------------------------------------------------------- generation


def generation_manifest(protocol: Protocol, mode: GenerationMode, data_dir: Path, generation: GenerationSettings) -> dict:
    """The settings that determine the generated images (what a resumed run must share)."""
    return {
        "protocol": protocol.name,
        "mode": mode.name,
        "data_dir": str(Path(data_dir).resolve()),
        "model": generation.model,
        "model_options": {key: str(value) for key, value in sorted(generation.model_options.items())},
        "num_inference_steps": generation.steps,
        "guidance_scale": generation.guidance,
        "size": generation.size,
        "seed": generation.seed,
        "seed_rule": SEED_RULE,
        "prompt_rule": protocol.sentence_rule_text if mode.uses_text else "empty prompt",
        "mask_rule": "mask/<id>.png" if mode.uses_mask else "empty mask (all background)",
    }


def _existing_images(folder: Path) -> dict[str, Path]:
    return files_by_stem(folder) if folder.is_dir() else {}


def prepare_mode_folder(folder: Path, manifest: dict, stems: list[str], *, write: bool = True) -> None:
    """Create ``folder`` or check that it holds images of the same settings and selection
    (``write=False``: only check; the other launched processes, while the main one writes).

    A manifest of other settings with no image made yet (a run that failed before its first image)
    is replaced: there is nothing for the new settings to disagree with.

    Raises:
        InputError: the folder holds images made with other settings, images without a manifest,
            or images outside ``stems`` (they would be evaluated too).
    """
    manifest_path = folder / MANIFEST_NAME
    existing = _existing_images(folder / GENERATED_FOLDER)
    if manifest_path.is_file() and existing:
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{manifest_path} is not valid JSON ({error}); remove it or use another work dir") from None
        changed = [key for key in manifest if previous.get(key) != manifest[key]]
        if changed:
            details = "; ".join(f"{key}: {previous.get(key)!r} then, {manifest[key]!r} now" for key in changed)
            raise InputError(f"{folder} holds images generated with other settings ({details}): use another --work-dir")
    elif existing:
        raise InputError(f"{folder / GENERATED_FOLDER} holds images but no {MANIFEST_NAME}: use another --work-dir")
    extra = sorted(set(existing) - set(stems), key=natural_key)
    if extra:
        raise InputError(
            f"{folder / GENERATED_FOLDER} holds {len(extra)} image(s) outside this selection ({_shown(extra)}), "
            "which would be evaluated too: use another --work-dir (or a larger --limit)"
        )
    if write:
        (folder / GENERATED_FOLDER).mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest_path, json.dumps({**manifest, "facemogle_version": __version__}, indent=2) + "\n")


def generate_images(
    pipeline: Callable[[], object], images: list[ProtocolImage], mode: GenerationMode | str,
    generation: GenerationSettings, output_dir: str | os.PathLike, *, progress: bool = True,
    step_hooks: Sequence = (), processes=None, watermark: bool = False, call_options: dict | None = None,
) -> list[str]:
    """Generate ``output_dir/<id>.png`` for every image that has none yet; return the generated ids.

    ``step_hooks``: :class:`facemogle.sampling.StepHook` objects given to every pipeline call
    (e.g. a :class:`facemogle.eval.gate_weights.GateRecorder`).

    ``pipeline``: a callable returning the :class:`facemogle.pipeline.FaceMoGLEPipeline`, called only
    when something is left to generate. Images go in batches of ``generation.batch_size``, in the
    order of ``images``; each has its own seed (:func:`image_seed`), so neither order nor batching
    changes an image. Each file is written under a hidden name and renamed, so an interrupted run
    never leaves a truncated image behind.

    ``processes``: a :class:`facemogle.distributed.Processes`; this process then makes every
    ``count``-th batch (the batches of a single process, so each image is made in the same batch as
    there; a batch with a missing image is made whole again, so a resumed image is bit for bit the
    one an uninterrupted run makes). ``watermark``: mark the images (measured sets stay unmarked). ``call_options``: more
    pipeline keywords (e.g. ``mask_guidance_scale``).
    """
    from tqdm.auto import tqdm

    from facemogle.distributed import Processes
    from facemogle.provenance import save_image

    mode = MODES[mode] if isinstance(mode, str) else mode
    processes = processes or Processes()
    if generation.batch_size < 1:
        raise InputError(f"generation batch size must be >= 1, got {generation.batch_size}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    size = generation.batch_size
    mine = processes.share([images[start : start + size] for start in range(0, len(images), size)])
    exists = {image.stem for batch in mine for image in batch
              if (output_dir / f"{image.stem}{GENERATED_SUFFIX}").is_file()}
    # a batch with a missing image is made whole again (only the missing files are written): an image
    # is then computed in the very batch it had in a run that was never interrupted, bit for bit
    batches = [batch for batch in mine if any(image.stem not in exists for image in batch)]
    missing = [image for batch in batches for image in batch if image.stem not in exists]
    if not missing:
        return []
    if mode.uses_text and any(image.sentence is None for image in missing):
        raise InputError(f"mode {mode.name} needs a caption for every image")
    pipe = pipeline()
    pipe.set_progress_bar_config(disable=True)  # one bar over the images instead of one per batch
    total = sum(len(batch) for batch in mine)
    where = f", {processes.describe()}" if processes.count > 1 else ""
    bar = tqdm(total=total, initial=total - len(missing), unit="image",
               desc=f"generating ({mode.label}{where})", disable=not progress)
    with bar:
        for batch in batches:
            output = pipe(
                mask=[image.mask for image in batch] if mode.uses_mask else None,
                prompt=[image.sentence for image in batch] if mode.uses_text else None,
                seed=[image_seed(generation.seed, image.stem) for image in batch],
                height=generation.size,
                width=generation.size,
                num_inference_steps=generation.steps,
                guidance_scale=generation.guidance,
                output_type="pil",
                step_hooks=step_hooks,
                watermark=watermark,  # measured images: as the model made them; they stay in the work dir
                **(call_options or {}),
            )
            new = [(image, picture) for image, picture in zip(batch, output.images) if image.stem not in exists]
            for image, picture in new:  # atomic; marked ones keep their parameters
                save_image(picture, output_dir / f"{image.stem}{GENERATED_SUFFIX}")
            bar.update(len(new))
    return [image.stem for image in missing]


class _PipelineOnce:
    """Loads the pipeline on the first call only (shared by the modes; never when all images exist).
    Under a launcher each process loads it on its own device (unless one was given)."""

    def __init__(self, generation: GenerationSettings, processes=None):
        self.generation = generation
        self.processes = processes
        self.pipe = None

    def __call__(self):
        if self.pipe is None:
            from facemogle import specs

            options = dict(self.generation.model_options)
            if self.generation.device:
                options["device"] = self.generation.device
            elif self.processes is not None and self.processes.device is not None:
                options["device"] = self.processes.device
            self.pipe = specs.load_pipeline(self.generation.model, **options)
        return self.pipe


# ------------------------------------------------------------------------------------ the run


def row_label(label: str, protocol: Protocol, mode: GenerationMode) -> str:
    """``"facemogle (mask + text)"``, ``"facemogle, zero-shot (mask + text)"``."""
    return f"{label}{protocol.row_prefix} ({mode.label})"


def run_protocol(settings: ProtocolSettings, evaluation, *, parser=None) -> dict:
    """Generate and evaluate every mode of ``settings``; return ``{"protocol": ..., "runs": [reports]}``.

    ``evaluation``: a :class:`facemogle.eval.evaluate.EvaluationSettings` with the metrics and their
    models; its ``generated``, ``real``, ``masks``, ``prompts`` and ``label`` are filled in per mode,
    and its ``cache_dir`` defaults to ``work_dir/feature-cache`` (the dataset folder is never written).
    ``parser``: passed to :func:`facemogle.eval.evaluate.evaluate` (the ``miou`` face parser).

    Every input is checked before the first image is generated.

    Raises:
        InputError: see :func:`select_images`, :func:`prepare_mode_folder` and ``evaluate``.
    """
    from facemogle.data.datasets import MM_CELEBA_HQ
    from facemogle.eval.evaluate import NEEDS_TWO_IMAGES, check_settings, evaluate, parse_metrics
    from facemogle.eval.report import render_markdown

    protocol = get_protocol(settings.protocol)
    modes = [MODES[name] for name in parse_modes(settings.modes)]
    metrics = parse_metrics(evaluation.metrics)
    generation = settings.generation
    for name, value in (("steps", generation.steps), ("size", generation.size), ("batch size", generation.batch_size)):
        if value < 1:
            raise InputError(f"generation {name} must be >= 1, got {value}")
    data_dir, work_dir = Path(settings.data_dir), Path(settings.work_dir)
    needs_sentences = any(mode.uses_text for mode in modes) or any(m in ("text", "ir") for m in metrics)
    images = select_images(protocol, data_dir, seed=generation.seed, limit=settings.limit, need_sentences=needs_sentences)
    stems = [image.stem for image in images]
    too_few = [m for m in metrics if m in NEEDS_TWO_IMAGES]
    if too_few and len(images) < 2:  # evaluate() would say so too, but only after generating
        raise InputError(f"metric(s) {', '.join(too_few)} need at least 2 images, got {len(images)}"
                         + (f" (limit {settings.limit})" if settings.limit is not None else ""))

    plans = []
    for mode in modes:
        folder = work_dir / mode.folder
        mode_evaluation = dataclasses.replace(
            evaluation,
            metrics=metrics,
            generated=folder / GENERATED_FOLDER,
            real=data_dir / MM_CELEBA_HQ.image_dir,
            masks=data_dir / MM_CELEBA_HQ.mask_dir,
            prompts=folder / PROMPTS_NAME if needs_sentences else None,
            cache_dir=evaluation.cache_dir or work_dir / FEATURE_CACHE_FOLDER,
            label=row_label(settings.label, protocol, mode),
        )
        check_settings(mode_evaluation, metrics)
        plans.append((mode, folder, mode_evaluation, generation_manifest(protocol, mode, data_dir, generation)))
    processes = distributed.processes()  # under accelerate launch: this process's share of the images
    for mode, folder, _, manifest in plans:
        prepare_mode_folder(folder, manifest, stems, write=processes.is_main)
    processes.wait()

    pipeline = _PipelineOnce(generation, processes)
    reports = []
    for mode, folder, mode_evaluation, manifest in plans:
        if needs_sentences and processes.is_main:
            prompts = {image.stem: image.sentence for image in images}
            atomic_write_text(folder / PROMPTS_NAME, json.dumps(prompts, indent=2, ensure_ascii=False) + "\n")
        generated = generate_images(pipeline, images, mode, generation, folder / GENERATED_FOLDER,
                                    progress=settings.progress, processes=processes)
        processes.wait()  # every image exists before the main process evaluates them
        if not processes.is_main:
            reports.append({"process": processes.index, "generated_this_run": len(generated)})
            continue
        report = evaluate(mode_evaluation, parser=parser)
        report["protocol"] = {
            "name": protocol.name,
            "title": protocol.title,
            "data_dir": str(data_dir),
            "work_dir": str(work_dir),
            "limit": settings.limit,
            "num_images": len(images),
            "first_id": stems[0],
            "last_id": stems[-1],
            "sentence_rule": protocol.sentence_rule_text,
            "generated_this_run": len(generated),
            "generation": manifest,
        }
        atomic_write_text(folder / REPORT_NAME, json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / TABLE_NAME, render_markdown(report))
        reports.append(report)
    return {"facemogle_version": __version__, "protocol": protocol.name, "runs": reports,
            **({"main_process": False} if not processes.is_main else {})}


def render_protocol_markdown(result: dict) -> str:
    """One table in the layout of the paper's Table 1 with a row per mode of ``result`` (of
    :func:`run_protocol`), then the mask-control scores; per-mode details are in ``<mode>/eval.md``."""
    from facemogle.eval.protocol import DINO_REFERENCE_BATCH_SIZE
    from facemogle.eval.report import MASK_CONTROL_TITLE, mask_control_rows, table1_rows

    runs = result["runs"]
    first = runs[0]["protocol"]
    generation = first["generation"]
    lines = [
        f"## {first['title']}: {first['num_images']} images (ids {first['first_id']}..{first['last_id']})",
        "",
        f"Model `{generation['model']}`, {generation['num_inference_steps']} steps, guidance "
        f"{generation['guidance_scale']}, {generation['size']} px, seed {generation['seed']} "
        f"(image <id>: {generation['seed_rule']}); captions: {first['sentence_rule']}.",
        "",
        *table1_rows(runs),
        "",
        "KID and CMMD are x 1000. Mask = DINO ViT-B/8 structure distance as the paper's script reports it "
        f"(per-image MSEs summed per batch of {DINO_REFERENCE_BATCH_SIZE}, averaged over batches).",
    ]
    if any(report["metrics"].get("mask_miou") is not None for report in runs):
        lines += ["", MASK_CONTROL_TITLE, "", *mask_control_rows(runs)]
    return "\n".join(lines) + "\n"


__all__ = [
    "MODES", "PROTOCOLS", "GenerationMode", "GenerationSettings", "Protocol", "ProtocolImage", "ProtocolSettings",
    "generate_images", "generation_manifest", "image_seed", "parse_modes", "prepare_mode_folder",
    "render_protocol_markdown", "row_label", "run_protocol", "seeded_choice", "select_images",
]
