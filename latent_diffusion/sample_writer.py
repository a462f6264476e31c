"""The sample folder, written while the next batch is being sampled.

PNG encoding is zlib work that releases the GIL, so a writer thread can encode
batch k while the denoiser runs batch k + 1 on the cores; the main thread waits
for the writer only at the end. Everything goes into one temporary folder that
is renamed into place when complete (utils.io.atomic_dir): a killed or failed
run leaves no half folder and never replaces a good one.

    out/<class>/<class>_<index:05d>.png   8-bit grey, row 0 = top = +velocity, as simulate writes
    out/grid.png                          one labelled row per class, up to 8 columns
    out/samples.npz                       arr_0 (N, H, W, C) uint8, arr_1 (N,) int64 class
                                          indices into meta["class_names"] (guided-diffusion's
                                          format)
    out/metadata.json                     meta + the file list with each image's seed
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from latent_diffusion.lit.grid import class_grid
from latent_diffusion.pipeline import image_seed
from latent_diffusion.utils.io import atomic_dir
from latent_diffusion.utils.pixels import png_bytes

GRID_COLS = 8


class SampleWriter:
    """with SampleWriter(out, class_names, classes) as w: w.add(images, items) per batch,
    then w.finish(meta, seed); leaving the block by an error, or without finish(), writes
    nothing."""

    def __init__(self, out: Path, class_names: Sequence[str], classes: Sequence[int]):
        self.out, self.class_names, self.classes = Path(out), list(class_names), list(classes)
        self.write_s = 0.0  # seconds the writer thread spent encoding and writing PNGs
        self.wait_s = 0.0  # seconds the caller waited for it (the critical-path cost)
        self._futures: list = []
        self._images: list[np.ndarray] = []
        self._items: list[tuple[int, int]] = []
        self._finished = False

    def __enter__(self) -> SampleWriter:
        self._stack = contextlib.ExitStack()
        self.tmp = self._stack.enter_context(atomic_dir(self.out, overwrite=True))
        for c in self.classes:
            (self.tmp / self.class_names[c]).mkdir()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sample-writer")
        return self

    def name(self, c: int, k: int) -> str:
        return f"{self.class_names[c]}/{self.class_names[c]}_{k:05d}.png"

    def _write(self, images: np.ndarray, items: Sequence[tuple[int, int]]) -> None:
        t0 = time.perf_counter()
        for img, (c, k) in zip(images, items, strict=True):
            (self.tmp / self.name(c, k)).write_bytes(png_bytes(img))
        # one writer thread, read only after its futures are done: no lock needed
        self.write_s += time.perf_counter() - t0

    def add(self, images: np.ndarray, items: Sequence[tuple[int, int]]) -> None:
        """images (B, H, W, C) uint8 of items [(class index, index within class)]: queued for
        the writer thread; returns at once."""
        self._images.append(images)
        self._items.extend(items)
        self._futures.append(self._pool.submit(self._write, images, list(items)))

    def wait(self) -> None:
        """Block until the writer thread has written every PNG queued so far."""
        t0 = time.perf_counter()
        for f in self._futures:
            f.result()  # re-raises a writer error here, in the caller
        self.wait_s += time.perf_counter() - t0

    @property
    def image_shape(self) -> list[int] | None:
        return list(self._images[0].shape[1:]) if self._images else None

    def finish(self, meta: dict, seed: int) -> dict:
        """Wait for the PNGs, then write grid.png, samples.npz and metadata.json (meta + the
        file list); the folder is renamed into place when the `with` block ends. Returns the
        metadata written."""
        self.wait()
        images = np.concatenate(self._images) if self._images else np.zeros((0, 1, 1, 1))
        labels = np.array([c for c, _ in self._items], dtype=np.int64)
        files = [
            {"file": self.name(c, k), "class": self.class_names[c], "index": k,
             "seed": image_seed(seed, c, k)}
            for c, k in self._items
        ]  # fmt: skip
        order = [c for c in self.classes if (labels == c).any()]
        if order:
            n_cols = min(GRID_COLS, min(int((labels == c).sum()) for c in order))
            rows = np.concatenate([images[labels == c][:n_cols] for c in order])
            class_grid(rows, [self.class_names[c] for c in order], n_cols).save(
                self.tmp / "grid.png"
            )
        np.savez(self.tmp / "samples.npz", images, labels)
        meta = {**meta, "files": files}
        (self.tmp / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
        self._finished = True
        return meta

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if exc_type is None and not self._finished:
            exc = RuntimeError("SampleWriter left without finish(): nothing written")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._stack.__exit__(exc_type, exc, tb))


__all__ = ["GRID_COLS", "SampleWriter"]
