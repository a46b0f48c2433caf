"""A corpus of hostile inputs, over every command: each is refused cleanly.

For every case: a non-zero exit, no traceback, one line naming the problem, no file of the
workspace changed, none added (no partial or temporary file either), no code run from a pickle or a
YAML tag (the payloads would create ``PWNED``), and, where the case says so, no model loaded (the
checks run first). Interrupts (SIGINT, SIGTERM) while a file is being written leave the old file
and nothing else; the command exits 130 / 143 with one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from facemogle.cli import main
from facemogle.cli.detect import EXIT_UNREADABLE
from facemogle.masks import EXAMPLE_MASK, render_mask, load_mask

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_FLUX = REPO_ROOT.parent / "shared" / "golden" / "tiny-flux"


class Payload:
    """Unpickling this runs ``open(PWNED, "w")``: proof that a pickle was executed."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels, with almost no data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture
def ws(tmp_path) -> Path:
    """The workspace: good inputs, bad inputs, and files that must survive every case."""
    w = tmp_path
    ids = load_mask(EXAMPLE_MASK)
    Image.fromarray(ids).save(w / "mask.png")
    Image.fromarray(render_mask(ids)).save(w / "mask_colour.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(w / "photo.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(w / "wide.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(w / "keep.png")  # must not be clobbered
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(w / "photo.jpg", quality=90)
    full = (w / "photo.png").read_bytes()
    (w / "cut.png").write_bytes(full[: len(full) // 3])
    (w / "cut.jpg").write_bytes((w / "photo.jpg").read_bytes()[:400])
    (w / "empty.png").write_bytes(b"")
    (w / "text.png").write_text("this is not an image\n")
    _png_header_only(w / "bomb.png", 30_000, 30_000)
    white = np.full((32, 32, 3), 255, np.uint8)
    white[:, :4] = (10, 200, 60)  # no palette colour
    Image.fromarray(white).save(w / "odd_colours.png")
    Image.fromarray(np.full((8, 8), 19, np.uint8)).save(w / "id19.png")
    os.mkfifo(w / "fifo.png")
    (w / "folder").mkdir()
    (w / "link.png").symlink_to(w / "keep.png")
    (w / "afile").write_text("x")
    (w / "keep.json").write_text('{"keep": true}\n')
    (w / "keep.md").write_text("keep\n")
    # weights: a pickle payload, NaN values, a truncated safetensors file
    with open(w / "evil.pt", "wb") as handle:
        pickle.dump({"weight": Payload(w / "PWNED")}, handle)
    import torch
    from safetensors.torch import save_file

    torch.save({"w": torch.tensor([1.0, float("nan")])}, w / "nan.pt")
    save_file({"w": torch.ones(64)}, str(w / "lora.safetensors"))
    (w / "cut.safetensors").write_bytes((w / "lora.safetensors").read_bytes()[:40])
    # training configs
    base = {"output_dir": str(w / "run"), "model": {"spec": "tiny-random"},
            "data": {"root": str(w / "folder"), "layout": "folder"}, "train": {"max_steps": 2}}
    configs = {
        "python_tag.yaml": f"output_dir: !!python/object/apply:os.system ['touch {w / 'PWNED'}']\n",
        "python_name.yaml": "output_dir: !!python/name:os.system\n",
        "alias_bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
            f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9)),
        "not_yaml.yaml": "train: [unclosed\n",
        "a_list.yaml": "- 1\n- 2\n",
        "unknown_key.yaml": yaml.safe_dump({**base, "trian": {"max_steps": 2}}),
        "nan_lr.yaml": yaml.safe_dump({**base, "train": {"max_steps": 2, "optimizer": {"lr": float("nan")}}}),
        "inf_lr.yaml": yaml.safe_dump({**base, "train": {"max_steps": 2, "optimizer": {"lr": float("inf")}}}),
        "huge_seed.yaml": yaml.safe_dump({**base, "seed": 2**70}),
        "negative_steps.yaml": yaml.safe_dump({**base, "train": {"max_steps": -5}}),
        "string_steps.yaml": yaml.safe_dump({**base, "train": {"max_steps": "many"}}),
        "bad_spec.yaml": yaml.safe_dump({**base, "model": {"spec": "no-such-model"}}),
        "good.yaml": yaml.safe_dump(base),
    }
    for name, text in configs.items():
        (w / name).write_text(text)
    (w / "bad_utf8.yaml").write_bytes(b"output_dir: \xff\xfe\n")
    return w


def snapshot(folder: Path) -> dict[str, str]:
    """Every regular file and link under ``folder`` -> its content hash (or link target)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = "special"
    return state


@dataclass
class Case:
    """``argv`` (with ``{w}`` for the workspace), a regex the error must contain, the exit code, and
    whether a model may load before the refusal (weights files are only judged when read)."""

    argv: str
    message: str
    code: int = 2
    loads_model: bool = False
    needs: tuple[str, ...] = field(default_factory=tuple)


G = "generate --mask {w}/mask.png -o {w}/keep.png"
E = "edit {w}/photo.png --mask {w}/mask.png -o {w}/out.png"
CASES: dict[str, Case] = {
    # ---- generate: numbers
    "generate condition cache every 0": Case(f"{G} --condition-cache every:0", r"condition_cache must be .* got 'every:0'"),
    "generate step cache nan": Case(f"{G} --step-cache first-block:nan", r"step_cache must be .* got 'first-block:nan'"),
    "generate no condition stream with a mask": Case(f"{G} --condition-cache none", r"takes no --mask"),
    "generate sequential offload on the cpu": Case(f"{G} --offload sequential --device cpu", r"needs an accelerator"),
    "generate nf4 on the cpu": Case(f"{G} --quantize nf4 --device cpu", r"nf4 needs a CUDA device"),
    "generate unknown quantisation": Case(f"{G} --quantize int4", r"--quantize: invalid choice: 'int4'"),
    "generate missing mask folder": Case("generate --mask-folder {w}/nope --output-folder {w}/o", r"nope"),
    "generate mask folder and -o": Case("generate --mask-folder {w} --output-folder {w}/o -o {w}/x.png",
                                        r"--mask-folder takes neither --mask, --num-images nor -o"),
    "generate mask folder without output": Case("generate --mask-folder {w}", r"needs --output-folder DIR"),
    "generate mask folder, bad cache": Case("generate --mask-folder {w} --output-folder {w}/o --step-cache first-block:0",
                                            r"step_cache must be"),
    "generate output folder alone": Case("generate --output-folder {w}/o", r"--output-folder goes with --mask-folder"),
    "generate output folder is a file": Case("generate --mask-folder {w} --output-folder {w}/keep.png",
                                             r"keep\.png exists and is not a folder"),
    "generate ambiguous mask folder": Case("generate --mask-folder {w} --output-folder {w}/o",
                                           r"two files with the same stem 'cut' \(cut\.jpg and cut\.png\)"),
    "generate mask folder with a non-mask": Case("generate --mask-folder {w}/photos --output-folder {w}/o",
                                                 r"photo\.png", needs=("photos/",)),
    "generate steps 0": Case(f"{G} --steps 0", r"--steps must be in 1\.\.1000, got 0"),
    "generate steps 100000": Case(f"{G} --steps 100000", r"--steps must be in 1\.\.1000"),
    "generate steps text": Case(f"{G} --steps many", r"--steps: invalid int value"),
    "generate size 0": Case(f"{G} --size 0", r"--size must be in 16\.\."),
    "generate size huge": Case(f"{G} --size 100000", r"--size must be in 16\.\."),
    "generate size not a multiple": Case(f"{G} --size 130", r"--size must be a multiple of 8 for --model tiny"),
    "evaluate protocol size not a multiple": Case(
        "evaluate --protocol mmcelebahq {w}/folder --work-dir {w}/work --model tiny-random --size 17",
        r"--size must be a multiple of 16"),
    "generate size negative": Case(f"{G} --size -128", r"--size must be in"),
    "generate guidance nan": Case(f"{G} --guidance nan", r"--guidance must be a finite number"),
    "generate guidance inf": Case(f"{G} --guidance inf", r"--guidance must be a finite number"),
    "generate mask guidance -inf": Case(f"{G} --mask-guidance=-inf", r"--mask-guidance must be a finite number"),
    "generate seed 2**70": Case(f"{G} --seed {2**70}", r"--seed must be in \[0, 2\*\*64\)"),
    "generate seed negative": Case(f"{G} --seed -1", r"--seed must be in \[0, 2\*\*64\)"),
    "generate seed + images past 2**64": Case(f"{G} --seed {2**64 - 1} --num-images 2", r"runs past 2\*\*64"),
    "generate 10000 images": Case(f"{G} --num-images 10000", r"--num-images must be in 1\.\.64"),
    "generate 0 images": Case(f"{G} --num-images 0", r"--num-images must be in 1\.\.64"),
    "generate prompt too long": Case(f"{G} --prompt " + "x" * 5000, r"too long \(at most 4096\)"),
    "generate unknown device": Case(f"{G} --device gpu9", r"unknown device 'gpu9'"),
    "generate cuda on cpu torch": Case(f"{G} --device cuda", r"device 'cuda' is not available"),
    "generate unknown model": Case("generate -o {w}/out.png --model sd15", r"unknown model 'sd15'"),
    "generate flux options on tiny": Case("generate -o {w}/out.png --lora {w}/lora.safetensors",
                                          r"only apply to --model flux-dev"),
    # ---- generate: files
    "generate missing mask": Case("generate --mask {w}/none.png -o {w}/out.png", r"--mask .*none\.png does not exist"),
    "generate fifo mask": Case("generate --mask {w}/fifo.png -o {w}/out.png", r"is not a regular file"),
    "generate folder as mask": Case("generate --mask {w}/folder -o {w}/out.png", r"is not a regular file"),
    "generate output is a folder": Case("generate --mask {w}/mask.png -o {w}/folder", r"must end in|is a folder"),
    "generate output .gif": Case("generate --mask {w}/mask.png -o {w}/out.gif", r"must end in \.png"),
    "generate output through a symlink": Case("generate --mask {w}/mask.png -o {w}/link.png", r"is a symbolic link"),
    "generate output under a file": Case("generate --mask {w}/mask.png -o {w}/afile/out.png", r"is not a folder"),
    "generate grid path is a folder": Case("generate --mask {w}/mask.png -o {w}/o.png --num-images 2",
                                           r"is a folder", needs=("o-grid.png/",)),
    "generate empty mask file": Case("generate --mask {w}/empty.png -o {w}/out.png", r"empty\.png is an empty file"),
    "generate truncated mask": Case("generate --mask {w}/cut.png -o {w}/out.png", r"cut\.png.*(truncated|corrupt)"),
    "generate text as mask": Case("generate --mask {w}/text.png -o {w}/out.png", r"not an image file"),
    "generate bomb mask": Case("generate --mask {w}/bomb.png -o {w}/out.png", r"bomb\.png.*(pixels|too large)"),
    "generate unknown colours": Case("generate --mask {w}/odd_colours.png -o {w}/out.png", r"RGB \("),
    "generate class id 19": Case("generate --mask {w}/id19.png -o {w}/out.png", r"class ids outside 0\.\.18"),
    "generate mask order colour": Case("generate --mask {w}/mask_colour.png --mask-order bisenet -o {w}/out.png",
                                       r"applies only to id masks"),
    # ---- generate: weights (flux-dev on the reference's tiny FLUX)
    "generate pickle payload as mogle": Case(
        "generate --model flux-dev --base " + str(TINY_FLUX) + " --mogle {w}/evil.pt -o {w}/out.png",
        r"evil\.pt: not a readable weights file", loads_model=True, needs=("tiny-flux",)),
    "generate NaN mogle": Case("generate --model flux-dev --base " + str(TINY_FLUX) + " --mogle {w}/nan.pt -o {w}/out.png",
                               r"nan\.pt: tensor w holds NaN", loads_model=True, needs=("tiny-flux",)),
    "generate truncated lora": Case(
        "generate --model flux-dev --base " + str(TINY_FLUX) + " --lora {w}/cut.safetensors -o {w}/out.png",
        r"cut\.safetensors", loads_model=True, needs=("tiny-flux",)),
    "generate missing mogle": Case("generate --model flux-dev --mogle {w}/none.pt -o {w}/out.png",
                                   r"--mogle .*none\.pt does not exist"),
    "generate checkpoint is a file": Case("generate --checkpoint {w}/afile -o {w}/out.png", r"--checkpoint .* is not a folder"),
    "generate empty checkpoint": Case("generate --checkpoint {w}/folder -o {w}/out.png", r"folder"),
    # ---- edit
    "edit missing photo": Case("edit {w}/none.png --mask {w}/mask.png -o {w}/out.png", r"photo .*none\.png does not exist"),
    "edit fifo photo": Case("edit {w}/fifo.png --mask {w}/mask.png -o {w}/out.png", r"photo .* is not a regular file"),
    "edit strength nan": Case(f"{E} --strength nan", r"--strength must be a finite number"),
    "edit strength 2": Case(f"{E} --strength 2", r"--strength must be in \[0, 1\]"),
    "edit grow negative": Case(f"{E} --grow -3", r"--grow must be in 0\.\.1024"),
    "edit grow huge": Case(f"{E} --grow 100000000", r"--grow must be in 0\.\.1024"),
    "edit unknown region": Case(f"{E} --regions hair,wings", r"wings"),
    "edit steps 0": Case(f"{E} --steps 0", r"--steps must be in 1\.\.1000"),
    "edit seed 2**65": Case(f"{E} --seed {2**65}", r"--seed must be in \[0, 2\*\*64\)"),
    "edit output .txt": Case("edit {w}/photo.png --mask {w}/mask.png -o {w}/out.txt", r"-o .*out\.txt must end in"),
    "edit output through a symlink": Case("edit {w}/photo.png --mask {w}/mask.png -o {w}/link.png", r"symbolic link"),
    "edit region and output the same": Case("edit {w}/photo.png --mask {w}/mask.png -o {w}/o.png --show-region {w}/o.png",
                                            r"are the same file"),
    "edit truncated photo": Case("edit {w}/cut.jpg --mask {w}/mask.png --source-mask {w}/mask.png -o {w}/out.png",
                                 r"cut\.jpg"),
    "edit aspect ratios differ": Case("edit {w}/wide.png --mask {w}/mask.png --source-mask {w}/mask.png -o {w}/out.png",
                                      r"aspect ratios differ"),
    "edit bomb photo": Case("edit {w}/bomb.png --mask {w}/mask.png --source-mask {w}/mask.png -o {w}/out.png",
                            r"bomb\.png.*(pixels|too large)"),
    # ---- parse
    "parse missing photo": Case("parse {w}/none.png -o {w}/out.png", r"none\.png does not exist"),
    "parse fifo": Case("parse {w}/fifo.png -o {w}/out.png", r"not a regular file"),
    "parse batch size 0": Case("parse {w}/photo.png -o {w}/out.png --batch-size 0", r"--batch-size must be in 1\.\."),
    "parse batch size huge": Case("parse {w}/photo.png -o {w}/out.png --batch-size 1000000", r"--batch-size must be in 1\.\."),
    "parse two photos into one file": Case("parse {w}/photo.png {w}/wide.png -o {w}/keep.png", r"need an output folder"),
    "parse output .jpg": Case("parse {w}/photo.png -o {w}/out.jpg", r"PNG"),
    "parse output through a symlink": Case("parse {w}/photo.png -o {w}/link.png", r"symbolic link"),
    "parse truncated png among good ones": Case("parse {w}/photo.png {w}/cut.png -o {w}/masks_out", r"cut\.png",
                                                loads_model=True),
    "parse bomb": Case("parse {w}/bomb.png -o {w}/out.png", r"bomb\.png.*(pixels|too large)", loads_model=True),
    "parse text as photo": Case("parse {w}/text.png -o {w}/out.png", r"not an image file", loads_model=True),
    "parse empty photo": Case("parse {w}/empty.png -o {w}/out.png", r"empty file", loads_model=True),
    # ---- mask
    "mask show truncated": Case("mask show {w}/cut.png -o {w}/out.png", r"(truncated|corrupt)"),
    "mask show fifo": Case("mask show {w}/fifo.png -o {w}/out.png", r"not a regular file"),
    "mask convert distance nan": Case("mask convert {w}/mask_colour.png --to ids --max-color-distance nan -o {w}/out.png",
                                      r"--max-color-distance must be a finite number"),
    "mask convert distance 1000": Case("mask convert {w}/mask.png --to ids --max-color-distance 1000 -o {w}/out.png",
                                       r"--max-color-distance must be in \[0, 255\]"),
    "mask convert to jpg": Case("mask convert {w}/mask.png --to ids -o {w}/out.jpg", r"must end in \.png"),
    "mask show through a symlink": Case("mask show {w}/mask.png -o {w}/link.png", r"symbolic link"),
    "mask show bomb": Case("mask show {w}/bomb.png -o {w}/out.png", r"(pixels|too large)"),
    "mask convert unknown colours": Case("mask convert {w}/odd_colours.png --to ids -o {w}/out.png", r"RGB \("),
    # ---- train
    "train python tag": Case("train {w}/python_tag.yaml", r"python_tag\.yaml"),
    "train python name": Case("train {w}/python_name.yaml", r"python_name\.yaml"),
    "train alias bomb": Case("train {w}/alias_bomb.yaml", r"alias"),
    "train not yaml": Case("train {w}/not_yaml.yaml", r"not_yaml\.yaml"),
    "train a list": Case("train {w}/a_list.yaml", r"a_list\.yaml"),
    "train bad utf-8": Case("train {w}/bad_utf8.yaml", r"bad_utf8\.yaml"),
    "train unknown key": Case("train {w}/unknown_key.yaml", r"trian"),
    "train lr nan": Case("train {w}/nan_lr.yaml", r"lr"),
    "train lr inf": Case("train {w}/inf_lr.yaml", r"lr"),
    "train seed 2**70": Case("train {w}/huge_seed.yaml", r"seed"),
    "train negative steps": Case("train {w}/negative_steps.yaml", r"max_steps"),
    "train string steps": Case("train {w}/string_steps.yaml", r"max_steps"),
    "train unknown spec": Case("train {w}/bad_spec.yaml", r"no-such-model"),
    "train missing config": Case("train {w}/none.yaml", r"none\.yaml does not exist"),
    "train fifo config": Case("train {w}/fifo.png", r"not a regular file"),
    "train max steps 0": Case("train {w}/good.yaml --max-steps 0", r"--max-steps must be in 1\.\."),
    "train result json in a missing folder": Case("train {w}/good.yaml --result-json {w}/nowhere/r.json",
                                                  r"does not exist"),
    "train result json through a symlink": Case("train {w}/good.yaml --result-json {w}/link.json", r"symbolic link",
                                                needs=("link.json",)),
    # ---- caption
    "caption missing folder": Case("caption {w}/none", r"DIR .*none does not exist"),
    "caption a file": Case("caption {w}/afile", r"is not a folder"),
    "caption sentences 1e9": Case("caption {w}/folder --sentences 1000000000", r"--sentences must be in 1\.\.100"),
    "caption sentences 0": Case("caption {w}/folder --sentences 0", r"--sentences must be in 1\.\.100"),
    "caption seed 2**70": Case("caption {w}/folder --seed " + str(2**70), r"--seed must be in"),
    "caption out is a file": Case("caption {w}/folder --out {w}/afile", r"--out .* is not a folder"),
    # ---- evaluate
    "evaluate missing generated": Case("evaluate --generated {w}/none -o {w}/e.json", r"--generated .* does not exist"),
    "evaluate generated is a file": Case("evaluate --generated {w}/afile -o {w}/e.json", r"is not a folder"),
    "evaluate batch size 0": Case("evaluate --generated {w}/folder -o {w}/e.json --batch-size 0", r"--batch-size must be in"),
    "evaluate batch size huge": Case("evaluate --generated {w}/folder -o {w}/e.json --batch-size 100000",
                                     r"--batch-size must be in"),
    "evaluate output .txt": Case("evaluate --generated {w}/folder -o {w}/e.txt", r"must end in \.json"),
    "evaluate table and output the same": Case("evaluate --generated {w}/folder -o {w}/keep.json --table {w}/keep.json",
                                               r"must end in \.md"),
    "evaluate kid subsets 0": Case("evaluate --generated {w}/folder -o {w}/e.json --kid-subsets 0", r"--kid-subsets"),
    "evaluate protocol steps 0": Case("evaluate --protocol mmcelebahq {w}/folder --work-dir {w}/work --steps 0",
                                      r"--steps must be in 1\.\.1000"),
    "evaluate protocol limit 0": Case("evaluate --protocol mmcelebahq {w}/folder --work-dir {w}/work --limit 0",
                                      r"--limit must be >= 1"),
    "evaluate protocol data dir missing": Case("evaluate --protocol mmcelebahq {w}/none --work-dir {w}/work",
                                               r"DATA_DIR .* does not exist"),
    # ---- bench and detect
    "bench generate runs 0": Case("bench generate --runs 0", r"--runs must be in 1\.\.100"),
    "bench generate steps huge": Case("bench generate --steps 1000000", r"--steps must be in 1\.\.1000"),
    "bench train threads 0": Case("bench train --threads 0", r"--threads must be in 1\.\.256"),
    "bench watermark faces huge": Case("bench watermark --faces 1000000000", r"--faces must be in 1\.\."),
    "bench json through a symlink": Case("bench generate --json {w}/link.json", r"symbolic link", needs=("link.json",)),
    "detect missing image": Case("detect {w}/none.png", r"none\.png", code=EXIT_UNREADABLE),
    "detect truncated image": Case("detect {w}/cut.png", r"cut\.png", code=EXIT_UNREADABLE),
    "detect fifo": Case("detect {w}/fifo.png", r"fifo\.png", code=EXIT_UNREADABLE),
    # ---- the command line itself
    "unknown command": Case("paint {w}/mask.png", r"invalid choice: 'paint'"),
    "invalid utf-8 prompt": Case("generate --mask {w}/mask.png -o {w}/out.png --prompt \udcff\udcfe",
                                 r"prompt is not valid UTF-8"),
}


#: A progress bar's line (loading a model shows one on stderr).
PROGRESS_BAR = re.compile(r"\d+%\|")


def _argv(case: Case, w: Path) -> list[str]:
    return [part.replace("{w}", str(w)) for part in case.argv.split(" ")]


def test_the_corpus_is_large_and_covers_every_command():
    commands = {case.argv.split()[0] for case in CASES.values()}
    assert len(CASES) >= 80
    assert {"generate", "edit", "parse", "mask", "train", "caption", "evaluate", "bench", "detect"} <= commands


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_input_is_refused_cleanly(name, ws, capsys, monkeypatch):
    case = CASES[name]
    if "tiny-flux" in case.needs and not TINY_FLUX.is_dir():
        pytest.skip("needs ../shared/golden/tiny-flux (the reference's tiny FLUX base), which is absent")
    if "o-grid.png/" in case.needs:
        (ws / "o-grid.png").mkdir()
    if "photos/" in case.needs:  # a folder whose one image is a photo, not a mask
        (ws / "photos").mkdir()
        (ws / "photos" / "photo.png").write_bytes((ws / "photo.png").read_bytes())
    if "link.json" in case.needs:
        (ws / "link.json").symlink_to(ws / "keep.json")
    if not case.loads_model:
        import facemogle.parser
        import facemogle.specs

        def refuse(*args, **kwargs):
            raise AssertionError(f"{name}: a model was loaded before the input was checked")

        monkeypatch.setattr(facemogle.specs, "load_pipeline", refuse)
        monkeypatch.setattr(facemogle.parser, "load_parser", refuse)
    before = snapshot(ws)
    try:
        code = main(_argv(case, ws))
    except SystemExit as exit:  # argparse: usage + one error line
        code = exit.code
    err = capsys.readouterr().err
    assert code == case.code, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()
             and not line.startswith(("usage:", " ")) and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and "error" in lines[0], err
    assert re.search(case.message, lines[0]), lines[0]
    assert snapshot(ws) == before, "the workspace changed"
    assert not (ws / "PWNED").exists(), "code ran from a payload"


# ----------------------------------------------------------------------------- interrupts

#: Run in a subprocess: PIL's save writes the first half of the file, then the process gets the
#: signal (as if the user pressed Ctrl-C or the machine was shutting down mid-write).
INTERRUPTED_WRITE = textwrap.dedent("""
    import io, os, signal, sys, time
    from PIL import Image
    from facemogle.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
    signum, count = getattr(signal, sys.argv[1]), int(sys.argv[2])
    original, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) < count:
            return original(self, fp, *args, **kwargs)
        buffer = io.BytesIO()
        original(self, buffer, *args, **kwargs)
        with open(fp, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os.kill(os.getpid(), signum)
        time.sleep(30)

    Image.Image.save = save
    sys.exit(main(sys.argv[3:]))
""")


def _interrupted(ws: Path, signame: str, count: int, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    script = ws.parent / "interrupted_write.py"
    script.write_text(INTERRUPTED_WRITE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), signame, str(count), *argv], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ws)


@pytest.mark.parametrize("signame,code,word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_while_a_mask_is_written_leaves_the_old_file(ws, signame, code, word):
    before = snapshot(ws)
    done = _interrupted(ws, signame, 1, "mask", "convert", str(ws / "mask.png"), "--to", "color", "-o", str(ws / "keep.png"))
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == f"facemogle mask: {word}", done.stderr
    assert snapshot(ws) == before  # keep.png as it was, no partial file beside it


@pytest.mark.parametrize("signame,code,word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_while_the_second_image_is_written_leaves_every_old_file(ws, signame, code, word):
    """generate --num-images 2 writes two images and a grid, all or none: a signal during the second
    leaves the first destination's old file too."""
    for name in ("keep-0.png", "keep-1.png", "keep-grid.png"):
        (ws / name).write_bytes((ws / "keep.png").read_bytes())
    before = snapshot(ws)
    done = _interrupted(ws, signame, 2, "generate", "--mask", str(ws / "mask.png"), "--num-images", "2", "--steps", "1",
                        "--size", "64", "-o", str(ws / "keep.png"))
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"facemogle generate: {word}", done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(ws) == before


def test_sigint_during_start_up_is_one_line():
    """Ctrl-C while the command line is still being built (imports) ends like any interrupt."""
    code = ("import os, signal, sys, time\nimport facemogle.cli as cli\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "def build():\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n"
            "cli.build_parser = build\nsys.exit(cli.main(['generate']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr.strip() == "facemogle generate: interrupted", done.stderr


def test_sigterm_at_any_moment_of_a_long_run_leaves_nothing(ws):
    """A real, asynchronous SIGTERM to a running ``facemogle generate``: it exits 143 with one line
    and no output file, whatever it was doing (loading, sampling)."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "facemogle", "generate", "--mask", str(ws / "mask.png"),
                                "--num-images", "64", "--steps", "200", "-o", str(ws / "long.png")],
                               stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "facemogle generate: terminated" and "Traceback" not in err, err
    assert not any(p.name.startswith(("long", ".long")) for p in ws.iterdir())
