"""Reproduce the bundled "tiny" model in one command (``make tiny-model``).

Stages (each writes under ``--work-dir``; nothing is written into the dataset folder): captions,
split, autoencoder, text encoders, diffusion from scratch, text emphasis, high noise, small parts, export (float16 + model card) to
``--export``, then ``scripts/evaluate_tiny_model.py`` (metrics into the card, sample grid and gate
plot into ``docs/images``). The stages are described in ``facemogle.train.tiny_recipe``.

Finished stages are reused when the script runs again with the same ``--work-dir`` (each writes
``<stage dir>/stage_report.json``; delete that file to train the stage again).

``--pilot-minutes M`` cuts every stage to a time share of M minutes (1 thread) to check the
recipe end to end and measure each stage's throughput; its export goes to ``<work>/export``
unless ``--export`` is given.

    python scripts/train_tiny_model.py                       # the full run (~4.75 h on 2 cores)
    python scripts/train_tiny_model.py --low-res-config configs/tiny_low_res.yaml \
        --emphasis-config configs/tiny_fast_text_emphasis.yaml --high-noise-config none \
        --small-parts-config none                             # make tiny-model-fast (~2.6 h)
    python scripts/train_tiny_model.py --pilot-minutes 8 --work-dir /tmp/tiny-pilot
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    p.add_argument("--low-res-config", default="none",
                   help="stage 5's own changes to --config (configs/tiny_low_res.yaml: the diffusion run at 64 px; "
                        "the later runs keep --config's resolution); default none")
    p.add_argument("--emphasis-config", default=str(REPO / "configs" / "tiny_text_emphasis.yaml"),
                   help="stage 5b's changes to --config (text emphasis run); 'none': no stage 5b")
    p.add_argument("--high-noise-config", default=str(REPO / "configs" / "tiny_high_noise.yaml"),
                   help="stage 5c's changes on top of 5b's (high-noise run, train.timestep_shift); 'none': no stage 5c")
    p.add_argument("--small-parts-config", default=str(REPO / "configs" / "tiny_small_parts.yaml"),
                   help="stage 5d's changes on top of 5c's (small-parts run, train.part_loss_weight); 'none': no stage 5d")
    p.add_argument("--data", default=None, help="dataset folder (default: the config's data.root)")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "tiny-model"))
    p.add_argument("--export", default=None, help="export directory (default: src/facemogle/weights/tiny; "
                                                      "<work>/export for a pilot)")
    p.add_argument("--num-val", type=int, default=100, help="faces held out for validation (default 100)")
    p.add_argument("--text-steps", type=int, default=1200, help="text-encoder steps (default 1200: ~8 min, 96 epochs)")
    p.add_argument("--text-batch-size", type=int, default=64)
    p.add_argument("--text-lr", type=float, default=1e-3, help="text-encoder learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's)")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel CPU processes (accelerate launch, gloo) for the autoencoder and diffusion stages; "
                        "each gets threads/processes threads and batch/processes samples, so the total batch stays "
                        "the config's")
    p.add_argument("--pilot-minutes", type=float, default=None, help="cut every stage to fit this many minutes")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from facemogle.train.tiny_recipe import RecipeSettings, run_recipe

    return run_recipe(RecipeSettings(
        config=Path(args.config), work_dir=Path(args.work_dir),
        release_dir=REPO / "src" / "facemogle" / "weights" / "tiny",
        evaluate_script=REPO / "scripts" / "evaluate_tiny_model.py",
        data=Path(args.data) if args.data else None, export=Path(args.export) if args.export else None,
        num_val=args.num_val, text_steps=args.text_steps, text_batch_size=args.text_batch_size, text_lr=args.text_lr,
        threads=args.threads, processes=args.processes, pilot_minutes=args.pilot_minutes,
        low_res_config=None if args.low_res_config == "none" else Path(args.low_res_config),
        emphasis_config=None if args.emphasis_config == "none" else Path(args.emphasis_config),
        high_noise_config=None if args.high_noise_config == "none" else Path(args.high_noise_config),
        small_parts_config=None if args.small_parts_config == "none" else Path(args.small_parts_config)))


if __name__ == "__main__":
    raise SystemExit(main())
