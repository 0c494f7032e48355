"""The run directory's one atomic write, a full disk, sealed tensor files and history.csv."""

import errno
import json
import os

import numpy as np
import pytest

from pvera_bench import rundir
from pvera_bench.rundir import CorruptFileError, DiskFullError, HistoryCSV, RunDir


def _enospc(after: int = 0):
    """A write primitive that writes ``after`` bytes, then finds the disk full."""
    state = {"left": after}

    def write(fd, data):
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), state["left"])
        state["left"] -= n
        return os.write(fd, bytes(data[:n]))
    return write


def test_atomic_write_replaces_whole_keeps_the_mode_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "record.json"
    rundir.atomic_write(p, "first")
    umask = os.umask(0)
    os.umask(umask)
    assert p.read_text() == "first" and p.stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(p, 0o640)
    rundir.atomic_write(p, b"second")
    assert p.read_bytes() == b"second" and p.stat().st_mode & 0o777 == 0o640
    assert sorted(f.name for f in p.parent.iterdir()) == ["record.json"]


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "record.json"
    rundir.atomic_write(p, "old")
    monkeypatch.setattr(rundir, "_write", _enospc(after=3))
    with pytest.raises(DiskFullError) as e:
        rundir.write_json(p, {"test_acc": 91.5, "pad": "x" * 5000})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"disk full: could not write {p} (5.0 kB needed, ")
    assert "free on its filesystem" in msg and "run the same command again" in msg
    assert p.read_text() == "old" and sorted(f.name for f in tmp_path.iterdir()) == ["record.json"]
    with pytest.raises(DiskFullError, match="predictions.npz"):
        RunDir(tmp_path).write_predictions(np.ones((4, 3)), np.arange(4))
    assert not RunDir(tmp_path).predictions.exists()


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def broken(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(rundir, "_write", broken)
    with pytest.raises(OSError) as e:
        rundir.atomic_write(tmp_path / "x", "data")
    assert not isinstance(e.value, DiskFullError) and e.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_run_dir_names_every_file(tmp_path):
    import datetime as dt

    d = RunDir(tmp_path)
    assert [p.name for p in (d.config, d.record, d.predictions, d.history, d.weights)] == [
        "config.yaml", "record.json", "predictions.npz", "history.csv", "adapter.safetensors"]
    ev = d.evaluation(dt.datetime(2026, 1, 2, 3, 4, 5, 6), "abcdef0123456789")
    assert ev.path == tmp_path / "evaluations" / "2026-01-02_03-04-05-000006_abcdef01"
    assert RunDir.in_evaluation(ev.record) and not RunDir.in_evaluation(d.record)
    d.write_predictions(np.full((2, 3), 1 / 3, dtype=np.float64), np.array([0, 2]))
    with np.load(d.predictions) as z:
        assert z["probs"].dtype == np.float32 and z["labels"].tolist() == [0, 2]
    d.write_record({"b": 1, "a": 2})
    assert d.record.read_text() == json.dumps({"a": 2, "b": 1}, indent=2)
    assert [p.name for p in d.files()] == ["record.json", "predictions.npz"]


def test_history_csv_holds_each_epoch_once_across_resumes(tmp_path):
    h = HistoryCSV(tmp_path / "history.csv")
    for e in (1, 2, 3):
        h("select-0", dict(epoch=e, lr=0.1, train_loss=1.0 / e))
    h("final", dict(epoch=1, lr=0.1))
    again = HistoryCSV(tmp_path / "history.csv")  # a resumed run replays select-0 from epoch 2
    again("select-0", dict(epoch=2, lr=0.1, train_loss=0.25))
    text = (tmp_path / "history.csv").read_text()
    assert text.splitlines()[0] == ",".join(HistoryCSV.COLUMNS)
    assert [(r.split(",")[0], r.split(",")[1]) for r in text.splitlines()[1:]] == [
        ("select-0", "1"), ("final", "1"), ("select-0", "2")]
    assert (tmp_path / "history.csv").read_bytes().count(b"\r\n") == 4  # csv's own line ends, as before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["history.csv"]


# -- sealed tensor files ----------------------------------------------------------------------------
def _sealed(tmp_path):
    import torch
    from safetensors.torch import save

    t = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    p = tmp_path / "s.safetensors"
    rundir.atomic_write(p, rundir.seal(save(t, metadata={"pvera_bench": json.dumps({"epoch": 3})})))
    return p, t


def test_a_sealed_file_loads_as_safetensors_and_reads_back_checked(tmp_path):
    import torch
    from safetensors.torch import load, load_file

    p, t = _sealed(tmp_path)
    loaded = load_file(str(p))  # still a plain safetensors file
    assert all(torch.equal(loaded[k], t[k]) for k in t)
    blob, meta = rundir.read_sealed(p)
    assert meta == {"pvera_bench": '{"epoch": 3}'} and torch.equal(load(blob)["a"], t["a"])
    assert (len(blob) - 8 - int.from_bytes(blob[:8], "little")) == 6 * 4 + 2 * 8  # the data, unchanged


@pytest.mark.parametrize("damage,why", [
    ("flip_last", "do not match their digests (a)"),  # the last data bytes belong to "a" (sorted by dtype size)
    ("truncate", "truncated"),
    ("metadata", "do not match their digests (__metadata__)"),
    ("no_digests", "carries no digests"),
])
def test_a_damaged_sealed_file_is_one_line_naming_it(tmp_path, damage, why):
    from safetensors.torch import save
    import torch

    p, t = _sealed(tmp_path)
    raw = bytearray(p.read_bytes())
    if damage == "flip_last":
        raw[-1] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-7]
    elif damage == "metadata":
        i = raw.index(b'\\"epoch\\": 3')
        raw[i + len(b'\\"epoch\\": ')] = ord("7")  # epoch 3 -> 7: valid JSON, another number
    else:
        raw = bytearray(save({"a": torch.zeros(2)}))
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as e:
        rundir.read_sealed(p)
    assert str(e.value).startswith(f"{p} is corrupt: ") and why in str(e.value) and "\n" not in str(e.value)


def test_set_aside_keeps_the_file_under_another_name(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"junk")
    dest = rundir.set_aside(p)
    assert not p.exists() and dest.read_bytes() == b"junk" and dest.name.startswith("model.safetensors.corrupt-")


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "export"
    out.mkdir()  # an existing empty directory is replaced
    with rundir.atomic_dir(out) as d:
        (d / "a.json").write_text("{}")
        assert not (out / "a.json").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["export"] and (out / "a.json").read_text() == "{}"
    with pytest.raises(RuntimeError), rundir.atomic_dir(tmp_path / "b") as d:
        (d / "x").write_text("half")
        raise RuntimeError("killed")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["export"]
    with pytest.raises(OSError):  # a non-empty target is never replaced
        with rundir.atomic_dir(out) as d:
            (d / "b.json").write_text("{}")
    assert sorted(f.name for f in out.iterdir()) == ["a.json"] and len(list(tmp_path.iterdir())) == 1
