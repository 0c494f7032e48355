"""The folder source on a miniature vtab-1k tree written by the test, and its error messages."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_data import class_color, folder_task, make_folder_tree
from pvera_bench.data import DataError, DataMissing, load_split, open_split

COUNTS = {"train800": 6, "val200": 4, "test": 5}


@pytest.fixture
def tree(tmp_path):
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=COUNTS, num_classes=10, size=20)
    return root, folder_task("cifar100", "cifar", 10, COUNTS)


def test_reads_every_split(tree):
    root, task = tree
    for split, n in {**COUNTS, "train800val200": 10}.items():
        s = load_split(task, split, source="folder", data_dir=str(root), img_size=16)
        assert s.images.shape == (n, 16, 16, 3) and s.images.dtype == np.uint8
        want = [i % 10 for i in range(6)] + [i % 10 for i in range(4)] if split == "train800val200" else \
            [i % 10 for i in range(n)]
        assert s.labels.dtype == np.int64 and s.labels.tolist() == want


def test_train800val200_is_train800_then_val200(tree):
    root, task = tree
    kw = dict(source="folder", data_dir=str(root), img_size=20)
    a, b, ab = (load_split(task, s, **kw) for s in ("train800", "val200", "train800val200"))
    assert np.array_equal(ab.images, np.concatenate([a.images, b.images]))
    assert np.array_equal(ab.labels, np.concatenate([a.labels, b.labels]))


def test_images_look_like_their_class(tree):
    root, task = tree
    s = load_split(task, "test", source="folder", data_dir=str(root), img_size=20)
    for img, lab in zip(s.images, s.labels):
        assert np.abs(img.reshape(-1, 3).mean(0) - class_color(int(lab), 10)).max() < 12


def test_grey_jpeg_becomes_rgb(tmp_path):
    from PIL import Image

    d = tmp_path / "t"
    (d / "images").mkdir(parents=True)
    Image.fromarray(np.full((9, 7), 77, np.uint8)).save(d / "images" / "g.jpg")
    for s in ("train800", "val200", "train800val200", "test"):
        (d / f"{s}.txt").write_text("images/g.jpg 1\n\n")  # a trailing blank line is fine
    task = folder_task("t", "t", 2, {"train800": 1, "val200": 1, "test": 1})
    s = load_split(task, "test", source="folder", data_dir=str(tmp_path), img_size=9)
    assert s.images.shape == (1, 9, 9, 3) and abs(int(s.images[0, 4, 4, 0]) - 77) <= 2
    assert (s.images[..., 0] == s.images[..., 2]).all()


def _write(tree_root, split, text):
    (tree_root / "cifar" / f"{split}.txt").write_text(text)


@pytest.mark.parametrize("text,match", [
    ("images/train800/000000.jpg 0\nimages/train800/000001.jpg\n", r"train800\.txt:2: expected '<image path> <label>'"),
    ("images/train800/000000.jpg 0\nimages/train800/000001.jpg one\n",
     r"train800\.txt:2: label 'one' is not an integer"),
    ("images/train800/000000.jpg 0\n\nimages/train800/000001.jpg 10\n",
     r"train800\.txt:3: label 10 is out of range 0\.\.9"),
    ("images/train800/000000.jpg -1\n", r"train800\.txt:1: label -1 is out of range"),
    ("", r"train800\.txt is empty"),
])
def test_bad_split_file(tree, text, match):
    root, task = tree
    _write(root, "train800", text)
    with pytest.raises(DataError, match=match):
        load_split(task, "train800", source="folder", data_dir=str(root), img_size=8)


def test_missing_image_names_file_and_line(tree):
    root, task = tree
    (root / "cifar" / "images" / "val200" / "000002.jpg").unlink()
    with pytest.raises(DataError, match=r"val200\.txt:3: image .*000002\.jpg not found"):
        load_split(task, "val200", source="folder", data_dir=str(root), img_size=8)


def test_corrupt_image_names_file_and_line(tree):
    root, task = tree
    (root / "cifar" / "images" / "test" / "000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"test\.txt:2: cannot decode image"):
        load_split(task, "test", source="folder", data_dir=str(root), img_size=8)


def test_missing_data(tmp_path, tree):
    root, task = tree
    with pytest.raises(DataMissing, match="needs data.dir=PATH") as e:
        open_split(task, "test", source="folder", data_dir=None)
    assert "{train800,val200,train800val200,test}.txt" in str(e.value)
    with pytest.raises(DataMissing, match="does not exist"):
        open_split(task, "test", source="folder", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataMissing, match=r"folder .*dtd not found; expected the vtab-1k folder layout"):
        open_split({**task, "folder": "dtd"}, "test", source="folder", data_dir=str(root))
    (root / "cifar" / "test.txt").unlink()
    with pytest.raises(DataMissing, match=r"split file .*test\.txt not found"):
        open_split(task, "test", source="folder", data_dir=str(root))


def test_task_without_folder_key(tree):
    root, task = tree
    with pytest.raises(DataError, match="no `folder` key"):
        open_split({k: v for k, v in task.items() if k != "folder"}, "test", source="folder", data_dir=str(root))


def test_task_as_omegaconf_struct_config(tree):
    from omegaconf import OmegaConf

    root, task = tree
    cfg = OmegaConf.create(task)
    OmegaConf.set_struct(cfg, True)
    s = load_split(cfg, "train800val200", source="folder", data_dir=str(root), img_size=8)
    assert s.images.shape == (10, 8, 8, 3)


def test_folder_sizes_override(tree):
    from pvera_bench.data.core import expected_size

    task = {"sizes": {"test": 6084}, "folder_sizes": {"test": 6085}}
    assert expected_size(task, "test", "folder") == 6085 and expected_size(task, "test", "tfds") == 6084


def test_demo_task_ignores_source_and_dir():
    s = load_split({"name": "demo", "source": "sklearn_digits"}, "val200", source="folder", data_dir=None,
                   img_size=8)
    assert s.images.shape == (200, 8, 8, 3) and s.labels.shape == (200,)


@pytest.mark.parametrize("cache", [False, True])
def test_an_empty_split_fails_the_same_with_or_without_the_cache(tmp_path, monkeypatch, cache):
    from pvera_bench.data import core

    class Empty(core.SplitReader):
        description, fingerprint = "empty source", "empty"

        def __len__(self):
            return 0

        def read(self, start, stop):
            return [], np.empty(0, np.int64)

    monkeypatch.setitem(core._SOURCES, "empty", lambda task, split, data_dir: Empty())
    task = folder_task()
    with pytest.raises(DataError, match="the split test is empty"):
        load_split(task, "test", source="empty", data_dir=None, img_size=8,
                   cache_dir=str(tmp_path / "cache") if cache else None)
