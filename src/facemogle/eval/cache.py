"""On-disk cache of evaluation features, one safetensors file per (file set, extractor).

Features of a folder are expensive (Inception on 3,000 photos) and reused across runs (the real
photos never change). A cache entry is keyed by a SHA-256 of the extractor's ``identity`` and, for
every input file in order, its resolved path, size and modification time: touching, replacing,
adding or removing a file, or changing the model or its preprocessing, gives a new key. Entries live
in ``<root>/<kind>-<key>.safetensors``; by default ``root`` is a hidden ``.facemogle_cache`` folder
inside the image folder (skipped when images are listed). A cache that cannot be written (a
read-only folder) only warns.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from facemogle.files import atomic_save_safetensors

#: Default cache folder name, created inside the image folder.
CACHE_FOLDER_NAME = ".facemogle_cache"
_KEY_LENGTH = 24


def cache_key(files: Sequence[str | os.PathLike], identity: str) -> str:
    """Hex key of an ordered file list (resolved paths, sizes, mtimes) and an extractor identity."""
    digest = hashlib.sha256(identity.encode())
    for file in files:
        path = Path(file).resolve()
        stat = path.stat()
        digest.update(f"\n{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:_KEY_LENGTH]


class FeatureCache:
    """Load or compute-and-store feature tensors. ``root=None`` disables caching."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root)

    def path(self, kind: str, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{kind}-{key}.safetensors"

    def load(self, kind: str, key: str, *, rows: int) -> dict[str, torch.Tensor] | None:
        """The cached tensors, or ``None`` when absent, unreadable, or not ``rows`` long."""
        path = self.path(kind, key)
        if path is None or not path.is_file():
            return None
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError):
            return None
        if not tensors or any(tensor.shape[0] != rows for tensor in tensors.values()):
            return None
        return tensors

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor], *, identity: str) -> None:
        """Write atomically; failures (read-only folder, full disk) only warn."""
        path = self.path(kind, key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_safetensors(path, {name: tensor.cpu() for name, tensor in tensors.items()},
                                    metadata={"identity": identity, "key": key})
        except OSError as error:
            warnings.warn(f"could not write the feature cache {path}: {error}", stacklevel=2)

    def get_or_compute(
        self,
        kind: str,
        files: Sequence[str | os.PathLike],
        identity: str,
        compute: Callable[[], dict[str, torch.Tensor]],
        *,
        rows: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Cached tensors of ``(files, identity)``, computing and storing them on a miss.

        Every tensor's first dimension must be ``rows`` (default ``len(files)``).
        """
        key = cache_key(files, identity) if self.root is not None else ""
        if self.root is not None:
            cached = self.load(kind, key, rows=len(files) if rows is None else rows)
            if cached is not None:
                return cached
        tensors = compute()
        self.save(kind, key, tensors, identity=identity)
        return tensors
