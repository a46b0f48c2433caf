"""Sets of images across processes: ``accelerate launch`` (or ``torchrun``) shares the work.

``facemogle evaluate --protocol`` and ``facemogle generate --mask-folder`` make one image per
input, each with its own seed (derived from the input's name, never from its position or its
process), and skip images that exist. Run under a launcher, each process takes every
``count``-th input starting at its ``index`` and the main process waits for the others before it
evaluates or reports; so every image is the one a single process makes, and a run stopped in any
process resumes where it stopped::

    accelerate launch --num_processes 4 -m facemogle evaluate --protocol mmcelebahq DATA ...   # 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m facemogle generate --mask-folder M ...  # 2 CPU processes

(accelerate's launcher starts several processes on a CPU-only machine with ``--multi_gpu``; each
then computes on the CPU with one thread: the launcher sets ``OMP_NUM_THREADS=1``.) Without a
launcher nothing changes: one process, every input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # torch loads with the model, after the command line set its threads
    import torch


@dataclass
class Processes:
    """This process's place among the launched ones: ``index`` of ``count``; ``state`` is
    accelerate's ``PartialState`` (None for a single process)."""

    index: int = 0
    count: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate gives this process (None for a single process: the command's own choice)."""
        import torch

        return None if self.state is None else torch.device(self.state.device)

    def share(self, items: Sequence) -> list:
        """This process's share of ``items``: every ``count``-th one, from ``index``."""
        return list(items[self.index :: self.count])

    def wait(self) -> None:
        """Wait until every process got here (nothing for a single process)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def describe(self) -> str:
        return "" if self.count == 1 else f"process {self.index + 1}/{self.count}"


_PROCESSES: Processes | None = None


def processes() -> Processes:
    """The launched processes (``WORLD_SIZE`` > 1: accelerate's ``PartialState``, gloo on the CPU)."""
    global _PROCESSES
    if _PROCESSES is None:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            _PROCESSES = Processes()
        else:
            import torch
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())
            _PROCESSES = Processes(state.process_index, state.num_processes, state)
    return _PROCESSES
