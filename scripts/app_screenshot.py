"""The README's picture of the app and its click-to-image time, on the bundled model.

    python scripts/app_screenshot.py [--output docs/images/app.png] [--runs 3]

Serves the app in-process (the bundled ``tiny`` model, 2 CPU threads by default), paints a stroke
in headless Chromium, clicks Generate and times the click until the image is in the gallery
(median of ``--runs``, the first one a warm-up); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/images/app.png"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import torch

    from facemogle.app import build_app
    from facemogle.app_browser import paint_and_generate
    from facemogle.specs import load_pipeline

    demo = build_app(load_pipeline("tiny"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        times = []
        with tempfile.TemporaryDirectory() as scratch:
            for run in range(args.runs + 1):
                target = args.output if run == args.runs else Path(scratch) / f"run{run}.png"
                result = paint_and_generate(f"http://127.0.0.1:{port}/", target)
                if run:
                    times.append(result["click_to_image_s"])
        print(json.dumps({"model": "tiny", "threads": torch.get_num_threads(), "runs": times,
                          "click_to_image_s_median": statistics.median(times), "screenshot": str(args.output)}))
    finally:
        demo.close()
        demo.face_app.close()


if __name__ == "__main__":
    main()
