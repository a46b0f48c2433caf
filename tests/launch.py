"""Run ``python -m facemogle ...`` as one process or as several under ``accelerate launch``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_facemogle(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    """``python -m facemogle <args>``, or ``accelerate launch --num_processes N -m facemogle <args>``
    (CPU processes start with ``--multi_gpu``: torchrun underneath); asserts exit status 0."""
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment["OMP_NUM_THREADS"] = "1"
    if processes == 1:
        command = [sys.executable, "-m", "facemogle", *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), "-m", "facemogle", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
