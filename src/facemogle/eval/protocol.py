"""The paper's evaluation protocol in names and numbers (METHOD.md section 8), with no heavy imports.

The metric names, their settings (KID subsets, CMMD bandwidth, score scales, the reference DINO
batch size) and the paper's Face-MoGLE results live here, so the command line can list them without
importing torch.
"""

from __future__ import annotations

#: Every metric, in the column order of the paper's Table 1, then the project's mask metric.
METRICS: tuple[str, ...] = ("fid", "kid", "cmmd", "dino", "text", "ir", "miou")

#: The paper reports KID and CMMD multiplied by 1000.
KID_SCALE: float = 1000.0
CMMD_SCALE: float = 1000.0
#: CLIP score = this x cosine similarity (OpenAI CLIP's logit scale).
CLIP_SCORE_SCALE: float = 100.0
#: clean-fid's KID defaults (torchmetrics uses the same).
KID_NUM_SUBSETS: int = 100
KID_MAX_SUBSET_SIZE: int = 1000
KID_DEGREE: int = 3
#: CMMD's RBF kernel bandwidth.
CMMD_SIGMA: float = 10.0
#: Batch size of the reference DINO script, whose number is a per-batch *sum* averaged over batches.
DINO_REFERENCE_BATCH_SIZE: int = 64
#: How the DINO structure distance feeds images (see ``facemogle.eval.features.DinoKeys``).
DINO_INPUT_MODES: tuple[str, ...] = ("reference", "imagenet")

#: Face-MoGLE's rows of the paper's Table 1 (MM-CelebA-HQ test set, 3,000 images; last row zero-shot).
#: Keys are those of ``report["metrics"]``.
PAPER_TABLE1: tuple[tuple[str, dict[str, float]], ...] = (
    ("Face-MoGLE, mask + text (paper)",
     {"fid": 22.24, "kid_x1000": 10.87, "cmmd_x1000": 0.477, "dino_structure_reference": 2.44,
      "text": 26.32, "image_reward": 0.7014}),
    ("Face-MoGLE, mask only (paper)",
     {"fid": 19.63, "kid_x1000": 8.29, "cmmd_x1000": 0.399, "dino_structure_reference": 2.57,
      "text": 24.53, "image_reward": 0.0398}),
    ("Face-MoGLE, text only (paper)",
     {"fid": 34.81, "kid_x1000": 21.85, "cmmd_x1000": 0.636, "dino_structure_reference": 4.94,
      "text": 26.91, "image_reward": 0.9527}),
    ("Face-MoGLE, zero-shot MM-FFHQ-Female (paper)",
     {"fid": 62.93, "kid_x1000": 31.27, "cmmd_x1000": 1.238, "dino_structure_reference": 2.77,
      "text": 28.06, "image_reward": 0.1801}),
)
