"""``facemogle app``: paint a mask (or start from your photo), generate, see the gate. Gradio.

:func:`build_app` makes the page around one pipeline (shared by every request) and, for photos,
the shipped face parser. What a request goes through, in order:

1. **checks** (:func:`check_request`): every value the page or the API sends, before any model
   work: prompt (UTF-8, bounded), seed, steps, guidance, mask guidance, number of images, the
   canvas (:func:`facemogle.painted_mask.ids_from_canvas`: square, bounded size, palette colours
   after snapping brush edges), the photo (:func:`facemogle.images.read_photo`). Images arrive as
   files (the components' ``type="filepath"``) and are decoded here, by the project's one decoder
   (pixel cap, truncated files refused). A bad value is a
   :class:`gradio.Error` with one line naming it: shown in the page, returned through the API; the
   server goes on serving.
2. **mode**: text-only when the canvas is all background, mask-only when the prompt is empty;
   "edit my photo" regenerates where the canvas differs from the photo's parsed mask.
3. **generation** with a :class:`~facemogle.eval.gate_weights.GateRecorder` on the denoising loop
   (the gate's real weights), diffusers' progress bar shown in the page.
4. **outputs**: PNGs carrying their generation parameters (and the watermark), written to the
   app's own temporary folder, which is deleted when the app closes (``facemogle app`` also puts
   Gradio's upload folder, ``GRADIO_TEMP_DIR``, inside it); the gate over the steps (SVG)
   and a heat map over the face of the global expert's weight, with each region's own expert
   weight in a table.

Requests wait in a bounded queue (:data:`MAX_QUEUE`); :data:`CONCURRENCY` run at once.
"""

from __future__ import annotations

import atexit
import math
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facemogle.errors import FaceMoGLEError, InputError
from facemogle.labels import CLASS_NAMES, NUM_CLASSES, PALETTE, class_id

#: Requests waiting at most (more are told the server is busy), and requests run at once (one model).
MAX_QUEUE = 32
CONCURRENCY = 1
#: Bounds of the controls (also enforced for API calls).
MAX_IMAGES = 4
MAX_STEPS = 100
GUIDANCE_RANGE = (0.0, 20.0)
MASK_GUIDANCE_RANGE = (0.0, 10.0)
SEED_MAX = 2**32 - 1
#: The editor's canvas side, and the side photos are cropped and scaled to.
CANVAS_SIDE = 512
START_CANVASES = ("example mask", "blank face", "my photo")
MODES = ("generate", "edit my photo")


@dataclass
class Request:
    """A checked request: the mask ids (None: text-only), the prompt, the sampling values."""

    ids: np.ndarray | None
    prompt: str
    seed: int
    steps: int
    guidance: float
    mask_guidance: float
    num_images: int
    mode: str
    photo: object | None  # PIL image, square, CANVAS_SIDE


def _number(name: str, value, low: float, high: float, *, integer: bool = False) -> float | int:
    """A finite number within [low, high] (an integer where asked), or an InputError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if integer and float(value) != int(value):
        raise InputError(f"{name} must be a whole number, got {value}")
    if not low <= value <= high:
        raise InputError(f"{name} must be in {low:g}..{high:g}, got {value:g}")
    return int(value) if integer else float(value)


def _editor_image(editor) -> np.ndarray | None:
    """The editor value's composite as an array (dict from the page or the API, or an array)."""
    if editor is None:
        return None
    if isinstance(editor, dict):
        value = editor.get("composite")
        if value is None:
            value = editor.get("background")
    else:
        value = editor
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        from facemogle.images import decode_image_file

        return np.asarray(decode_image_file(value, what="canvas").convert("RGBA"))
    if hasattr(value, "mode"):  # PIL
        return np.asarray(value.convert("RGBA"))
    return np.asarray(value)


def square_photo(photo):
    """A photo (path or PIL) centre-cropped to a square and scaled to CANVAS_SIDE, RGB."""
    from PIL import Image

    from facemogle.images import read_photo

    image = read_photo(photo)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((CANVAS_SIDE, CANVAS_SIDE), Image.Resampling.LANCZOS)


def check_request(editor, prompt, seed, random_seed, steps, guidance, mask_guidance, num_images, mode,
                  photo) -> Request:
    """Every value of a request checked (module docstring, step 1); an InputError names the first bad one."""
    from facemogle.painted_mask import ids_from_canvas
    from facemogle.pipeline import check_prompt

    prompt = "" if prompt is None else prompt
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text, got {type(prompt).__name__}")
    check_prompt(prompt)
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    num_images = _number("number of images", num_images, 1, MAX_IMAGES, integer=True)
    steps = _number("steps", steps, 1, MAX_STEPS, integer=True)
    guidance = _number("guidance", guidance, *GUIDANCE_RANGE)
    mask_guidance = _number("mask guidance", mask_guidance, *MASK_GUIDANCE_RANGE)
    if random_seed:
        seed = random.SystemRandom().randrange(SEED_MAX - MAX_IMAGES)
    seed = _number("seed", seed, 0, SEED_MAX - MAX_IMAGES, integer=True)
    canvas = _editor_image(editor)
    ids = None if canvas is None else ids_from_canvas(canvas)
    if ids is not None and (ids == class_id("background")).all():
        ids = None  # an all-background canvas: text-only
    picture = None
    if mode == "edit my photo":
        if photo is None:
            raise InputError("edit my photo needs a photo: upload one first")
        if ids is None:
            raise InputError("edit my photo needs a mask: parse the photo and paint on it")
        picture = square_photo(photo)
    if ids is None and not prompt.strip():
        raise InputError("nothing to generate from: paint a mask or write a prompt")
    return Request(ids, prompt, seed, steps, guidance, mask_guidance, num_images, mode, picture)


# ----------------------------------------------------------------------------- the gate view


def gate_views(recorder, ids: np.ndarray | None, grid: tuple[int, int]) -> tuple[str, np.ndarray, str]:
    """(SVG of the global / local weight over the steps, (H, W, 3) heat map of the global expert's
    weight over the face (blue 0 .. red 1) for the first image, markdown table per region: the
    mean weight of the global expert and of the region's own expert on its tokens)."""
    from facemogle.eval.gate_weights import gate_weights_svg
    from facemogle.masks import resize_mask

    svg = gate_weights_svg(recorder.steps, title="MoGLE gate weight per denoising step (this run)")
    weights = recorder.token_weights[0]  # (N, A)
    names = recorder.names
    global_map = weights[:, names.index("global")].reshape(grid).numpy() if "global" in names else np.zeros(grid)
    heat = np.stack([global_map, 0.2 * np.ones_like(global_map), 1.0 - global_map], axis=-1)
    heat = np.kron((255 * heat.clip(0, 1)).astype(np.uint8), np.ones((16, 16, 1), np.uint8))
    rows = ["| region | tokens | global expert | its own expert |", "|---|---:|---:|---:|"]
    if ids is not None:
        token_ids = resize_mask(ids, grid)
        for cls in range(NUM_CLASSES):
            where = (token_ids == cls).reshape(-1)
            if not where.any():
                continue
            name = CLASS_NAMES[cls]
            own = f"{weights[where, names.index(name)].mean():.3f}" if name in names else "-"
            glob = f"{weights[where, names.index('global')].mean():.3f}" if "global" in names else "-"
            rows.append(f"| {name} | {int(where.sum())} | {glob} | {own} |")
    return svg, heat, "\n".join(rows)


# ----------------------------------------------------------------------------- the app


def legend_html() -> str:
    """The 19 class colours with their names (the brush's swatches are in this order)."""
    cells = "".join(
        f'<span class="fm-class" style="display:inline-flex;align-items:center;margin:2px 8px 2px 0">'
        f'<span style="width:14px;height:14px;background:rgb{tuple(PALETTE[i])};border:1px solid #888;'
        f'display:inline-block;margin-right:4px"></span>{i} {CLASS_NAMES[i]}</span>'
        for i in range(NUM_CLASSES))
    return f'<div class="fm-legend">{cells}</div>'


class FaceApp:
    """The model, the parser and the temporary folder behind the page (one per process)."""

    def __init__(self, pipe, parser=None, *, work_dir: str | Path | None = None):
        self.pipe = pipe
        self._parser = parser
        self._lock = threading.Lock()  # the parser loads once
        self.work_dir = Path(tempfile.mkdtemp(prefix="facemogle-app-", dir=work_dir))
        atexit.register(self.close)

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def parser(self):
        with self._lock:
            if self._parser is None:
                from facemogle.parser import load_parser

                self._parser = load_parser()
            return self._parser

    # -- handlers (each turns FaceMoGLEError into a gradio.Error: a message in the page and the API)

    def start_canvas(self, choice, photo):
        import gradio as gr

        from facemogle.example_mask import draw_example_mask
        from facemogle.masks import resize_mask
        from facemogle.painted_mask import canvas_from_ids

        try:
            if choice == "example mask":
                ids = draw_example_mask()
            elif choice == "blank face":
                ids = draw_example_mask(features=False)
            elif choice == "my photo":
                if photo is None:
                    raise InputError("upload a photo first; the parser turns it into a mask")
                ids = self.parser.parse(square_photo(photo))
            else:
                raise InputError(f"start from one of {', '.join(START_CANVASES)}, got {choice!r}")
        except FaceMoGLEError as error:
            raise gr.Error(str(error)) from None
        return canvas_from_ids(resize_mask(ids, CANVAS_SIDE))

    def generate(self, editor, prompt, seed, random_seed, steps, guidance, mask_guidance, num_images, mode, photo):
        import gradio as gr

        try:
            request = check_request(editor, prompt, seed, random_seed, steps, guidance, mask_guidance, num_images,
                                    mode, photo)
            return self._run(request)
        except FaceMoGLEError as error:
            raise gr.Error(str(error)) from None

    def _run(self, request: Request):
        from facemogle.eval.gate_weights import GateRecorder
        from facemogle.provenance import save_image

        pipe = self.pipe
        size = pipe.default_sample_size * pipe.vae_scale_factor
        recorder = GateRecorder(pipe.mogle)  # the gate view shows the first image's
        common = dict(num_inference_steps=request.steps, guidance_scale=request.guidance,
                      mask_guidance_scale=request.mask_guidance)
        if request.mode == "edit my photo":
            images = []
            for k in range(request.num_images):
                hook = recorder if k == 0 else GateRecorder(pipe.mogle)
                out = pipe.edit(request.photo, request.ids, prompt=request.prompt, seed=request.seed + k,
                                step_hooks=[hook], **common)
                images.append(out.images[0])
        else:
            out = pipe(mask=request.ids, prompt=request.prompt, height=size, width=size,
                       num_images_per_prompt=request.num_images,
                       seed=[request.seed + k for k in range(request.num_images)], step_hooks=[recorder], **common)
            images = out.images
        grid = _token_grid(size, pipe)
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.work_dir))
        paths = [str(save_image(image, folder / f"face-{request.seed + k}.png")) for k, image in enumerate(images)]
        svg, heat, table = gate_views(recorder, request.ids, grid)
        used = f"seed {request.seed}" + (f" .. {request.seed + len(paths) - 1}" if len(paths) > 1 else "")
        mode = ("text only (empty mask)" if request.ids is None else
                "mask only (no prompt)" if not request.prompt.strip() else "mask + text")
        return paths, f"{used}; {mode}", svg, heat, table


def _token_grid(size: int, pipe) -> tuple[int, int]:
    """Tokens per side of a size x size image (one token: 2x2 latent pixels)."""
    return size // pipe.size_multiple, size // pipe.size_multiple


def build_app(pipe, parser=None, *, work_dir: str | Path | None = None, max_queue: int = MAX_QUEUE,
              concurrency: int = CONCURRENCY):
    """The page (a :class:`gradio.Blocks`) around ``pipe``; ``parser`` (default: the shipped one,
    loaded on first use) parses uploaded photos. ``demo.face_app`` is the :class:`FaceApp`."""
    import gradio as gr

    from facemogle.example_mask import draw_example_mask
    from facemogle.painted_mask import canvas_from_ids, palette_hex

    app = FaceApp(pipe, parser, work_dir=work_dir)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    with gr.Blocks(title="facemogle", theme=theme, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## facemogle: paint a face mask, write a prompt, generate\n"
                    "Paint with the class colours (names below); the eraser paints background. "
                    "An all-background canvas generates from the prompt alone; an empty prompt from the mask alone.")
        with gr.Row():
            with gr.Column(scale=3):
                start = gr.Radio(list(START_CANVASES), value="example mask", label="start from")
                photo = gr.Image(type="filepath", label="your photo (cropped to a square)", sources=["upload"],
                                 elem_id="photo")
                editor = gr.ImageEditor(
                    value=canvas_from_ids(draw_example_mask()), type="filepath", image_mode="RGBA",
                    canvas_size=(CANVAS_SIDE, CANVAS_SIDE), fixed_canvas=True, transforms=(), layers=False,
                    brush=gr.Brush(colors=palette_hex(), default_color=palette_hex()[class_id("hair")],
                                   color_mode="fixed", default_size=12),
                    eraser=gr.Eraser(default_size=12), label="mask", elem_id="mask-editor", format="png")
                gr.HTML(legend_html())
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="prompt", placeholder="This person has long blond hair and is smiling.",
                                    elem_id="prompt")
                with gr.Row():
                    seed = gr.Number(value=42, precision=0, minimum=0, maximum=SEED_MAX - MAX_IMAGES, label="seed")
                    random_seed = gr.Checkbox(value=False, label="random seed")
                steps = gr.Slider(1, MAX_STEPS, value=pipe.default_num_inference_steps, step=1, label="steps")
                guidance = gr.Slider(*GUIDANCE_RANGE, value=pipe.default_guidance_scale, step=0.1, label="guidance")
                text_only_w = getattr(pipe, "default_text_only_guidance_scale", None)
                mask_guidance = gr.Slider(*MASK_GUIDANCE_RANGE, value=pipe.default_mask_guidance_scale, step=0.1,
                                          label="mask guidance (1 = off)",
                                          info=None if text_only_w is None else
                                          f"an empty canvas (text-only) draws at the model's {text_only_w:g}")
                num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="number of images")
                mode = gr.Radio(list(MODES), value="generate", label="mode")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                used = gr.Textbox(label="seed used", interactive=False, elem_id="seed-used")
        gallery = gr.Gallery(label="generated (each downloads as a PNG with its parameters)", columns=4,
                             height=300, object_fit="contain", fit_columns=False, format="png",
                             buttons=["download", "download_all"], elem_id="gallery")
        with gr.Accordion("the gate: how much each expert got (last run)", open=False):
            with gr.Row():
                gate_plot = gr.HTML()
                gate_heat = gr.Image(label="global expert's weight over the face (blue 0, red 1)", type="numpy")
            gate_table = gr.Markdown()
        start.change(app.start_canvas, [start, photo], editor, api_name="start_canvas")
        photo.upload(lambda p: app.start_canvas("my photo", p), photo, editor, api_name=False)
        def generate(editor, prompt, seed, random_seed, steps, guidance, mask_guidance, num_images, mode, photo,
                     progress=gr.Progress(track_tqdm=True)):  # diffusers' progress bar, in the page
            return app.generate(editor, prompt, seed, random_seed, steps, guidance, mask_guidance, num_images, mode,
                                photo)

        run.click(generate, [editor, prompt, seed, random_seed, steps, guidance, mask_guidance, num_images, mode,
                                 photo], [gallery, used, gate_plot, gate_heat, gate_table], api_name="generate")
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    demo.face_app = app
    return demo
