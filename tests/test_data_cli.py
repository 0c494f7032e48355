"""``pvera-bench data check|prepare`` (pvera_bench.data.cli.main), without network or TensorFlow."""

from __future__ import annotations

import pytest

from helpers_data import folder_task, make_folder_tree, tfds_task, write_indexed_dataset
from pvera_bench.data import cli, tfds_source

tfds = pytest.importorskip("tensorflow_datasets")

COUNTS = {"train800": 4, "val200": 2, "test": 3}
SPLITS = {"train800": "train[:8]", "val200": "validation[:4]", "train800val200": "train[:8]+validation[:4]",
          "test": "test"}
SIZES = {"train800": 8, "val200": 4, "train800val200": 12, "test": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds_cli")
    name = write_indexed_dataset(d, n_train=20, n_validation=6, n_test=6, class_name="PvbCli")
    return str(d), name


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_help_and_bad_words(capsys):
    rc, out = run(capsys, "--help")
    assert rc == 0 and "data prepare task=TASKS" in out and "data check" in out
    assert run(capsys, "check", "--help")[0] == 0
    assert run(capsys)[0] == 2
    rc, out = run(capsys, "frobnicate")
    assert rc == 2 and "unknown command" in out
    rc, out = run(capsys, "check", "tsk=cifar100")
    assert rc == 2 and "unexpected argument 'tsk=cifar100'" in out
    rc, out = run(capsys, "check", "task=cifar1000")
    assert rc == 2 and "unknown task 'cifar1000'" in out
    rc, out = run(capsys, "prepare")
    assert rc == 2 and "prepare needs task=" in out


def test_expand_tasks():
    table = cli.task_table()
    vtab = cli.expand_tasks("vtab", table)
    assert len(vtab) == 19 and vtab[0] == "caltech101" and vtab[-1] == "smallnorb_ele"
    assert cli.expand_tasks("specialized", table) == ["patch_camelyon", "eurosat", "resisc45",
                                                      "diabetic_retinopathy"]
    assert cli.expand_tasks("kitti,natural,kitti", table)[:2] == ["kitti", "caltech101"]
    assert len(cli.expand_tasks("structured,natural", table)) == 15


def test_check_folder_ok_and_missing(capsys, tmp_path, monkeypatch):
    root = make_folder_tree(tmp_path / "v", "cifar", n_per_split=COUNTS, num_classes=10, size=8)
    table = {"cifar100": {**folder_task("cifar100", "cifar", 10, COUNTS), "order": 0},
             "dtd": {**folder_task("dtd", "dtd", 47, COUNTS), "order": 1}}
    monkeypatch.setattr(cli, "task_table", lambda: table)
    rc, out = run(capsys, "check", "task=cifar100", "data.source=folder", f"data.dir={root}")
    assert rc == 0 and "cifar100  ok" in out and "test 3" in out and "1 of 1 task(s) ready" in out
    rc, out = run(capsys, "check", "data.source=folder", f"data.dir={root}")
    assert rc == 1 and "dtd       MISSING" in out and "vtab-1k folder layout" in out and str(root / "dtd") in out
    (root / "cifar" / "test.txt").write_text("images/test/000000.jpg 0\nimages/test/000001.jpg 12\n")
    rc, out = run(capsys, "check", "task=cifar100", "data.source=folder", f"data.dir={root}")
    assert rc == 1 and "WRONG" in out and "test.txt:2: label 12 is out of range" in out


def test_check_folder_against_the_real_table(capsys, tmp_path):
    root = make_folder_tree(tmp_path / "v", "cifar", n_per_split=COUNTS, num_classes=100, size=8)
    rc, out = run(capsys, "check", "task=cifar100", "data.source=folder", f"data.dir={root}")
    assert rc == 1 and "train800: 4 examples, the task table says 800" in out


def test_check_missing_image(capsys, tmp_path, monkeypatch):
    root = make_folder_tree(tmp_path / "v", "cifar", n_per_split=COUNTS, num_classes=10, size=8)
    monkeypatch.setattr(cli, "task_table", lambda: {"cifar100": {**folder_task("cifar100", "cifar", 10, COUNTS),
                                                                 "order": 0}})
    (root / "cifar" / "images" / "val200" / "000001.jpg").unlink()
    rc, out = run(capsys, "check", "data.source=folder", f"data.dir={root}")
    assert rc == 1 and "val200.txt:2: image" in out and "not found" in out


def test_check_tfds(capsys, tiny, monkeypatch, tmp_path):
    d, name = tiny
    good = {**tfds_task(f"{name}:1.*.*", SPLITS, SIZES, name="good"), "order": 0}
    wrong_classes = {**good, "name": "wrong_classes", "num_classes": 12, "order": 1}
    wrong_size = {**good, "name": "wrong_size", "sizes": {**SIZES, "test": 7}, "order": 2}
    absent = {**tfds_task("pvb_absent:1.*.*", SPLITS, SIZES, name="absent"), "order": 3}
    table = {t["name"]: t for t in (good, wrong_classes, wrong_size, absent)}
    monkeypatch.setattr(cli, "task_table", lambda: table)
    rc, out = run(capsys, "check", "task=good", f"data.dir={d}")
    assert rc == 0 and "good  ok" in out and "train800val200 12" in out and "10 classes" in out
    rc, out = run(capsys, "check", f"data.dir={d}")
    assert rc == 1
    assert "the data has 10 classes, the task table says 12" in out
    assert "test: 6 examples, the task table says 7" in out
    assert "absent" in out and "MISSING" in out and f"pvera-bench data prepare task=absent data.dir={d}" in out
    assert "1 of 4 task(s) ready" in out


def test_check_reads_labels_without_decoding_images(tiny, monkeypatch):
    d, name = tiny
    task = tfds_task(f"{name}:1.*.*", SPLITS, SIZES)
    reader = tfds_source.open_tfds(task, "test", d)
    monkeypatch.setattr(tfds_source.TfdsReader, "read", lambda *a: pytest.fail("decoded images"))
    assert reader.labels().tolist() == [0, 1, 2, 3, 4, 5]


def test_prepare_without_tensorflow_names_the_extra(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_source, "missing_prepare_modules", lambda: ["tensorflow-cpu", "importlib_resources"])
    rc, out = run(capsys, "prepare", "task=cifar100", f"data.dir={tmp_path}")
    assert rc == 1 and 'pip install -e ".[prepare]"' in out and "TensorFlow" in out
    assert "missing: tensorflow-cpu, importlib_resources" in out
    assert out.count("\n") == 1  # one message


@pytest.fixture
def fake_prepare(monkeypatch):
    """The prepare extra 'installed', every download host 'reachable' and DatasetBuilder.download_and_prepare
    recorded instead of run: the CLI's own logic only (tests/test_data_tfds_prepare.py runs the real builders)."""
    calls = []

    def fake(self, **kw):
        calls.append((self.name, str(self.version), kw))

    monkeypatch.setattr(tfds_source, "missing_prepare_modules", lambda: [])
    monkeypatch.setattr(tfds_source, "unreachable_hosts", lambda urls, timeout=5.0: {})
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fake)
    return calls


def test_prepare_manual_download_prints_instructions_and_dir(capsys, fake_prepare, tmp_path):
    rc, out = run(capsys, "prepare", "task=resisc45,diabetic_retinopathy", f"data.dir={tmp_path}")
    assert rc == 2 and fake_prepare == []
    assert "nothing built; resisc45, diabetic_retinopathy cannot start" in out
    assert "needs a manual download" in out and "1drv.ms" in out  # resisc45's TFDS instructions
    assert f"Put the files in: {tmp_path}/downloads/manual" in out
    assert "diabetic_retinopathy" in out and "kaggle" in out.lower()
    manual = tmp_path / "m"
    manual.mkdir()
    (manual / "NWPU-RESISC45.rar").write_bytes(b"x")
    rc, out = run(capsys, "prepare", "task=resisc45", f"data.dir={tmp_path}", f"data.manual_dir={manual}")
    assert rc == 0 and fake_prepare[0][0] == "resisc45"
    assert str(fake_prepare[0][2]["download_config"].manual_dir) == str(manual)


def test_prepare_uses_array_record_dedupes_and_warns_for_pets(capsys, fake_prepare, tmp_path):
    rc, out = run(capsys, "prepare", "task=clevr_count,clevr_dist,oxford_iiit_pet", f"data.dir={tmp_path}")
    assert rc == 0, out
    assert [(n, v) for n, v, _ in fake_prepare] == [("clevr", "3.1.0"), ("oxford_iiit_pet", "4.0.0")]
    assert all(str(kw["file_format"]) in ("array_record", "FileFormat.ARRAY_RECORD") for *_, kw in fake_prepare)
    assert "shares clevr:3.*.*" in out and "unconfirmed" in out
    assert f"pvera-bench data check task=clevr_count,clevr_dist,oxford_iiit_pet data.dir={tmp_path}" in out


def test_prepare_already_prepared(capsys, fake_prepare, tiny, monkeypatch):
    d, name = tiny
    monkeypatch.setattr(cli, "task_table", lambda: {"t": {**tfds_task(f"{name}:1.*.*", SPLITS, SIZES, name="t"),
                                                          "order": 0}})
    rc, out = run(capsys, "prepare", "task=t", f"data.dir={d}")
    assert rc == 0 and "already prepared" in out and fake_prepare == []


def test_prepare_failure_is_reported(capsys, monkeypatch, tmp_path):
    def fail(self, **kw):  # as TFDS's downloader does: a temporary folder, then the error
        (tmp_path / "downloads" / "www.robots.ox.ac.uk_dtd.tar.gz.tmp.0123abcd").mkdir(parents=True)
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds_source, "missing_prepare_modules", lambda: [])
    monkeypatch.setattr(tfds_source, "unreachable_hosts", lambda urls, timeout=5.0: {})
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    rc, out = run(capsys, "prepare", "task=dtd", f"data.dir={tmp_path}")
    assert rc == 1 and "preparing dtd:3.*.* failed: ConnectionError: no network" in out and "not ready: dtd" in out
    assert list((tmp_path / "downloads").iterdir()) == []  # no leftover temporary folder


def test_prepare_a_task_without_a_tfds_builder_is_a_message(capsys, fake_prepare, tmp_path):
    rc, out = run(capsys, "prepare", "task=demo,clevr_count", f"data.dir={tmp_path}")
    assert rc == 1 and [n for n, *_ in fake_prepare] == ["clevr"]
    assert "[demo]" in out and "nothing to prepare" in out and "not ready: demo" in out


def test_prepare_with_unreachable_hosts_says_what_to_fetch_and_builds_nothing(capsys, fake_prepare, monkeypatch,
                                                                              tmp_path):
    import urllib.parse

    monkeypatch.setattr(tfds_source, "unreachable_hosts", lambda urls, timeout=5.0: {
        urllib.parse.urlsplit(u).netloc: "ConnectionError: no route" for u in urls})
    rc, out = run(capsys, "prepare", "task=cifar100,dtd", f"data.dir={tmp_path}")
    assert rc == 2 and fake_prepare == []
    assert "[cifar100] cannot reach www.cs.toronto.edu (ConnectionError: no route)" in out
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in out
    assert f"-> {tmp_path}/downloads/manual/cifar-100-binary.tar.gz" in out and "dtd-r1.0.1.tar.gz" in out
    assert f"run again: pvera-bench data prepare task=cifar100,dtd data.dir={tmp_path}" in out
    # a file already in manual_dir is not asked for, and its host is not needed
    (tmp_path / "downloads" / "manual").mkdir(parents=True)
    (tmp_path / "downloads" / "manual" / "cifar-100-binary.tar.gz").write_bytes(b"x")
    rc, out = run(capsys, "prepare", "task=cifar100", f"data.dir={tmp_path}")
    assert rc == 0 and [n for n, *_ in fake_prepare] == ["cifar100"]
