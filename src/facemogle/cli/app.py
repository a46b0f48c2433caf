"""``facemogle app``: the web app (Gradio) on the bundled model or FLUX.1-dev, served until stopped."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from facemogle.cli.model_options import add_model_arguments, resolve_model
from facemogle.errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="the web app: paint a mask or start from your photo, generate, see the gate",
        description="Serve the Gradio app on one model (the model flags are those of `facemogle generate`). "
        "Needs the [app] extra (pip install 'facemogle[app]'). Prints the local URL; Ctrl-C stops it.")
    add_model_arguments(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from facemogle.cli import checks

    checks.int_in_range("--port", args.port, 1, 65535)
    if args.device:
        from facemogle.specs import check_device

        check_device(args.device)
    model, options = resolve_model(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no calls home
    work = Path(tempfile.mkdtemp(prefix="facemogle-app-"))  # every file of a user: here, removed at the end
    os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")  # read when gradio is imported
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("facemogle app needs Gradio: pip install 'facemogle[app]' (or make app)") from None
    from facemogle.app import build_app
    from facemogle.specs import load_pipeline

    if args.device:
        options["device"] = args.device
    try:
        demo = build_app(load_pipeline(model, **options), work_dir=work)
        demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=True)
    except OSError as error:  # the port is taken
        raise InputError(f"cannot serve on {args.host}:{args.port}: {error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
