"""The evaluation report as a markdown table laid out like the paper's Table 1.

Section 1: FID / KID / CMMD / Mask / Text / IR, with the paper's Face-MoGLE rows (METHOD.md section
8) for comparison and a row for this run; metrics not computed show as "–". Section 2: the
project's mask-control scores (face parsing of the generated images against the input masks),
mIoU / pixel accuracy and a per-class IoU table.
"""

from __future__ import annotations

import math

from facemogle.eval.protocol import DINO_REFERENCE_BATCH_SIZE, PAPER_TABLE1

#: (column header, metric key in ``report["metrics"]``, decimals) of Table 1.
TABLE1_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("FID ↓", "fid", 2),
    ("KID ↓", "kid_x1000", 2),
    ("CMMD ↓", "cmmd_x1000", 3),
    ("Mask ↓", "dino_structure_reference", 2),
    ("Text ↑", "text", 2),
    ("IR ↑", "image_reward", 4),
)

MISSING = "–"
PERCENT = 100.0


def _cell(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{decimals}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table1_rows(reports: list[dict], *, paper_rows: bool = True) -> list[str]:
    """Markdown lines of a Table-1-style table: the paper's rows (optional), then one row per report."""
    lines = [
        _row(["Method"] + [header for header, _, _ in TABLE1_COLUMNS]),
        _row(["---"] * (len(TABLE1_COLUMNS) + 1)),
    ]
    if paper_rows:
        for name, values in PAPER_TABLE1:
            lines.append(_row([name] + [_cell(values.get(key), d) for _, key, d in TABLE1_COLUMNS]))
    for report in reports:
        label = report.get("label") or "this run"
        metrics = report["metrics"]
        lines.append(_row([f"**{label}**"] + [_cell(metrics.get(key), d) for _, key, d in TABLE1_COLUMNS]))
    return lines


MASK_CONTROL_TITLE = "## Mask control (face parsing of the generated images vs the input masks; not in the paper)"


def mask_control_rows(reports: list[dict]) -> list[str]:
    """Markdown lines of the mIoU / pixel-accuracy table, one row per report that has them."""
    lines = [
        _row(["Method", "mIoU (%) ↑", "pixel accuracy (%) ↑", "mIoU per image (%) ↑"]),
        _row(["---"] * 4),
    ]
    for report in reports:
        metrics = report["metrics"]
        if metrics.get("mask_miou") is None:
            continue
        lines.append(
            _row(
                [f"**{report.get('label') or 'this run'}**"]
                + [_cell(metrics[key] * PERCENT, 2) for key in ("mask_miou", "mask_pixel_accuracy", "mask_miou_per_image")]
            )
        )
    return lines


def render_markdown(report: dict, *, paper_rows: bool = True) -> str:
    """Markdown text of ``report`` (the dictionary ``facemogle.eval.evaluate.evaluate`` returns)."""
    metrics = report["metrics"]
    inputs = report["inputs"]
    lines = [
        "## Generation quality (layout of the paper's Table 1)",
        "",
        *table1_rows([report], paper_rows=paper_rows),
        "",
        f"{inputs['num_images']} generated images from `{inputs['generated']}`"
        + (f", real photos from `{inputs['real']}`" if inputs.get("real") else "")
        + ". KID and CMMD are x 1000. Mask = DINO ViT-B/8 structure distance as the paper's script "
        f"reports it (per-image MSEs summed per batch of {DINO_REFERENCE_BATCH_SIZE}, averaged over batches)"
        + (
            f"; per-image mean: {metrics['dino_structure_per_image']:.5f}."
            if metrics.get("dino_structure_per_image") is not None
            else "."
        ),
    ]
    if metrics.get("mask_miou") is not None:
        lines += ["", MASK_CONTROL_TITLE, "", *mask_control_rows([report]), "", _row(["class", "IoU (%)"]), _row(["---", "---"])]
        for name, iou in metrics["mask_per_class_iou"].items():
            lines.append(_row([name, _cell(iou * PERCENT, 2)]))
    return "\n".join(lines) + "\n"
