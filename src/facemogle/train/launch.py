"""The ``accelerate launch`` command line for data-parallel ``facemogle train`` on CPU processes.

GPU clusters call ``accelerate launch -m facemogle train CONFIG`` with their own accelerate
config; this helper serves the CPU case (the tiny model's recipe and the tests), where the
process group talks over gloo on a local port.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (accelerate's default may be taken)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_train_command(config_file: str | Path, num_processes: int, *train_args: str) -> list[str]:
    """``accelerate launch`` of ``num_processes`` CPU processes running ``facemogle train CONFIG_FILE TRAIN_ARGS``.

    Run it with ``ACCELERATE_USE_CPU=1`` in the environment (accelerate's switch for gloo on CPU) and
    ``OMP_NUM_THREADS`` set to the threads each process may use.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--main_process_port", str(free_local_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "facemogle", "train", str(config_file), *train_args]
