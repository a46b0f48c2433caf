"""``facemogle train CONFIG.yaml [--resume [DIR]] [--max-steps N]``: rectified-flow training.

Runs on one process as is, on several with ``accelerate launch -m facemogle train CONFIG.yaml``.
The config is validated completely before anything is loaded (see ``facemogle.train.config``).
"""

from __future__ import annotations

import argparse
import json

from facemogle.files import atomic_write_text

RESUME_LATEST = "latest"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train Face-MoGLE (LoRA + MoGLE, or a small preset from scratch) from a YAML config",
        description="Train from a YAML config (see configs/*.yaml). Checkpoints, logs and sample grids go to the "
        "config's output_dir. Multi-GPU: accelerate launch -m facemogle train CONFIG.yaml.",
    )
    p.add_argument("config", help="training config (YAML)")
    p.add_argument("--resume", nargs="?", const=RESUME_LATEST, default=None, metavar="DIR",
                   help="continue exactly from a checkpoint: the latest complete one of output_dir (no DIR; a fresh "
                   "run if there is none), or the checkpoint directory DIR")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="override train.max_steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--result-json", default=None, metavar="FILE",
                   help="also write the run's result (steps, per-step losses and seconds, final checkpoint) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facemogle.cli import checks
    from facemogle.train.config import load_config

    checks.input_file("config", args.config)
    if args.max_steps is not None:
        checks.int_in_range("--max-steps", args.max_steps, 1, 10**9)
    if args.result_json:  # before training, not after it
        checks.output_file("--result-json", args.result_json, (".json",))
    overrides = {} if args.max_steps is None else {"train.max_steps": args.max_steps}
    config = load_config(args.config, overrides=overrides)  # every problem reported before any work

    from facemogle.train.trainer import train

    resume = None if args.resume is None else (True if args.resume == RESUME_LATEST else args.resume)
    result = train(config, resume=resume, progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        where = result.final_checkpoint or result.output_dir
        print(f"trained {result.global_step} steps; output: {where}")
        if args.result_json:
            atomic_write_text(args.result_json, json.dumps(result.to_dict(), indent=1) + "\n")
    return 0
