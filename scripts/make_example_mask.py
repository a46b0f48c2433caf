"""Draw the shipped example mask, src/facemogle/assets/masks/example.png (facemogle.example_mask).

Usage: python scripts/make_example_mask.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from facemogle.example_mask import SIZE, draw_example_mask
from facemogle.masks import present_classes, save_mask

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src/facemogle/assets/masks/example.png"


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else DEFAULT_OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    ids = draw_example_mask()
    save_mask(ids, output, to="ids")
    print(f"wrote {output} ({SIZE}x{SIZE}, classes {present_classes(ids)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
