"""Semi-automatic captions for face datasets that have masks but no text (``facemogle caption``).

A CelebAMask-HQ-style folder (``images/<stem>.jpg`` + ``masks/<stem>.png``) has no sentences, but
Face-MoGLE trains on mask + text. This package writes captions in the MM-CelebA-HQ layout
(``text/<stem>.txt``, one sentence per line, and ``text.json`` = ``{"<stem>.jpg": [sentences]}``,
METHOD.md section 7) from what the mask and the photo show. Rules are deliberately conservative:
an attribute whose evidence falls between the thresholds is ``None`` and never mentioned, and the
captions never guess gender, age or ethnicity.

Modules, in the order the work is done:

* :mod:`~facemogle.data.captions.photo`: reading the photo and bringing it to the mask's size;
* :mod:`~facemogle.data.captions.colour`: sRGB to CIELAB, basic colour names, hair colour names;
* :mod:`~facemogle.data.captions.morphology`: erosion, opening and speck removal on bool masks;
* :mod:`~facemogle.data.captions.attributes`: ``describe``, which measures one photo/mask pair
  (accessories, hair, mouth, clothing and background colour), and every threshold it uses;
* :mod:`~facemogle.data.captions.phrasing`: ``phrase``, which turns the measurements into
  sentences, and the forbidden-word scan;
* :mod:`~facemogle.data.captions.folder`: ``find_pairs`` and ``caption_folder`` for a dataset folder.

Thresholds were set by looking at photos of ``../shared/data/celebamask-hq-mini``; see
``docs/captions.md`` for the check and the known limits.
"""

from facemogle.data.captions.attributes import ACCESSORY_MIN_AREA, describe
from facemogle.data.captions.colour import (
    COLOUR_NAMES,
    HAIR_COLOURS,
    colour_names,
    dominant_colour,
    hair_colour_name,
    lch,
    srgb_to_lab,
)
from facemogle.data.captions.folder import (
    EVIDENCE_JSON,
    IMAGE_FOLDERS,
    IMAGE_SUFFIXES,
    MASK_FOLDERS,
    TEXT_FOLDER,
    TEXT_JSON,
    caption_folder,
    find_pairs,
    image_seed,
)
from facemogle.data.captions.phrasing import (
    DEFAULT_SENTENCES,
    FALLBACK_SENTENCES,
    FORBIDDEN_WORDS,
    POSSESSIVES,
    SUBJECTS,
    forbidden_words_in,
    phrase,
)
from facemogle.data.captions.photo import ImageSource, read_image

__all__ = [
    "ACCESSORY_MIN_AREA",
    "COLOUR_NAMES",
    "DEFAULT_SENTENCES",
    "EVIDENCE_JSON",
    "FALLBACK_SENTENCES",
    "FORBIDDEN_WORDS",
    "HAIR_COLOURS",
    "IMAGE_FOLDERS",
    "IMAGE_SUFFIXES",
    "ImageSource",
    "MASK_FOLDERS",
    "POSSESSIVES",
    "SUBJECTS",
    "TEXT_FOLDER",
    "TEXT_JSON",
    "caption_folder",
    "colour_names",
    "describe",
    "dominant_colour",
    "find_pairs",
    "forbidden_words_in",
    "hair_colour_name",
    "image_seed",
    "lch",
    "phrase",
    "read_image",
    "srgb_to_lab",
]
