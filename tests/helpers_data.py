"""Test helpers for the data layer: a miniature vtab-1k folder tree, and small TFDS datasets written
in array_record format without TensorFlow.

    from helpers_data import make_folder_tree
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=8, num_classes=10, size=32)
    # pvera-bench ... task=cifar100 data.source=folder data.dir=<root>

How the TFDS datasets are written: a ``tfds.core.GeneratorBasedBuilder`` subclass (created on the fly,
``skip_registration=True`` so nothing leaks into the TFDS registry) with ``Tensor``/``ClassLabel``/
``Sequence`` features and ``Image`` features fed *already encoded* PNG bytes (``io.BytesIO``): TFDS
only needs TensorFlow to encode numpy images, not to write records. ``download_and_prepare(
file_format="array_record")`` then writes ``<data_dir>/<name>/<version>/`` with ``dataset_info.json``,
and ``tfds.data_source`` reads it back from the files alone, exactly as it reads a prepared VTAB builder.
"""

from __future__ import annotations

import io
import re
import types
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

SPLIT_FILES = ("train800", "val200", "train800val200", "test")


# ---------------------------------------------------------------- folder tree
def class_color(label: int, num_classes: int) -> np.ndarray:
    """A distinct RGB colour per class (so a model can learn the miniature task)."""
    h = (label / max(num_classes, 1)) * 6.0
    i, f = int(h) % 6, h - int(h)
    q, t = 1 - f, f
    rgb = [(1, t, 0), (q, 1, 0), (0, 1, t), (0, q, 1), (t, 0, 1), (1, 0, q)][i]
    return (np.asarray(rgb) * 200 + 30).astype(np.uint8)


def make_folder_tree(root, task_folder: str = "cifar", n_per_split: "int | Mapping[str, int]" = 8,
                     num_classes: int = 10, size: int = 32, seed: int = 0, quality: int = 90) -> Path:
    """Write a miniature vtab-1k folder tree: ``<root>/<task_folder>/images/<split>/NNNNNN.jpg`` for
    train800, val200 and test, and the four split files (train800val200.txt = train800 lines then
    val200 lines). Labels cycle 0..num_classes-1; each image is its class colour plus a little noise.
    ``n_per_split``: one count for train800/val200/test, or a dict. Returns ``root`` (use it as data.dir).
    """
    from PIL import Image

    root = Path(root)
    counts = dict(n_per_split) if isinstance(n_per_split, Mapping) else {s: int(n_per_split)
                                                                           for s in ("train800", "val200", "test")}
    rng = np.random.default_rng(seed)
    tdir = root / task_folder
    lines: dict[str, list[str]] = {}
    for split in ("train800", "val200", "test"):
        (tdir / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(counts[split]):
            label = (i + seed) % num_classes
            img = class_color(label, num_classes)[None, None, :].astype(np.int16) + rng.integers(
                -20, 21, size=(size, size, 3))
            rel = f"images/{split}/{i:06d}.jpg"
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tdir / rel, quality=quality)
            lines[split].append(f"{rel} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split in SPLIT_FILES:
        (tdir / f"{split}.txt").write_text("".join(ln + "\n" for ln in lines[split]))
    return root


def folder_task(name: str = "cifar100", folder: str = "cifar", num_classes: int = 10,
                n_per_split: "int | Mapping[str, int]" = 8) -> dict:
    """A task config matching :func:`make_folder_tree`'s sizes."""
    counts = dict(n_per_split) if isinstance(n_per_split, Mapping) else {s: int(n_per_split)
                                                                           for s in ("train800", "val200", "test")}
    counts["train800val200"] = counts["train800"] + counts["val200"]
    return {"name": name, "group": "natural", "num_classes": num_classes, "folder": folder, "label": "label",
            "sizes": counts}


# ---------------------------------------------------------------- TFDS array_record datasets
def png_bytes(img: np.ndarray) -> io.BytesIO:
    from PIL import Image

    img = np.asarray(img, np.uint8)
    bio = io.BytesIO()
    Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(bio, format="PNG")
    return io.BytesIO(bio.getvalue())


def write_tfds_dataset(data_dir, class_name: str, features: Callable[[], object],
                       splits: Mapping[str, Callable[[], Iterable[dict]]], version: str = "1.0.0",
                       shuffle: bool = False) -> str:
    """Write a TFDS dataset in array_record format under ``data_dir`` without TensorFlow.

    ``class_name`` (CamelCase) gives the dataset name (snake_case); ``features()`` returns a
    ``tfds.features.FeaturesDict``; ``splits[name]()`` yields example dicts (images as PNG bytes).
    ``shuffle=False`` keeps generation order (TFDS's ``disable_shuffling``). Returns the name.
    """
    import tensorflow_datasets as tfds

    def body(ns):
        ns["VERSION"] = tfds.core.Version(version)
        ns["RELEASE_NOTES"] = {version: "test data"}

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features(), disable_shuffling=not shuffle)

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(gen) for name, gen in splits.items()}

        def _generate_examples(self, gen):
            for i, ex in enumerate(gen()):
                yield i, ex

        ns.update(_info=_info, _split_generators=_split_generators, _generate_examples=_generate_examples)

    cls = types.new_class(class_name, (tfds.core.GeneratorBasedBuilder,), {"skip_registration": True}, body)
    builder = cls(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


def index_image(i: int, split_code: int, shape=(5, 4)) -> io.BytesIO:
    """A constant-colour image encoding (i % 256, i // 256, split_code): survives any resize exactly."""
    img = np.empty((*shape, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = i % 256, i // 256, split_code
    return png_bytes(img)


def decode_index(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, split codes) back from :func:`index_image` images (N, H, W, 3)."""
    px = np.asarray(images[:, 0, 0, :], np.int64)
    return px[:, 0] + 256 * px[:, 1], px[:, 2]


SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}


def write_indexed_dataset(data_dir, n_train: int = 1200, n_validation: int = 300, n_test: int = 40,
                          num_classes: int = 10, shuffle: bool = False, class_name: str = "PvbIndexed") -> str:
    """A labelled image dataset whose every image encodes its own split and index; label = index % classes.
    Image shapes alternate between 5x4 and 3x6 (mixed sizes in one chunk)."""
    import tensorflow_datasets as tfds

    def feats():
        return tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                           "label": tfds.features.ClassLabel(num_classes=num_classes)})

    def gen(split, n):
        return lambda: ({"image": index_image(i, SPLIT_CODES[split], (5, 4) if i % 2 else (3, 6)),
                         "label": i % num_classes} for i in range(n))

    return write_tfds_dataset(data_dir, class_name, feats, {"train": gen("train", n_train),
                                                            "validation": gen("validation", n_validation),
                                                            "test": gen("test", n_test)}, shuffle=shuffle)


def tfds_task(spec: str, splits: Mapping[str, str], sizes: Mapping[str, int], num_classes: int = 10,
              label: str = "label", name: str = "tiny", **tfds_extra) -> dict:
    return {"name": name, "group": "natural", "num_classes": num_classes, "folder": name, "label": label,
            "tfds": {"name": spec, "splits": dict(splits), **tfds_extra}, "sizes": dict(sizes)}
