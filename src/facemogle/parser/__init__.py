"""The face parser: photo -> face mask of official CelebAMask-HQ ids, and the recipe that trains it.

``load_parser(None)`` returns the parser shipped in ``facemogle/weights/parser`` (see its
``MODEL_CARD.md``: non-commercial research and education only); ``load_parser(DIR)`` a ``FaceParser``
saved with ``save_pretrained``; ``load_parser(FILE.pth)`` a face-parsing.PyTorch BiSeNet state dict.
Every parser has ``parse(images) -> (B, H, W) uint8`` official ids at each image's own size.

Modules, one concept each:

* ``inference``: the ``parse`` API every parser shares (``PhotoParserMixin``), photo conventions;
* ``model``: ``FaceParser``, the shipped compact U-Net (diffusers ``ModelMixin`` + ``ConfigMixin``),
  with test-time flip and multi-scale testing;
* ``bisenet``: the face-parsing.PyTorch BiSeNet, its ``.pth`` loader and ``BiSeNetParser``;
* ``loading``: ``load_parser`` and ``SHIPPED_PARSER_DIR``;
* ``mirror``: the left/right classes a horizontal flip swaps;
* ``evaluation``: the validation IoU protocol (``evaluate_parser``), quick IoU, parse timing;
* ``losses``, ``augment``, ``sampling``, ``averaging``: the pieces of the training recipe;
* ``training``: ``TrainingSettings`` + ``train_parser`` (``scripts/train_parser.py`` wraps it);
* ``model_card``: the ``MODEL_CARD.md`` the recipe writes.
"""

from facemogle.parser.augment import FLIP_LUT, augment, copy_paste, copy_paste_pool, flip_lut
from facemogle.parser.averaging import WeightAverage, recompute_batch_norm
from facemogle.parser.bisenet import (
    BISENET_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BiSeNet,
    BiSeNetParser,
    load_bisenet,
)
from facemogle.parser.evaluation import evaluate_parser, image_paths, quick_val_iou, time_parse
from facemogle.parser.inference import (
    DEFAULT_BATCH_SIZE,
    ImageSource,
    PhotoParserMixin,
    logits_to_ids,
    open_image,
    resize_photo,
)
from facemogle.parser.loading import SHIPPED_PARSER_DIR, load_parser
from facemogle.parser.losses import lovasz_softmax_loss, segmentation_loss
from facemogle.parser.mirror import MIRRORED_CLASS_PAIRS, mirrored_class_ids
from facemogle.parser.model import FaceParser
from facemogle.parser.model_card import model_card
from facemogle.parser.sampling import epoch_order, repeat_factors
from facemogle.parser.training import TrainingSettings, lr_factor, recipe_command, train_parser

__all__ = [
    "BISENET_INPUT_SIZE",
    "DEFAULT_BATCH_SIZE",
    "FLIP_LUT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIRRORED_CLASS_PAIRS",
    "SHIPPED_PARSER_DIR",
    "BiSeNet",
    "BiSeNetParser",
    "FaceParser",
    "ImageSource",
    "PhotoParserMixin",
    "TrainingSettings",
    "WeightAverage",
    "augment",
    "copy_paste",
    "copy_paste_pool",
    "epoch_order",
    "evaluate_parser",
    "flip_lut",
    "image_paths",
    "load_bisenet",
    "load_parser",
    "logits_to_ids",
    "lovasz_softmax_loss",
    "lr_factor",
    "mirrored_class_ids",
    "model_card",
    "open_image",
    "quick_val_iou",
    "recipe_command",
    "recompute_batch_norm",
    "repeat_factors",
    "resize_photo",
    "segmentation_loss",
    "time_parse",
    "train_parser",
]
