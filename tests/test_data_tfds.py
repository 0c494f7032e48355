"""The tfds source: split strings on a dataset the test writes itself (array_record, no TensorFlow),
derived labels and image fixes through real files, the 19 builders through tfds.testing.mock_data,
and the messages for data that is not there."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from helpers_data import (SPLIT_CODES, decode_index, png_bytes, tfds_task, write_indexed_dataset,
                          write_tfds_dataset)
from pvera_bench.data import DataError, DataMissing, load_split
from pvera_bench.data.core import DataWarning

tfds = pytest.importorskip("tensorflow_datasets")

SPLITS = {"train800": "train[:800]", "val200": "train[1000:1200]",
          "train800val200": "train[:800]+train[1000:1200]", "test": "test[50%:]"}
SIZES = {"train800": 800, "val200": 200, "train800val200": 1000, "test": 20}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    name = write_indexed_dataset(d)
    return str(d), name


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds_shuffled")
    name = write_indexed_dataset(d, n_train=1200, n_validation=10, n_test=10, shuffle=True,
                                 class_name="PvbShuffled")
    return str(d), name


def test_split_strings_are_honoured(indexed):
    d, name = indexed
    task = tfds_task(f"{name}:1.*.*", SPLITS, SIZES)
    out = {s: load_split(task, s, source="tfds", data_dir=d, img_size=8) for s in SPLITS}
    idx = {s: decode_index(v.images) for s, v in out.items()}
    assert np.array_equal(idx["train800"][0], np.arange(800))
    assert np.array_equal(idx["val200"][0], np.arange(1000, 1200))
    assert np.array_equal(idx["train800val200"][0], np.r_[np.arange(800), np.arange(1000, 1200)])
    assert set(idx["train800val200"][1]) == {SPLIT_CODES["train"]}
    assert np.array_equal(idx["test"][0], np.arange(20, 40)) and set(idx["test"][1]) == {SPLIT_CODES["test"]}
    for s, v in out.items():
        assert v.images.shape == (SIZES[s], 8, 8, 3) and v.images.dtype == np.uint8
        assert v.labels.dtype == np.int64 and np.array_equal(v.labels, idx[s][0] % 10)


def test_task_as_omegaconf_struct_config(indexed):
    from omegaconf import OmegaConf

    d, name = indexed
    cfg = OmegaConf.create(tfds_task(f"{name}:1.*.*", SPLITS, SIZES))
    OmegaConf.set_struct(cfg, True)
    v = load_split(cfg, "val200", source="tfds", data_dir=d, img_size=4, cache_dir=None)
    assert np.array_equal(decode_index(v.images)[0], np.arange(1000, 1200))


def test_validation_slice(indexed):
    d, name = indexed
    task = tfds_task(f"{name}:1.*.*", {**SPLITS, "val200": "validation[:200]"}, SIZES)
    v = load_split(task, "val200", source="tfds", data_dir=d, img_size=4)
    i, code = decode_index(v.images)
    assert np.array_equal(i, np.arange(200)) and set(code) == {SPLIT_CODES["validation"]}


def test_slices_follow_tfds_deterministic_order(shuffled):
    """With TFDS's shuffled on-disk order, train800 is the first 800 of *that* order."""
    d, name = shuffled
    full = tfds.data_source(f"{name}:1.0.0", split="train", data_dir=d)
    order = decode_index(np.stack([np.asarray(full[i]["image"])[:1, :1] for i in range(len(full))]))[0]
    assert not np.array_equal(order, np.arange(1200))  # really shuffled
    task = tfds_task(f"{name}:1.*.*", SPLITS, SIZES)
    got = decode_index(load_split(task, "train800val200", source="tfds", data_dir=d, img_size=2).images)[0]
    assert np.array_equal(got, np.r_[order[:800], order[1000:1200]])


def test_size_mismatch_warns(indexed):
    d, name = indexed
    task = tfds_task(f"{name}:1.*.*", SPLITS, {**SIZES, "test": 21})
    with pytest.warns(DataWarning, match="the task table says 21"):
        load_split(task, "test", source="tfds", data_dir=d, img_size=4)


@pytest.fixture(scope="module")
def objects_ds(tmp_path_factory):
    """clevr- and kitti-shaped features (Sequence of Tensors) with known answers."""
    d = tmp_path_factory.mktemp("tfds_objects")
    F = tfds.features
    # (pixel z of the objects, [(type, location z)], clevr_count, clevr_dist, kitti_dist)
    cases = [([8.0, 9.0, 12.0], [(0, 8.0), (1, 30.0), (3, 5.0)], 0, 0, 0),
             ([8.5] + [11.0] * 9, [(3, 2.0), (5, 4.0)], 7, 1, 3),
             ([10.0, 11.0, 12.0, 13.0], [(2, 20.0)], 1, 4, 1),
             ([10.5, 11.0, 12.0, 13.0, 14.0], [(0, 999.0), (6, 1.0)], 2, 5, 2),
             ([9.2, 9.0, 12.0], [], 0, 2, 3)]

    def feats():
        return F.FeaturesDict({
            "image": F.Image(shape=(None, None, 3)),
            "objects": F.Sequence({"pixel_coords": F.Tensor(shape=(3,), dtype=np.float32),
                                   "size": F.ClassLabel(num_classes=2),
                                   "location": F.Tensor(shape=(3,), dtype=np.float32),
                                   "type": F.ClassLabel(num_classes=8)})})

    def gen():
        for zs, objs, *_ in cases:
            # one Sequence: pad the shorter list with harmless objects (far away / not a vehicle)
            n = max(len(zs), len(objs))
            pz = (zs + [50.0] * n)[:n]
            ob = (objs + [(7, 2.0)] * n)[:n]
            yield {"image": png_bytes(np.full((6, 6, 3), 99, np.uint8)),
                   "objects": {"pixel_coords": np.array([[1, 2, z] for z in pz], np.float32),
                               "size": np.zeros(n, np.int64),
                               "location": np.array([[0, 0, z] for _, z in ob], np.float32),
                               "type": np.array([t for t, _ in ob], np.int64)}}

    name = write_tfds_dataset(d, "PvbObjects", feats, {"train": gen})
    return str(d), name, cases


@pytest.mark.parametrize("rule,col,nc", [("clevr_count", 2, 8), ("clevr_dist", 3, 6), ("kitti_dist", 4, 4)])
def test_derived_labels_through_real_files(objects_ds, rule, col, nc):
    d, name, cases = objects_ds
    n = len(cases)
    task = tfds_task(f"{name}:1.*.*", {s: "train" for s in SPLITS}, {s: n for s in SPLITS}, num_classes=nc,
                     label=rule)
    got = load_split(task, "test", source="tfds", data_dir=d, img_size=4).labels
    assert got.tolist() == [c[col] for c in cases]


def test_label_out_of_range_is_a_data_error(objects_ds):
    d, name, cases = objects_ds
    task = tfds_task(f"{name}:1.*.*", {s: "train" for s in SPLITS}, {s: len(cases) for s in SPLITS},
                     num_classes=3, label="clevr_count")
    with pytest.raises(DataError, match="outside 0..2"):
        load_split(task, "test", source="tfds", data_dir=d, img_size=4)


@pytest.fixture(scope="module")
def binary_ds(tmp_path_factory):
    """dsprites-shaped: 1-channel 0/1 images, 32 x positions, 40 orientations."""
    d = tmp_path_factory.mktemp("tfds_binary")
    F = tfds.features

    def feats():
        return F.FeaturesDict({"image": F.Image(shape=(6, 6, 1)),
                               "label_x_position": F.ClassLabel(num_classes=32),
                               "label_orientation": F.ClassLabel(num_classes=40)})

    def gen():
        for i in range(40):
            img = np.zeros((6, 6, 1), np.uint8)
            img[: 1 + i % 5, :3] = 1
            yield {"image": png_bytes(img), "label_x_position": i % 32, "label_orientation": i}

    return str(d), write_tfds_dataset(d, "PvbBinary", feats, {"train": gen})


def test_dsprites_images_and_labels(binary_ds):
    d, name = binary_ds
    splits = {s: "train" for s in SPLITS}
    sizes = {s: 40 for s in SPLITS}
    loc = load_split(tfds_task(f"{name}:1.*.*", splits, sizes, num_classes=16, label="dsprites_loc",
                               image_scale=255), "test", source="tfds", data_dir=d, img_size=6)
    assert set(np.unique(loc.images)) == {0, 255}
    assert (loc.images[..., 0] == loc.images[..., 1]).all() and (loc.images[..., 1] == loc.images[..., 2]).all()
    assert loc.images[0, 0, 0, 0] == 255 and loc.images[0, 5, 5, 0] == 0
    assert loc.labels.tolist() == [(i % 32) // 2 for i in range(40)]
    ori = load_split(tfds_task(f"{name}:1.*.*", splits, sizes, num_classes=16, label="dsprites_ori",
                               image_scale=255), "test", source="tfds", data_dir=d, img_size=6)
    assert ori.labels.tolist() == [int(np.floor(i / 2.5)) for i in range(40)]
    # without image_scale (smallnorb-like grey): values kept, tiled to 3 channels
    grey = load_split(tfds_task(f"{name}:1.*.*", splits, sizes, num_classes=32, label="dsprites_loc"), "test",
                      source="tfds", data_dir=d, img_size=6)
    assert set(np.unique(grey.images)) == {0, 1} and grey.images.shape == (40, 6, 6, 3)


# ------------------------------------------------------------------ missing / unreadable data
def test_not_prepared_message_names_the_prepare_command(tmp_path):
    task = tfds_task("cifar100:3.*.*", {**SPLITS}, SIZES, name="cifar100")
    with pytest.raises(DataMissing) as e:
        load_split(task, "train800", source="tfds", data_dir=str(tmp_path), img_size=8)
    msg = str(e.value)
    assert f"pvera-bench data prepare task=cifar100 data.dir={tmp_path}" in msg and ".[prepare]" in msg
    assert not (tmp_path / "downloads").exists() and not list(tmp_path.rglob("*.array_record*"))  # no download


def test_unknown_dataset_on_disk_is_not_prepared(tmp_path):
    task = tfds_task("pvb_never_written:1.*.*", SPLITS, SIZES, name="x")
    with pytest.raises(DataMissing, match="not prepared"):
        load_split(task, "train800", source="tfds", data_dir=str(tmp_path), img_size=8)


def test_tfrecord_prepared_dataset_says_how_to_convert(tmp_path):
    name = write_indexed_dataset(tmp_path, n_train=10, n_validation=2, n_test=2, class_name="PvbTfrec")
    info = tmp_path / name / "1.0.0" / "dataset_info.json"
    d = json.loads(info.read_text())
    d["fileFormat"] = "tfrecord"
    info.write_text(json.dumps(d))
    task = tfds_task(f"{name}:1.*.*", {s: "train" for s in SPLITS}, SIZES, name="x")
    with pytest.raises(DataError, match="convert_format"):
        load_split(task, "train800", source="tfds", data_dir=str(tmp_path), img_size=8)


def test_bad_split_string_is_a_data_error(indexed):
    d, name = indexed
    task = tfds_task(f"{name}:1.*.*", {**SPLITS, "test": "test[:5000]"}, SIZES)
    with pytest.raises(DataError, match="test\\[:5000\\]"):
        load_split(task, "test", source="tfds", data_dir=d, img_size=8)


def test_unknown_split_name(indexed):
    d, name = indexed
    with pytest.raises(DataError, match="unknown split"):
        load_split(tfds_task(f"{name}:1.*.*", SPLITS, SIZES), "train", source="tfds", data_dir=d, img_size=8)


# ------------------------------------------------------------------ the 19 builders, mocked
def _vtab_table():
    from pvera_bench.tasks import task_configs, vtab_tasks

    return task_configs(), vtab_tasks()


@pytest.fixture
def mock_vtab(monkeypatch):
    """tfds.testing.mock_data with one fix: its random Sequence features get a fixed length (10), as
    real clevr/kitti records have (the mock otherwise draws a different length for each sub-feature)."""
    from tensorflow_datasets.testing import mocking

    orig = mocking.RandomFakeGenerator.__init__

    def init(self, *a, **k):
        k["constant_dynamic_shape"] = True
        orig(self, *a, **k)

    monkeypatch.setattr(mocking.RandomFakeGenerator, "__init__", init)
    with tfds.testing.mock_data(num_examples=3):
        yield


@pytest.mark.parametrize("name", _vtab_table()[1])
def test_each_vtab_builder_through_the_reading_path(mock_vtab, name, tmp_path):
    table, _ = _vtab_table()
    task = table[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the mock gives 3 examples, not 800
        for split in ("train800", "test"):
            s = load_split(task, split, source="tfds", data_dir=str(tmp_path), img_size=12)
            assert s.images.shape == (3, 12, 12, 3) and s.images.dtype == np.uint8
            assert s.labels.dtype == np.int64
            assert ((s.labels >= 0) & (s.labels < task["num_classes"])).all()
    if task["tfds"].get("image_scale"):  # 0/1 (the mock: 0..254) pixels -> 0/255 before resizing
        assert s.images.max() == 255


# ------------------------------------------------------------------ download hosts (loopback servers only)
def test_unreachable_hosts_answers_within_its_timeout():
    """A host that answers HTTP (even 405 to HEAD) is reachable; one that accepts and stays silent and a
    closed port are not, and the check returns within its timeout."""
    import http.server
    import socket
    import threading
    import time

    from pvera_bench.data.tfds_source import unreachable_hosts

    class NoHead(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            self.send_error(405)

        def log_message(self, *a):
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), NoHead)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    ok, quiet, shut = (f"127.0.0.1:{p}" for p in (web.server_port, silent.getsockname()[1], closed_port))
    urls = [f"http://{ok}/a.tar.gz", f"http://{ok}/b.zip", f"http://{quiet}/c.zip", f"http://{shut}/d.zip"]
    try:
        t0 = time.monotonic()
        bad = unreachable_hosts(urls, timeout=1.0)
        seconds = time.monotonic() - t0
    finally:
        web.shutdown()
        silent.close()
    assert sorted(bad) == sorted([quiet, shut])
    assert bad[quiet].startswith("ReadTimeout") and bad[shut].startswith("ConnectionError")
    assert seconds < 2.5
