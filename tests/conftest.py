"""Shared test fixtures: paths into ../shared, skipped with a reason when it is absent.

The suite runs torch with the ``facemogle`` command's CPU thread policy (facemogle.cpu_threads,
set here before torch is imported): a core found busy at start-up gets no thread, and OpenMP's
spinning is bounded, so a busy machine slows the suite down by its share of the cores instead of
20-30x. Results then do not depend on the load beyond the thread count, which the tests'
tolerances allow for (tests/tolerances.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from facemogle import cpu_threads

cpu_threads.configure()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def _shared_path(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/{relative} (the project's shared data), which is absent")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/data/fixtures: small masks and photos in the formats users have."""
    return _shared_path("data/fixtures")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """../shared/golden: tensors computed by the reference implementation on tiny models."""
    return _shared_path("golden")


@pytest.fixture(scope="session")
def mini_dataset_dir() -> Path:
    """../shared/data/celebamask-hq-mini: 900 image/mask pairs."""
    return _shared_path("data/celebamask-hq-mini")


@pytest.fixture(scope="session")
def example_mask_ids():
    """The shipped example mask as (512, 512) official ids."""
    from facemogle.masks import EXAMPLE_MASK, load_mask

    return load_mask(EXAMPLE_MASK)
