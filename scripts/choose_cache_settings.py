"""Choose the cache settings the bench and the README name, on TRAINING faces (not validation).

Runs :func:`facemogle.bench_generate.bench_generate` on the bundled model with a wider set of
candidate settings, quality measured on the first ``--faces`` faces of the training split, and
writes the report (``--json``). The chosen settings are then measured on validation faces by
``facemogle bench generate --caches --quality-masks 50`` (README, "Speed").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CANDIDATES = {
    **{f"condition every:{k}": {"condition_cache": f"every:{k}"} for k in (2, 3, 4)},
    **{f"condition every:{k}+first": {"condition_cache": f"every:{k}+first"} for k in (4, 6, 10)},
    **{f"step first-block:{t}": {"step_cache": f"first-block:{t}"} for t in (0.05, 0.08, 0.1, 0.15, 0.2)},
    "condition every:4+first, step first-block:0.1": {"condition_cache": "every:4+first",
                                                       "step_cache": "first-block:0.1"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/celebamask-hq-mini")
    p.add_argument("--faces", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path("out/choose_cache_settings.json"))
    args = p.parse_args()

    from facemogle.bench_generate import bench_generate
    from facemogle.files import atomic_write_text

    report = bench_generate("tiny", runs=args.runs, caches=True, quality_data=args.data, quality_masks=args.faces,
                            quality_split="train", cache_settings=CANDIDATES)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    for name, entry in report["cache_settings"].items():
        q = entry["quality"]
        print(f"{name:48s} x{entry['speedup_vs_exact']:.2f} overhead/base {entry['overhead_vs_base']:.2f} "
              f"ratio {q['miou_ratio_change']:+.3f} fid {q['fid_style_change']:+.1%} mean px {q['mean_pixel_difference']}")


if __name__ == "__main__":
    main()
