"""`facemogle generate`: the golden acceptance command, outputs, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facemogle.cli import main

GOLDEN_PROMPT = "She is wearing lipstick."


def run_cli(capsys, *argv):
    code = main(["generate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_golden_command_reproduces_reference_png(golden_dir, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, _ = run_cli(
        capsys,
        "--model", "flux-dev",
        "--base", str(golden_dir / "tiny-flux"),
        "--lora", str(golden_dir / "pytorch_lora_weights.safetensors"),
        "--mogle", str(golden_dir / "global_local_mask_moe.pt"),
        "--mask", str(fixtures_dir / "masks" / "27000.png"),
        "--prompt", GOLDEN_PROMPT,
        "--size", "64", "--steps", "4", "--guidance", "3.5", "--seed", "0", "--no-watermark",
        "-o", str(out),
    )
    assert code == 0 and str(out) in stdout
    got = np.asarray(Image.open(out).convert("RGB"), dtype=int)
    expected = np.asarray(Image.open(golden_dir / "golden_C_generate_64_mogle_t_div1000.png").convert("RGB"), dtype=int)
    assert np.abs(got - expected).max() <= 1


def test_several_images_and_a_grid(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "faces" / "face.png"
    code, stdout, _ = run_cli(
        capsys, "--model", "tiny-random", "--mask", str(fixtures_dir / "masks" / "color-coded-1.png"),
        "--num-images", "3", "--steps", "1", "-o", str(out),
    )
    assert code == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["face-0.png", "face-1.png", "face-2.png", "face-grid.png"]
    assert Image.open(out.parent / "face-grid.png").size == (3 * 512, 512)  # faces upscaled to carry the mark
    first, second = (np.asarray(Image.open(out.parent / f"face-{i}.png")) for i in (0, 1))
    assert not np.array_equal(first, second)  # seed, seed+1


def test_text_only_generation(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "--model", "tiny-random", "--prompt", "A person with red hair.", "--steps", "1",
                         "--no-watermark", "-o", str(tmp_path / "t.png"))
    assert code == 0 and Image.open(tmp_path / "t.png").size == (64, 64)


def test_list_models(capsys):
    code, stdout, _ = run_cli(capsys, "--list-models")
    assert code == 0 and "flux-dev" in stdout and "tiny-random" in stdout


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "nope"], "unknown model"),
        (["--model", "tiny-random", "--mask", "/does/not/exist.png"], "does not exist"),
        (["--model", "tiny-random", "--lora", "x.safetensors"], "only apply to --model flux-dev"),
        (["--model", "tiny-random", "--size", "60"], "multiple"),
        (["--model", "tiny-random", "--num-images", "0"], "--num-images"),
        (["--model", "tiny-random", "-o", "out.txt"], "must end in"),
        (["--model", "flux-dev", "--base", "/no/such/flux"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("facemogle")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in err


def test_bad_mask_and_bad_checkpoint_files(golden_dir, tmp_path, capsys):
    bad_mask = tmp_path / "mask.png"
    bad_mask.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = run_cli(capsys, "--model", "tiny-random", "--mask", str(bad_mask), "-o", str(tmp_path / "o.png"))
    assert code == 2 and "Traceback" not in err and "mask.png" in err
    bad_lora = tmp_path / "lora.safetensors"
    bad_lora.write_bytes(b"garbage")
    code, _, err = run_cli(
        capsys, "--model", "flux-dev", "--base", str(golden_dir / "tiny-flux"), "--lora", str(bad_lora),
        "-o", str(tmp_path / "o.png"),
    )
    assert code == 2 and "Traceback" not in err and "lora.safetensors" in err


def test_checkpoint_holding_a_whole_pipeline(tmp_path, capsys):
    from facemogle.specs import load_pipeline

    load_pipeline("tiny-random", seed=3).save_pretrained(tmp_path / "checkpoint-10" / "pipeline")
    out = tmp_path / "o.png"
    code, _, err = run_cli(capsys, "--checkpoint", str(tmp_path / "checkpoint-10"), "--steps", "1", "--no-watermark",
                           "-o", str(out))
    assert code == 0, err
    assert Image.open(out).size == (64, 64)  # the saved pipeline's own default size
    code, _, err = run_cli(capsys, "--checkpoint", str(tmp_path / "checkpoint-10"), "--lora", "x", "-o", str(out))
    assert code == 2 and "do not apply" in err


@pytest.mark.parametrize("args, message", [
    (["--size", "0"], "--size must be in 16..2048"),
    (["--steps", "100000"], "--steps must be in 1..1000"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--mask-guidance", "inf"], "--mask-guidance must be a finite number"),
    (["--seed", str(2**70)], "--seed must be in"),
    (["--seed", "-1"], "--seed must be in"),
    (["--num-images", "0"], "--num-images"),
])
def test_bad_numbers_are_refused_before_the_model_loads(args, message, capsys, monkeypatch, tmp_path):
    import facemogle.specs

    monkeypatch.setattr(facemogle.specs, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["generate", *args, "-o", str(tmp_path / "face.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert main(["generate", "-o", str(tmp_path)]) == 2  # a folder where an image file is meant
    assert "is a folder" in capsys.readouterr().err


def test_bad_device_and_prompt_are_one_line_errors(capsys, monkeypatch, tmp_path):
    import facemogle.specs

    monkeypatch.setattr(facemogle.specs, "get_spec", lambda *a, **k: pytest.fail("the model was looked up"))
    for args, message in ((["--device", "banana"], "unknown device 'banana'"),
                          (["--prompt", "a\udcffb"], "not valid UTF-8"),  # an undecodable byte from argv
                          (["--device", "cuda:7"], "cuda:7")):
        assert main(["generate", *args, "-o", str(tmp_path / "f.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_check_device():
    import torch

    from facemogle.errors import InputError
    from facemogle.specs import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available"):
            check_device("cuda")


def test_many_images_are_made_in_batches_and_equal_single_calls(tmp_path, capsys):
    """--num-images beyond one batch: image k is the image of a single call with seed + k."""
    from facemogle.cli.generate import BATCH

    count = BATCH + 1
    out = tmp_path / "many.png"
    code, _, err = run_cli(capsys, "--model", "tiny-random", "--steps", "2", "--seed", "5", "--no-watermark",
                           "--num-images", str(count), "-o", str(out))
    assert code == 0, err
    assert code == run_cli(capsys, "--model", "tiny-random", "--steps", "2", "--seed", str(5 + BATCH),
                           "--no-watermark", "-o", str(tmp_path / "single.png"))[0]
    last = np.asarray(Image.open(tmp_path / f"many-{BATCH}.png"))
    assert np.array_equal(last, np.asarray(Image.open(tmp_path / "single.png")))
    assert (tmp_path / "many-grid.png").is_file()


def test_outputs_are_all_written_or_none(tmp_path, capsys, monkeypatch):
    import facemogle.provenance

    (tmp_path / "face-0.png").write_bytes(b"the user's old file")
    real_save = facemogle.provenance.save_image
    calls = []

    def failing_save(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(image, path)

    monkeypatch.setattr(facemogle.provenance, "save_image", failing_save)
    code, _, err = run_cli(capsys, "--model", "tiny-random", "--steps", "1", "--num-images", "3", "--no-watermark",
                           "-o", str(tmp_path / "face.png"))
    assert code == 2 and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face-0.png"]  # nothing new, no partial file
    assert (tmp_path / "face-0.png").read_bytes() == b"the user's old file"


def test_output_checks_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import facemogle.specs

    monkeypatch.setattr(facemogle.specs, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    target = tmp_path / "precious.png"
    target.write_bytes(b"keep me")
    (tmp_path / "link.png").symlink_to(target)
    cases = [
        (["-o", str(tmp_path / "link.png")], "is a symbolic link; writing it would replace"),
        (["-o", str(target / "x.png")], "is not a folder"),
        (["--num-images", "65", "-o", str(tmp_path / "a.png")], "--num-images must be in 1..64, got 65"),
        (["--mask", str(tmp_path), "-o", str(tmp_path / "a.png")], "--mask"),
        (["--mask", str(tmp_path / "none.png"), "-o", str(tmp_path / "a.png")], "does not exist"),
        (["-o", str(tmp_path / "a.gif")], "must end in"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)
    assert target.read_bytes() == b"keep me"
