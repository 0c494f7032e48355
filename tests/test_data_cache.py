"""The decoded-image cache: hit, miss, rebuild after corruption, concurrent builders, no decoding
on a hit."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers_data import folder_task, make_folder_tree, tfds_task, write_indexed_dataset
from pvera_bench.data import DataError, load_split
from pvera_bench.data import core

COUNTS = {"train800": 12, "val200": 4, "test": 40}


@pytest.fixture
def tree(tmp_path):
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=COUNTS, num_classes=10, size=32)
    return str(root), folder_task("cifar100", "cifar", 10, COUNTS)


@pytest.fixture
def decodes(monkeypatch):
    """Counts decoded images (every source decodes through core.decode_image or its reader's read)."""
    calls = {"n": 0}
    orig = core.decode_image

    def counting(src):
        calls["n"] += 1
        return orig(src)

    monkeypatch.setattr(core, "decode_image", counting)
    return calls


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*/*") if p.is_dir() and ".tmp-" not in p.name)


def load(task, root, cache, split="test", size=16):
    return load_split(task, split, source="folder", data_dir=root, img_size=size, cache_dir=str(cache))


def test_miss_then_hit_decodes_nothing(tree, tmp_path, decodes):
    root, task = tree
    cache = tmp_path / "cache"
    first = load(task, root, cache)
    assert decodes["n"] == 40
    second = load(task, root, cache)
    assert decodes["n"] == 40  # the second load decodes no image
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert np.array_equal(first.labels, second.labels) and second.labels.dtype == np.int64
    uncached = load_split(task, "test", source="folder", data_dir=root, img_size=16)
    assert np.array_equal(uncached.images, np.asarray(second.images))
    [entry] = entries(cache)
    assert entry.parent.name == "cifar100" and entry.name.startswith("test-folder-16px-")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["n"] == 40 and manifest["key"]["fingerprint"].startswith("folder:")


def test_no_cache_dir_writes_nothing(tree, tmp_path, decodes):
    root, task = tree
    before = set(tmp_path.rglob("*"))
    load_split(task, "test", source="folder", data_dir=root, img_size=16, cache_dir=None)
    load_split(task, "test", source="folder", data_dir=root, img_size=16, cache_dir=None)
    assert decodes["n"] == 80 and set(tmp_path.rglob("*")) == before


def test_key_covers_size_split_and_data_version(tree, tmp_path, decodes):
    root, task = tree
    cache = tmp_path / "cache"
    load(task, root, cache, size=16)
    load(task, root, cache, size=8)
    load(task, root, cache, split="val200", size=16)
    assert len(entries(cache)) == 3 and decodes["n"] == 84
    # a changed split file is new data: a miss, not a stale hit
    txt = Path(root) / "cifar" / "val200.txt"
    lines = txt.read_text().splitlines()
    txt.write_text("\n".join(lines[:3]) + "\n")
    with pytest.warns(core.DataWarning, match="3 examples"):
        s = load(task, root, cache, split="val200", size=16)
    assert len(s) == 3 and len(entries(cache)) == 4 and decodes["n"] == 87


@pytest.mark.parametrize("damage", ["truncate_images", "garbage_manifest", "no_manifest", "flip_row",
                                    "wrong_labels", "delete_labels"])
def test_corrupt_cache_is_rebuilt_never_used(tree, tmp_path, decodes, damage):
    root, task = tree
    cache = tmp_path / "cache"
    good = np.asarray(load(task, root, cache).images).copy()
    [entry] = entries(cache)
    img = entry / "images.npy"
    if damage == "truncate_images":
        with open(img, "r+b") as f:
            f.truncate(img.stat().st_size // 2)
    elif damage == "garbage_manifest":
        (entry / "manifest.json").write_text("{not json")
    elif damage == "no_manifest":
        (entry / "manifest.json").unlink()
    elif damage == "flip_row":  # same size, different bytes in the first image
        arr = np.load(img, mmap_mode="r+")
        arr[0] = 255 - arr[0]
        arr.flush()
        del arr
    elif damage == "wrong_labels":
        np.save(entry / "labels.npy", np.zeros(40, np.int64))
    elif damage == "delete_labels":
        (entry / "labels.npy").unlink()
    again = load(task, root, cache)
    assert decodes["n"] == 80  # rebuilt
    assert np.array_equal(np.asarray(again.images), good)
    assert again.labels.tolist() == [i % 10 for i in range(40)]
    assert len(entries(cache)) == 1 and not list(cache.glob("*/*.tmp-*"))


def test_leftover_temp_dir_from_a_killed_build_is_cleaned(tree, tmp_path, decodes):
    root, task = tree
    cache = tmp_path / "cache"
    load(task, root, cache)
    [entry] = entries(cache)
    stale = entry.parent / (entry.name + ".tmp-999-deadbeef")
    shutil.copytree(entry, stale)
    (stale / "manifest.json").unlink()
    shutil.rmtree(entry)  # as if the build died before its rename
    load(task, root, cache)
    assert decodes["n"] == 80 and not stale.exists() and entries(cache) == [entry]


def test_a_failed_build_leaves_no_entry(tree, tmp_path, monkeypatch):
    root, task = tree
    cache = tmp_path / "cache"

    def boom(src):
        raise OSError("disk on fire")

    monkeypatch.setattr(core, "decode_image", boom)
    with pytest.raises(DataError, match="cannot decode image"):
        load(task, root, cache)
    assert entries(cache) == [] and not list(cache.glob("*/*.tmp-*"))


def test_not_enough_disk_space_says_what_to_do(tree, tmp_path, monkeypatch):
    import collections

    from pvera_bench.data import cache as cache_mod

    root, task = tree
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(DataError, match="data.cache_dir"):
        load(task, root, tmp_path / "cache")


def test_tfds_source_is_cached_too(tmp_path, monkeypatch):
    from pvera_bench.data import tfds_source

    d = tmp_path / "tfds"
    name = write_indexed_dataset(d, n_train=30, n_validation=5, n_test=10, class_name="PvbCached")
    splits = {"train800": "train[:8]", "val200": "train[20:24]", "train800val200": "train[:8]+train[20:24]",
              "test": "test"}
    task = tfds_task(f"{name}:1.*.*", splits, {"train800": 8, "val200": 4, "train800val200": 12, "test": 10})
    reads = {"n": 0}
    orig = tfds_source.TfdsReader.read

    def counting(self, a, b):
        reads["n"] += b - a
        return orig(self, a, b)

    monkeypatch.setattr(tfds_source.TfdsReader, "read", counting)
    kw = dict(source="tfds", data_dir=str(d), img_size=8, cache_dir=str(tmp_path / "cache"))
    a = load_split(task, "train800val200", **kw)
    b = load_split(task, "train800val200", **kw)
    assert reads["n"] == 12 and np.array_equal(np.asarray(a.images), np.asarray(b.images))
    [entry] = entries(tmp_path / "cache")
    assert json.loads((entry / "manifest.json").read_text())["key"]["fingerprint"].startswith(
        f"tfds:{name}/1.0.0|train[:8]+train[20:24]|label=label")


# ------------------------------------------------------------------ two processes, one cache entry
def _child(task, root, cache, barrier, result_q):
    barrier.wait()
    try:
        s = load_split(task, "test", source="folder", data_dir=root, img_size=32, cache_dir=cache)
        result_q.put(int(np.asarray(s.images, np.int64).sum()))
    except BaseException as e:  # pragma: no cover - reported to the parent
        result_q.put(repr(e))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_two_processes_build_one_entry_without_corruption(tree, tmp_path, monkeypatch):
    import time

    root, task = tree
    cache = str(tmp_path / "cache")
    ctx = mp.get_context("fork")
    counter = ctx.Value("i", 0)
    orig = core.decode_image

    def slow_counting(src):  # slow enough that the two builds would overlap without the lock
        with counter.get_lock():
            counter.value += 1
        time.sleep(0.005)
        return orig(src)

    monkeypatch.setattr(core, "decode_image", slow_counting)
    barrier, q = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(task, root, cache, barrier, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(isinstance(r, int) for r in results) and results[0] == results[1], results
    assert counter.value == 40  # built once; the other process waited and memory-mapped it
    assert len(entries(Path(cache))) == 1 and not list(Path(cache).glob("*/*.tmp-*"))
    monkeypatch.setattr(core, "decode_image", orig)
    assert int(np.asarray(load_split(task, "test", source="folder", data_dir=root, img_size=32).images,
                          np.int64).sum()) == results[0]


def test_cache_files_are_sized_as_documented(tree, tmp_path):
    root, task = tree
    cache = tmp_path / "cache"
    load(task, root, cache, size=32)
    [entry] = entries(cache)
    size = os.path.getsize(entry / "images.npy")
    assert 40 * 32 * 32 * 3 <= size <= 40 * 32 * 32 * 3 + 4096
