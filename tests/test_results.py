"""The results CSV: atomic appends, concurrent writers, header upgrades."""

import csv
import json
import os
import multiprocessing as mp

from pvera_bench import results


def _writer(path, worker, n):
    for i in range(n):
        results.append(path, {"task": f"t{worker}", "adapter": "lora", "seed": i, "status": "ok", "test_acc": 50.0 + i})


def test_two_processes_appending_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = results.read(path)
    assert len(rows) == 80
    for w in range(2):
        assert sorted(int(r["seed"]) for r in rows if r["task"] == f"t{w}") == list(range(40))
    assert not list(tmp_path.glob(".results.csv.*"))  # no temporary file left behind


def test_header_is_fixed_and_extra_columns_are_kept(tmp_path):
    path = tmp_path / "r.csv"
    results.append(path, {"task": "a", "status": "ok", "test_acc": float("nan"), "custom": 1})
    results.append(path, {"task": "b", "status": "failed", "error": "boom, with a comma"})
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = list(reader)
    assert header[: len(results.COLUMNS)] == results.COLUMNS and header[-1] == "custom"
    assert rows[0]["test_acc"] == "" and rows[0]["custom"] == "1"
    assert rows[1]["error"] == "boom, with a comma"


def test_old_file_is_upgraded_to_new_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("task,adapter,status\ncifar100,lora,ok\n")
    results.append(path, {"task": "dtd", "adapter": "vera", "status": "ok", "config_hash": "abc"})
    rows = results.read(path)
    assert [r["task"] for r in rows] == ["cifar100", "dtd"]
    assert results.find_ok(path, "abc")["task"] == "dtd"
    assert results.find_ok(path, "zzz") is None


def test_append_keeps_permissions_and_survives_a_row_with_extra_cells(tmp_path):
    path = tmp_path / "r.csv"
    results.append(path, dict(task="a", status="ok"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600
    os.chmod(path, 0o664)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1] + ",x,y"]) + "\n")  # a hand-edited row, two cells too many
    results.append(path, dict(task="b", status="ok"))
    rows = results.read(path)
    assert [r["task"] for r in rows] == ["a", "a", "b"]
    assert json.loads(rows[1][results.EXTRA]) == ["x", "y"] and rows[2][results.EXTRA] == ""
    assert path.stat().st_mode & 0o777 == 0o664
