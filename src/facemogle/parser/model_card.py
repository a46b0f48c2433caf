"""The face parser's ``MODEL_CARD.md``, written from the recipe's ``metrics.json`` report.

``model_card(report)`` describes the weights (size, input convention, test-time flip and sizes), the
recipe (every stage's command, read from the ``metrics.json`` of the ``--init-from`` weights), the
training settings of the last stage that trained, the validation split, the per-class IoU and the speed.
``report`` is the dict ``facemogle.parser.training`` writes to ``metrics.json``.
"""

from __future__ import annotations

from facemogle.labels import CLASS_NAMES, NUM_CLASSES
from facemogle.parser.evaluation import TIMING_REPEATS


def recipe_text(report: dict) -> str:
    """The command(s) that made the weights: one, or each stage (from scratch, then fine-tuning ones)."""
    stages = report.get("earlier_stages") or []
    if not stages:
        return f"```\n{report['command']}\n```"
    items = [f"{i}. {'From scratch' if i == 1 else f'Fine-tuned from stage {i - 1} (`--init-from`)'}, "
             f"{stage['epochs']} epochs ({stage['train_minutes']} min on {stage['threads']} thread(s); "
             f"val mIoU {stage['mean_iou']:.4f}):\n   ```\n   {stage['command']}\n   ```"
             for i, stage in enumerate(stages, start=1)]
    last = len(stages) + 1
    what = (f"No further training (`--epochs 0`): stage {last - 1}'s weights, saved with the inference settings "
            "below and measured again" if report["epochs"] == 0 else f"Fine-tuned from stage {last - 1} (`--init-from`)")
    items.append(f"{last}. {what}, the shipped weights:\n   ```\n   {report['command']}\n   ```")
    return (f"{len(stages) + 1} stages (`make parser` runs them all; the commands below are as each stage ran, "
            "`make parser` keeps the intermediate weights under `out/parser-work`):\n\n" + "\n".join(items))


def sampling_text(threshold: float) -> str:
    if not threshold:
        return "Sampling: every training image once per epoch, shuffled."
    return (f"Sampling: repeat-factor sampling, threshold {threshold} (an image is drawn with weight max(1, sqrt({threshold} / f)) "
            "over its classes, f = fraction of training images holding the class; rare classes such as necklace, hat "
            "and eyeglasses are seen about twice as often).")


def sizes_text(args: dict) -> str:
    sizes = args.get("test_time_sizes") or []
    if not sizes:
        return ""
    listed = " and ".join(f"{size}x{size}" for size in sizes)
    return (f"; the same again with the photo resized to {listed} and the log-probabilities of all sizes averaged "
            "(multi-scale testing; config `test_time_sizes`)")


def lovasz_text(args: dict) -> str:
    weight = args.get("lovasz_weight", 0.0)
    return f" + {weight} x Lovasz-softmax (on a stride-{args['lovasz_stride']} pixel grid)" if weight else ""


def averaging_text(args: dict) -> str:
    epochs = args.get("swa_epochs", 0)
    if not epochs:
        return ""
    return (f"Weight averaging (SWA): the cosine decays to {args['swa_lr_factor']} x lr, held for the last {epochs} epochs; "
            f"the weights at the end of each of those epochs are averaged and the BatchNorm statistics re-estimated "
            "on the (unaugmented) training photos.\n")


def copy_paste_text(args: dict) -> str:
    classes = args.get("copy_paste_classes") or []
    if not classes:
        return ""
    return (f" Copy-paste (before the above): with p={args['copy_paste_prob']} an image gets one object of "
            f"{', '.join(classes)} (a class drawn uniformly, then one of the training images holding at least "
            f"{args['copy_paste_min_pixels']} of its pixels) pasted at its own place, mirrored half the time.")


def model_card(report: dict) -> str:
    stages = report.get("earlier_stages") or []
    trained, label = report, " (last stage)" if stages else ""
    if report["epochs"] == 0 and stages and stages[-1].get("args"):  # a re-packaging step: describe the last training
        trained, label = stages[-1], f" (stage {len(stages)}, the last that trained)"
    targs = trained["args"]
    rows = "\n".join(
        f"| {i} | {name} | {report['per_class_iou'][name]:.4f} |" for i, name in enumerate(CLASS_NAMES)
    )
    split = report["split"]
    timings = "\n".join(
        f"- {name.replace('_', ' ')}: **{seconds * 1000:.0f} ms**" for name, seconds in report["parse_seconds_512"].items()
    )
    return f"""# facemogle face parser (FaceParser, compact U-Net)

Photo -> face mask in the official CelebAMask-HQ label order (19 classes). Loaded by
`facemogle.parser.load_parser()` and used by `facemogle parse`.

## Licence: non-commercial research and education only

Trained on **celebamask-hq-mini**: 900 real CelebAMask-HQ 512x512 image/mask pairs (the "mini" set of
a university face-parsing course, as committed in the public GitHub repo
anamikakolady/CelebAMask-Face-Parsing, commit 2501c452, folder CelebAMask_Face_Parsing/dev-public/train).
CelebAMask-HQ is licensed for **non-commercial research and educational purposes only**; these
weights carry the same restriction. The facemogle code is Apache-2.0; the weights are not.

## Model

- `FaceParser`: {report['parameters']:,} parameters, safetensors weights {report['weights_bytes'] / 1e6:.1f} MB (stored as
  {report['args']['weights_dtype']}, computed in float32; every number below is measured on the stored weights).
- Input: RGB photo resized to {report['args']['sample_size']}x{report['args']['sample_size']} (bilinear), scaled to [-1, 1], plus (y, x)
  coordinate channels; logits at half that size, averaged with the logits of the mirrored photo
  (left/right classes swapped back; config `test_time_flip`){sizes_text(report['args'])}, bilinearly upsampled to the photo's
  size, argmax.
- Trained from scratch (no pretrained backbone).

## Recipe

{recipe_text(report)}

Training{label}: {trained['epochs']} epochs, batch {targs['batch_size']}, AdamW (lr {targs['lr']}, weight decay
{targs['weight_decay']}), 1 warm-up epoch then cosine decay, cross-entropy + {targs['dice_weight']} x soft Dice{lovasz_text(targs)},
bf16 autocast = {targs['bf16']}, seed {targs['seed']}. Augmentation: horizontal flip with left/right eye,
eyebrow and ear swap; rotation +-{targs['max_rotation']} deg, scale x/÷{targs['max_scale']}, shift +-{targs['max_shift']};
brightness/contrast/saturation +-{targs['color_jitter']}, greyscale p={targs['greyscale_prob']}.{copy_paste_text(targs)}
Dice averaged over {'the classes present in each batch' if targs.get('dice_classes') == 'present' else 'all classes'}.
{averaging_text(targs)}{sampling_text(targs.get('rare_class_threshold', 0.0))}
Training time{' of that stage' if trained is not report else ' of this stage' if stages else ''}: **{trained['train_minutes']} min** on {trained['threads']} CPU thread(s) (Intel Xeon, 2 cores shared).

## Validation split

`facemogle.data.splits.split_folder(data, num_val={split['num_val']}, salt={split['salt']!r})`: {split['rule']}.
{split['num_train']} train / {split['num_val']} val images. Val fingerprint (sha256 of the sorted val stems):
`{split['val_fingerprint']}`.

## Validation IoU

Protocol (`facemogle.parser.evaluate_parser`): every val photo parsed at its full 512x512
resolution, one confusion matrix accumulated over all val pixels, IoU = TP / (TP + FP + FN) per class.

Validation mean IoU ({NUM_CLASSES} classes): **{report['mean_iou']:.4f}**

| id | class | IoU |
| --- | --- | --- |
{rows}

## Speed

`parse` on one 512x512 photo, CPU, float32, test-time flip on ({2 * (1 + len(report['args'].get('test_time_sizes') or []))} forward passes), decoding
excluded, resize and upsampling included, median of {TIMING_REPEATS}:
{timings}

Measured on a 2-core Intel Xeon (Sapphire Rapids) VM shared with other jobs. When other processes
keep the cores busy, OpenMP's spin-waiting makes two torch threads much slower than one; starting
Python with `OMP_WAIT_POLICY=PASSIVE` (or using one thread) avoids that.
"""

