"""Fixtures of the training tests: a small synthetic folder dataset and a clean accelerate state."""

from __future__ import annotations

import pytest

from facemogle.train.bench import write_synthetic_dataset

#: Every training test runs at this size: 32 px -> 4 tokens of 64 values.
RESOLUTION = 32


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """8 synthetic faces (images/, masks/, text/ with two sentences each) at RESOLUTION."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), num_samples=8, resolution=RESOLUTION)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one global state per process; reset it so every test starts clean.
    The tiny models run on one thread: faster than two for such small ops (and the same thread
    count as the subprocesses, which get OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def single_thread_environment() -> dict:
    """Environment of training subprocesses: one torch thread, like the in-process runs."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_config(data_root, output_dir, **sections) -> dict:
    """A tiny-random training config dict at RESOLUTION; ``sections`` update the defaults one level deep."""
    config = {
        "output_dir": str(output_dir),
        "seed": 3,
        "model": {"spec": "tiny-random"},
        "data": {"root": str(data_root), "layout": "folder", "num_val": 2, "resolution": RESOLUTION},
        "cache": {"dir": str(output_dir) + "-cache", "shard_size": 4},
        "train": {"batch_size": 2, "max_steps": 4, "mixed_precision": "no",
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
        "checkpoint": {"every": 2},
        "log": {"every": 1, "tensorboard": False},
        "sample": {"every": 0},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **values}
        else:
            config[name] = values
    return config
