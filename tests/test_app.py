"""facemogle.app: the Gradio app, served in-process on the tiny-random model, driven through gradio_client.

Every bad input comes back as an error message naming the problem, and the server answers a
normal request right after it; 20 clients at once get 20 results with the memory bounded.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading

import numpy as np
import pytest
from PIL import Image

# Every file a client uploads lands here (gradio reads GRADIO_TEMP_DIR when it is imported), as
# `facemogle app` puts it in the folder it removes at the end.
UPLOADS = os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="facemogle-test-uploads-"))
pytest.importorskip("gradio", reason="the app needs the [app] extra (gradio)")

from facemogle.example_mask import draw_example_mask  # noqa: E402
from facemogle.masks import render_mask  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        line = next(row for row in handle if row.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(demo, url, client) on tiny-random; the app's files under a temporary folder."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    from facemogle.app import build_app
    from facemogle.specs import load_pipeline

    work = tmp_path_factory.mktemp("app")
    demo = build_app(load_pipeline("tiny-random"), work_dir=work)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, show_error=True)
    url = f"http://127.0.0.1:{port}/"
    yield demo, url, Client(url, verbose=False)
    demo.close()
    demo.face_app.close()
    assert not demo.face_app.work_dir.exists()  # the app's files go with it
    if UPLOADS.startswith(tempfile.gettempdir()) and "facemogle-test-uploads-" in UPLOADS:
        import shutil

        shutil.rmtree(UPLOADS, ignore_errors=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    ids = draw_example_mask()
    Image.fromarray(render_mask(ids)).save(folder / "mask.png")
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(folder / "background.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(render_mask(ids)[:, :300]).save(folder / "narrow.png")
    (folder / "text.png").write_text("not an image")
    Image.fromarray(render_mask(ids)).save(folder / "full.png")
    (folder / "cut.png").write_bytes((folder / "full.png").read_bytes()[:2000])
    # without ../shared: a smooth stand-in photo (the mask's colours, 400 x 300), not noise, whose
    # every pixel a resampling would change
    photo = np.asarray(Image.open(REPO_PHOTO).convert("RGB")) if REPO_PHOTO.exists() else \
        np.asarray(Image.fromarray(render_mask(ids)).resize((300, 400), Image.Resampling.BILINEAR))
    Image.fromarray(photo).save(folder / "photo.png")
    return folder


from pathlib import Path  # noqa: E402

REPO_PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celebamask-hq-mini" / "images" / \
    "00129b5490b5459d813a2f031033635e.jpg"


def editor(path) -> dict:
    from gradio_client import handle_file

    return {"background": None, "layers": [], "composite": handle_file(str(path)), "id": None}


def generate(client, canvas, prompt="This person is smiling.", **values):
    arguments = dict(seed=3, random_seed=False, steps=2, guidance=1.0, mask_guidance=1.0, num_images=1, mode="generate",
                     photo=None)
    arguments.update(values)
    return client.predict(canvas, prompt, *arguments.values(), api_name="/generate")


def test_generate_from_a_mask_file_gives_a_png_with_its_parameters(served, files):
    _, _, client = served
    gallery, used, svg, heat, table = generate(client, editor(files / "mask.png"), num_images=2)
    assert len(gallery) == 2 and used == "seed 3 .. 4; mask + text"
    image = Image.open(gallery[0]["image"])
    assert image.format == "PNG"
    parameters = json.loads(image.info["parameters"])
    assert parameters["seed"] == 3 and parameters["prompt"] == "This person is smiling." and parameters["steps"] == 2
    assert "<svg" in svg and Image.open(heat).size[0] > 0
    assert "| face skin |" in table and "| background |" in table  # the regions of the mask, with their expert weights

    # the same request again: the same image (seeded), and a mask-only one
    again, _, _, _, _ = generate(client, editor(files / "mask.png"), num_images=1)
    assert np.array_equal(np.asarray(Image.open(again[0]["image"])), np.asarray(image))
    _, used, _, _, _ = generate(client, editor(files / "mask.png"), prompt="")
    assert used.endswith("mask only (no prompt)")


def test_text_only_when_the_canvas_is_all_background(served, files):
    _, _, client = served
    gallery, used, _, _, table = generate(client, editor(files / "background.png"), prompt="This person has black hair.")
    assert len(gallery) == 1 and used.endswith("text only (empty mask)")
    assert table.count("\n") == 1  # no region rows: there is no mask


def test_random_seed_shows_the_seed_used(served, files):
    _, _, client = served
    gallery, used, _, _, _ = generate(client, editor(files / "mask.png"), random_seed=True)
    seed = int(used.split()[1].rstrip(";"))
    assert json.loads(Image.open(gallery[0]["image"]).info["parameters"])["seed"] == seed


def test_start_from_a_photo_then_edit_it(served, files):
    from gradio_client import handle_file

    _, _, client = served
    canvas = client.predict("my photo", handle_file(str(files / "photo.png")), api_name="/start_canvas")
    parsed = np.asarray(Image.open(canvas["layers"][0]))[..., :3]
    assert parsed.shape == (512, 512, 3)
    assert len(np.unique(parsed.reshape(-1, 3), axis=0)) > 2  # the parser found several classes
    blank = client.predict("blank face", None, api_name="/start_canvas")
    assert np.asarray(Image.open(blank["layers"][0])).shape[:2] == (512, 512)

    edited = np.asarray(Image.open(canvas["layers"][0]).convert("RGB")).copy()
    edited[40:120, 40:200] = (255, 255, 0)  # a hat (class colour) painted on the parsed mask
    Image.fromarray(edited).save(files / "edited.png")
    gallery, used, _, _, _ = generate(client, editor(files / "edited.png"), mode="edit my photo",
                                      photo=handle_file(str(files / "photo.png")))
    assert len(gallery) == 1
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    photo = np.asarray(Image.open(files / "photo.png").convert("RGB"))
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = np.asarray(Image.fromarray(photo[top:top + side, left:left + side]).resize(
        (512, 512), Image.Resampling.LANCZOS)).astype(int)
    assert out.shape == square.shape
    diff = np.abs(out - square).mean(-1)
    print("edit: mean difference far from the edit", diff[400:, 400:].mean(), "in it", diff[40:120, 40:200].mean())
    assert diff[400:, 400:].mean() < 3 < diff[40:120, 40:200].mean()  # the photo's own pixels away from the edit


BAD = {
    "not an image": (lambda f: editor(f / "text.png"), {}, "cannot identify image file"),  # gradio decodes it first
    "unknown colours": (lambda f: editor(f / "noise.png"), {}, "not class colours"),
    "wrong size": (lambda f: editor(f / "narrow.png"), {}, "must be square"),
    "over-long prompt": (lambda f: editor(f / "mask.png"), {"prompt": "x" * 5000}, "too long"),
    # the components' own bounds answer first, naming the value and the bound
    "steps out of range": (lambda f: editor(f / "mask.png"), {"steps": 100000}, "100000 is greater than maximum value 100"),
    "guidance out of range": (lambda f: editor(f / "mask.png"), {"guidance": 1e9}, "greater than maximum value 20"),
    "too many images": (lambda f: editor(f / "mask.png"), {"num_images": 50}, "50 is greater than maximum value 4"),
    "negative seed": (lambda f: editor(f / "mask.png"), {"seed": -5}, "-5 is less than minimum value 0"),
    "fractional images": (lambda f: editor(f / "mask.png"), {"num_images": 1.5}, "whole number"),
    "unknown mode": (lambda f: editor(f / "mask.png"), {"mode": "paint"}, "'paint'"),
    "a truncated photo": (lambda f: editor(f / "mask.png"), {"mode": "edit my photo", "photo": "cut.png"},
                          "truncated"),
    "edit without a photo": (lambda f: editor(f / "mask.png"), {"mode": "edit my photo"}, "needs a photo"),
    "nothing to generate": (lambda f: editor(f / "background.png"), {"prompt": ""}, "nothing to generate"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_input_is_a_message_and_the_server_keeps_serving(served, files, name):
    _, _, client = served
    canvas, values, message = BAD[name]
    values = {"prompt": "This person is smiling.", **values}
    prompt = values.pop("prompt")
    if isinstance(values.get("photo"), str):
        from gradio_client import handle_file

        values["photo"] = handle_file(str(files / values["photo"]))
    with pytest.raises(Exception) as refused:
        generate(client, canvas(files), prompt=prompt, **values)
    assert message in str(refused.value), str(refused.value)
    gallery, _, _, _, _ = generate(client, editor(files / "mask.png"))  # then a normal request works
    assert len(gallery) == 1


def test_twenty_clients_at_once_get_twenty_results_with_bounded_memory(served, files):
    from gradio_client import Client

    _, url, client = served
    generate(client, editor(files / "mask.png"))  # warm
    before = rss_mb()
    results, errors = [], []

    def one(k: int) -> None:
        try:
            gallery, used, _, _, _ = generate(Client(url, verbose=False), editor(files / "mask.png"), seed=100 + k)
            results.append((k, used, gallery[0]["image"]))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and len(results) == 20
    assert sorted(used for _, used, _ in results) == sorted(f"seed {100 + k}; mask + text" for k in range(20))
    grown = rss_mb() - before
    print(f"20 concurrent clients: memory {before:.0f} -> {before + grown:.0f} MB")
    assert grown < 400, f"memory grew by {grown:.0f} MB for 20 requests"


def test_the_request_checks_name_what_the_api_cannot_even_send():
    """Values JSON cannot carry (NaN) or the components would refuse, checked by the app itself."""
    from facemogle.app import check_request
    from facemogle.errors import InputError

    canvas = render_mask(draw_example_mask())
    good = dict(editor=canvas, prompt="a face", seed=1, random_seed=False, steps=2, guidance=1.0, mask_guidance=1.0,
                num_images=1, mode="generate", photo=None)
    assert check_request(**good).ids.shape == (512, 512)
    for name, value, message in (("guidance", float("nan"), "guidance must be a finite number"),
                                 ("mask_guidance", float("inf"), "mask guidance must be a finite number"),
                                 ("steps", 0, "steps must be in 1..100"), ("num_images", 2.5, "whole number"),
                                 ("seed", 2**40, "seed must be in"), ("prompt", b"bytes", "must be text")):
        with pytest.raises(InputError, match=message):
            check_request(**{**good, name: value})


def _chromium() -> str:
    """The system browser (Debian's chromium); a test that cannot get one fails in CI, skips elsewhere."""
    from facemogle.app_browser import system_chromium

    found = system_chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on this CI machine (.ci/run installs Debian's chromium package as root)")
        pytest.skip("no chromium browser here (apt-get install chromium)")
    pytest.importorskip("playwright", reason="the browser test needs playwright (the [dev] extra)")
    return found


def test_in_a_real_browser_a_painted_stroke_generates_a_face(served):
    """Headless Chromium opens the page, paints a stroke in a class colour, clicks Generate and finds
    the image in the gallery (facemogle.app_browser); the screenshot is kept in out/app-browser-test.png."""
    from facemogle.app_browser import paint_and_generate

    _, url, _ = served
    chromium = _chromium()
    screenshot = Path(__file__).resolve().parents[1] / "out" / "app-browser-test.png"
    screenshot.parent.mkdir(exist_ok=True)
    result = paint_and_generate(url, screenshot, chromium=chromium)
    assert result["seed_used"] == "seed 42; mask + text"
    assert Image.open(screenshot).size[0] == 1400
