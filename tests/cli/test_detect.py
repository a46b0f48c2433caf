"""``facemogle detect``, ``--no-watermark`` and ``facemogle bench watermark``."""

from __future__ import annotations

import json

from facemogle.cli import main
from facemogle.cli.detect import EXIT_MARKED, EXIT_UNMARKED, EXIT_UNREADABLE
from facemogle.masks import EXAMPLE_MASK


def test_generate_then_detect_reports_the_mark_and_parameters(tmp_path, capsys):
    face, plain = tmp_path / "face.png", tmp_path / "plain.png"
    common = ["generate", "--model", "tiny-random", "--mask", str(EXAMPLE_MASK), "--prompt", "red hair", "--steps", "1",
              "--seed", "11"]
    assert main([*common, "-o", str(face)]) == 0
    assert main([*common, "--no-watermark", "-o", str(plain)]) == 0
    capsys.readouterr()
    assert main(["detect", str(face)]) == EXIT_MARKED
    out = capsys.readouterr().out
    assert "marked (facemogle, model tiny-random" in out and "trainedAlgorithmicMedia" in out
    assert '"seed": 11' in out and '"prompt": "red hair"' in out
    assert main(["detect", "--json", str(face), str(plain)]) == EXIT_UNMARKED
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["marked"] for r in records] == [True, False] and records[1]["parameters"] is None
    assert not records[1]["trained_algorithmic_media"]


def test_unreadable_files_are_one_line_each_and_exit_two(tmp_path, capsys):
    (tmp_path / "text.png").write_text("not an image")
    assert main(["detect", str(tmp_path / "text.png"), str(tmp_path / "missing.png"), str(tmp_path)]) == EXIT_UNREADABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("facemogle detect: error:") for line in err)


def test_bench_watermark_reports_every_attack(mini_dataset_dir, fixtures_dir, tmp_path):
    out = tmp_path / "wm.json"
    assert main(["bench", "watermark", "--model", "tiny-random", "--data", str(mini_dataset_dir), "--faces", "2",
                 "--real", str(fixtures_dir / "maskgan-samples"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["faces"] == 2 and report["real_photos"] == 8 and report["false_positives"] == 0
    assert set(report["detection_rate"]) == {"none", "jpeg90", "jpeg75", "jpeg50", "resize50", "crop10", "screenshot"}
    assert report["detection_rate"]["none"] == 1.0 and report["psnr_marked_vs_unmarked_db"]["min"] > 30  # noise images
