"""Every generated face says it is generated: an invisible watermark and readable PNG metadata.

* **Watermark**: invisible-watermark's DWT-DCT-SVD (the library Stable Diffusion XL ships for the
  same purpose), embedding a 48-bit payload, ``PROJECT_TAG`` (32 bits) + the model spec's id (16
  bits), in the U channel at strength ``WATERMARK_SCALE``. The library needs sides above 256 px
  and is measured robust at 512 px, so an image whose shorter side is below ``MIN_MARK_SIDE`` is
  upscaled (Lanczos) to it first: the bundled model's 128 px faces come out at 512 px.
  A file reads as marked when its 48 decoded bits match a known payload in at least
  ``MIN_MATCHING_BITS`` places (``facemogle bench watermark`` measures both sides of that bound).
* **Metadata** (PNG): a ``parameters`` text chunk with the generation parameters as JSON (model
  spec, seed, steps, guidance, mask guidance, prompt) and an XMP packet whose IPTC
  ``DigitalSourceType`` is ``trainedAlgorithmicMedia``, the value the IPTC defines for media made
  by a trained model. No C2PA manifest: no maintained Python library signs one offline here.

``mark_image`` marks a PIL image and attaches the parameters to ``image.info``; ``save_image``
writes it with the metadata; ``read_provenance`` tells what a file carries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from facemogle.errors import InputError
from facemogle.files import atomic_write

#: First 32 payload bits: "this image was made by facemogle".
PROJECT_TAG = 0xFACE3061
#: Last 16 payload bits: which model spec made it (0: unknown).
MODEL_SPEC_IDS: dict[str, int] = {"unknown": 0, "tiny": 1, "flux-dev": 2, "saved": 3, "tiny-random": 4}
PAYLOAD_BITS = 48
WATERMARK_METHOD = "dwtDctSvd"
#: Embedding strength: PSNR >= 39.6 dB against the unmarked image on faces and real photos (>= 38 asked).
WATERMARK_SCALE = 40
#: Shorter side an image is brought to before it is marked.
MIN_MARK_SIDE = 512
#: Smallest side the library can read or mark.
MIN_READABLE_SIDE = 257
#: Decoded bits that must equal a known payload for "marked" (48 bits; random images match ~24).
MIN_MATCHING_BITS = 42
#: IPTC digital source type of media made by a trained algorithm.
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PARAMETERS_KEY = "parameters"
XMP_KEY = "XML:com.adobe.xmp"


def payload_bits(model_spec: str) -> list[int]:
    """The 48 payload bits of a model spec (unknown names get id 0)."""
    value = (PROJECT_TAG << 16) | MODEL_SPEC_IDS.get(model_spec, 0)
    return [int(b) for b in format(value, f"0{PAYLOAD_BITS}b")]


def mark_image(image: Image.Image, model_spec: str = "unknown", parameters: dict | None = None) -> Image.Image:
    """The image with the invisible watermark (upscaled first if its shorter side is below
    ``MIN_MARK_SIDE``), its generation ``parameters`` in ``info`` (written by :func:`save_image`)."""
    from imwatermark import WatermarkEncoder

    image = image.convert("RGB")
    if min(image.size) < MIN_MARK_SIDE:
        scale = MIN_MARK_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", payload_bits(model_spec))
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    marked = encoder.encode(bgr, WATERMARK_METHOD, scales=[0, WATERMARK_SCALE, 0])
    result = Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))
    result.info[PARAMETERS_KEY] = json.dumps({"model_spec": model_spec, **(parameters or {})}, ensure_ascii=False)
    return result


def mark_generated(images: list[Image.Image], model_spec: str, *, seed, prompts: list[str], **settings) -> list[Image.Image]:
    """Mark a call's images with their own parameters: ``seed`` as the call got it (an int for
    seed, seed + 1, ..., one per image, or None for generators), each image's prompt, ``settings``."""
    if seed is None:
        seeds = [None] * len(images)
    else:
        seeds = [seed + i for i in range(len(images))] if isinstance(seed, int) else [int(s) for s in seed]
    return [mark_image(image, model_spec, {"seed": s, **settings, "prompt": p})
            for image, s, p in zip(images, seeds, prompts)]


@dataclass
class MarkReading:
    """What the watermark decoder found: ``present``, the ``model_spec`` of the best-matching
    payload, how many of its 48 bits matched; ``readable`` False for an image too small to read."""

    present: bool
    model_spec: str | None
    matching_bits: int
    readable: bool = True


def read_mark(image: Image.Image) -> MarkReading:
    """Decode the watermark of an image (any size above 256 px a side)."""
    from imwatermark import WatermarkDecoder

    image = image.convert("RGB")
    if min(image.size) < MIN_READABLE_SIDE:
        return MarkReading(False, None, 0, readable=False)
    decoder = WatermarkDecoder("bits", PAYLOAD_BITS)
    bits = decoder.decode(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]), WATERMARK_METHOD,
                          scales=[0, WATERMARK_SCALE, 0])
    best, best_spec = -1, None
    for spec in MODEL_SPEC_IDS:
        matching = sum(int(a == b) for a, b in zip(bits, payload_bits(spec)))
        if matching > best:
            best, best_spec = matching, spec
    present = best >= MIN_MATCHING_BITS
    return MarkReading(present, best_spec if present else None, best)


def xmp_packet() -> str:
    """An XMP packet declaring the image made by a trained model (IPTC DigitalSourceType)."""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            'xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
            f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}" xmp:CreatorTool="facemogle"/>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write an image atomically; PNGs of marked images (``info["parameters"]``) also carry the
    parameters chunk and the XMP packet. Other formats are written plainly."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        info = PngImagePlugin.PngInfo()
        if PARAMETERS_KEY in image.info:
            info.add_text(PARAMETERS_KEY, image.info[PARAMETERS_KEY])
            info.add_itxt(XMP_KEY, xmp_packet())
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if suffix not in formats:
        raise InputError(f"{path}: images are written as .png, .jpg or .webp")
    return atomic_write(path, lambda tmp: image.save(tmp, format=formats[suffix], quality=95))


@dataclass
class Provenance:
    """What a file says about itself: the watermark reading and the PNG metadata."""

    mark: MarkReading
    parameters: dict | None = None
    trained_algorithmic_media: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def marked(self) -> bool:
        return self.mark.present


def read_provenance(path: str | os.PathLike) -> Provenance:
    """Read a file's watermark and metadata. Raises ``InputError`` for a file that is not a
    readable image."""
    from facemogle.parser.inference import open_image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a regular file")
    try:
        with Image.open(path) as raw:
            raw.load()
            text = dict(getattr(raw, "text", {}) or {})
            xmp = raw.info.get(XMP_KEY) or raw.info.get("xmp") or text.get(XMP_KEY) or ""
    except Exception as error:  # PIL raises many kinds for damaged files
        raise InputError(f"{path} is not a readable image ({type(error).__name__})") from None
    notes = []
    parameters = None
    if PARAMETERS_KEY in text:
        try:
            parameters = json.loads(text[PARAMETERS_KEY])
        except json.JSONDecodeError:
            notes.append("the parameters chunk is not valid JSON")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    return Provenance(read_mark(open_image(path)), parameters, "trainedAlgorithmicMedia" in xmp, notes)
