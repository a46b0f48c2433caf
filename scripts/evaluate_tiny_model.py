"""Measure the bundled "tiny" model on the held-out validation faces; fill its model card.

    python scripts/evaluate_tiny_model.py                 # after make tiny-model (the recipe's last stage)

For every validation face of the recipe's split (``<work>/split.json``), one image is generated from
its mask and its first caption sentence and the shipped face parser reads it back: mask control
(mIoU), an FID-style distance on parser features, the text score, speed and the MoGLE gate weights
(``facemogle.eval.tiny_model_report`` describes each).

Generated images go to ``<work>/eval/generated`` and are reused by a later run only when the model's
weights and the sampling settings are the same (``settings.json`` there). ``--parser`` scores with
another parser. Writes ``<model>/metrics.json``, the "Metrics" section of ``<model>/MODEL_CARD.md``,
``docs/images/tiny_samples.png`` (mask | generated | real) and ``docs/images/tiny_gate_weights.svg``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "src" / "facemogle" / "weights" / "tiny"))
    p.add_argument("--work-dir", default=str(REPO / "runs" / "tiny-model"), help="the recipe's work dir")
    p.add_argument("--data", default=None, help="dataset folder (default: the recipe config's data.root)")
    p.add_argument("--docs", default=str(REPO / "docs" / "images"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N validation faces only (smoke runs)")
    p.add_argument("--card-only", action="store_true",
                   help="measure nothing: rewrite the card's Metrics section from <model>/metrics.json")
    p.add_argument("--parser", default=None, help="face parser folder or BiSeNet .pth (default: the shipped parser)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.card_only:
        from facemogle.eval.tiny_model_report import CARD_FILE, METRICS_FILE, write_card_metrics

        model = Path(args.model)
        for name in (CARD_FILE, METRICS_FILE):
            if not (model / name).is_file():
                raise SystemExit(f"error: --card-only needs {model / name}")
        write_card_metrics(model / CARD_FILE, json.loads((model / METRICS_FILE).read_text(encoding="utf-8")))
        print(f"rewrote the Metrics section of {model / CARD_FILE} from {METRICS_FILE}")
        return 0
    from facemogle.parser import load_parser
    from facemogle.eval.tiny_model_report import evaluate_tiny_model
    from facemogle.train.config import load_config

    data_root = Path(args.data or load_config(REPO / "configs" / "tiny.yaml").data.root).resolve()
    metrics = evaluate_tiny_model(Path(args.model), Path(args.work_dir), data_root, load_parser(args.parser),
                                  Path(args.docs), threads=args.threads, bench_runs=args.bench_runs, seed=args.seed,
                                  limit=args.limit)
    print(json.dumps({k: v for k, v in metrics.items() if k != "gate_weights"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
