"""Synthetic frontal faces with known attributes for the caption tests: a photo and its class ids."""

from __future__ import annotations

import numpy as np

from facemogle.labels import class_id

SIZE = 256
SKIN = (224, 172, 140)
HAIR_RGB = {
    "black": (15, 13, 12),
    "brown": (90, 60, 40),
    "blond": (225, 195, 130),
    "red": (150, 50, 25),
    "grey": (150, 150, 150),
    "white": (235, 235, 235),
}
#: Between black and dark brown (L 12, chroma 7): the captioner must say nothing.
AMBIGUOUS_DARK_HAIR = (40, 30, 25)
CLASS_RGB = {
    "face skin": SKIN,
    "neck": SKIN,
    "nose": (215, 160, 130),
    "left eye": (60, 50, 40),
    "right eye": (60, 50, 40),
    "left eyebrow": (60, 40, 30),
    "right eyebrow": (60, 40, 30),
    "upper lip": (180, 90, 90),
    "lower lip": (180, 90, 90),
    "inner mouth": (70, 20, 20),
    "eyeglasses": (30, 30, 30),
    "hat": (120, 30, 30),
    "earring": (230, 210, 120),
    "necklace": (220, 200, 120),
}


def synthetic_face(
    *,
    hair: str | None = "long",
    hair_rgb: tuple[int, int, int] = HAIR_RGB["brown"],
    hat: bool = False,
    glasses: str | None = None,
    earrings: bool = False,
    necklace: bool = False,
    mouth: str = "closed",
    cloth_rgb: tuple[int, int, int] = (30, 60, 200),
    background_rgb: tuple[int, int, int] = (245, 245, 245),
    noise_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A frontal face (SIZE x SIZE): ``(photo (H, W, 3) uint8, ids (H, W) uint8)``.

    Face ellipse centred at (125, 128), eye row ~108, chin row ~190, so the face is ~10k pixels.
    hair: "long" (cap + strands down to the bottom edge), "short" (cap ending at the eyes) or None.
    glasses: "eyeglasses" (eyes visible through them), "sunglasses" (eyes hidden) or None.
    mouth: "closed" (narrow, no inner mouth) or "smile" (wide, teeth showing).
    """
    ids = np.zeros((SIZE, SIZE), np.uint8)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]

    def put(name: str, region: np.ndarray) -> None:
        ids[region] = class_id(name)

    put("cloth", rows >= 215)
    put("neck", (rows >= 180) & (rows < 215) & (cols >= 108) & (cols < 148))
    if hair is not None:
        cap = ((rows - 115) / 80.0) ** 2 + ((cols - 128) / 62.0) ** 2 <= 1
        put("hair", cap & (rows < 115))
        if hair == "long":
            put("hair", (rows >= 90) & (((cols >= 66) & (cols < 80)) | ((cols >= 176) & (cols < 190))))
    put("face skin", ((rows - 125) / 65.0) ** 2 + ((cols - 128) / 50.0) ** 2 <= 1)
    for side, (left, right) in (("left", (100, 116)), ("right", (141, 157))):
        put(f"{side} eyebrow", (rows >= 95) & (rows < 100) & (cols >= left) & (cols < right))
        put(f"{side} eye", (rows >= 105) & (rows < 112) & (cols >= left) & (cols < right))
    put("nose", (rows >= 115) & (rows < 145) & (cols >= 122) & (cols < 134))
    if mouth == "closed":
        put("upper lip", (rows >= 155) & (rows < 160) & (cols >= 110) & (cols < 146))
        put("lower lip", (rows >= 160) & (rows < 166) & (cols >= 110) & (cols < 146))
    else:
        put("upper lip", (rows >= 152) & (rows < 156) & (cols >= 96) & (cols < 161))
        put("inner mouth", (rows >= 156) & (rows < 165) & (cols >= 96) & (cols < 161))
        put("lower lip", (rows >= 165) & (rows < 169) & (cols >= 96) & (cols < 161))
    if glasses is not None:
        eyes = np.isin(ids, (class_id("left eye"), class_id("right eye")))
        put("eyeglasses", (rows >= 100) & (rows < 117) & (cols >= 94) & (cols < 163))
        if glasses == "eyeglasses":  # clear lenses: the eyes stay visible
            ids[eyes] = np.where(cols[eyes] < 128, class_id("left eye"), class_id("right eye"))
    if hat:
        put("hat", (rows >= 20) & (rows < 61) & (cols >= 60) & (cols < 197))
    if earrings:
        put("earring", (rows >= 150) & (rows < 154) & (((cols >= 74) & (cols < 78)) | ((cols >= 179) & (cols < 183))))
    if necklace:
        put("necklace", (rows >= 200) & (rows < 202) & (cols >= 110) & (cols < 147))

    colours = {class_id(name): rgb for name, rgb in CLASS_RGB.items()}
    colours.update({class_id("hair"): hair_rgb, class_id("cloth"): cloth_rgb, class_id("background"): background_rgb})
    photo = np.zeros((SIZE, SIZE, 3), np.float64)
    for index, rgb in colours.items():
        photo[ids == index] = rgb
    noise = np.random.default_rng(noise_seed).normal(0.0, 3.0, photo.shape)
    return np.clip(photo + noise, 0, 255).round().astype(np.uint8), ids
