"""The results CSV: O_APPEND appends, concurrent writers, header upgrades, rebuild and check."""

import csv
import json
import os
import multiprocessing as mp

import pytest

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
    assert rows[1][results.EXTRA] == ["x", "y"] and not rows[2].get(results.EXTRA)  # kept, file not rewritten
    assert path.stat().st_mode & 0o777 == 0o664


def _many(path, worker, n, lock):
    if not lock:  # a filesystem whose locks are per node: nothing serialises the writers
        import contextlib

        results._lock = lambda p: contextlib.nullcontext()
    odd = 'comma, "quote" and\nnewline'
    for i in range(n):
        results.append(path, {"task": f"t{worker}", "adapter": "lora", "seed": i, "status": "ok",
                              "test_acc": 50.0 + i, "error": odd, "run_dir": f"runs/{worker}/{i}"})


@pytest.mark.parametrize("lock", [True, False])
def test_eight_processes_append_200_intact_rows(tmp_path, lock):
    path = tmp_path / "results.csv"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_many, args=(str(path), w, 25, lock)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    text = path.read_text()
    assert text.count("timestamp,task,") == 1  # one header, written by exactly one process
    rows = results.read(path)
    assert len(rows) == 200
    for w in range(8):
        assert sorted(int(r["seed"]) for r in rows if r["task"] == f"t{w}") == list(range(25))
    assert all(r["error"] == 'comma, "quote" and\nnewline' and float(r["test_acc"]) == 50.0 + int(r["seed"])
               for r in rows)
    assert all(results.EXTRA not in r for r in rows)


def test_append_never_rewrites_a_file_with_the_current_header(tmp_path):
    path = tmp_path / "r.csv"
    results.append(path, {"task": "a", "status": "ok"})
    inode = path.stat().st_ino
    first = path.read_bytes()
    results.append(path, {"task": "b", "status": "ok"})
    assert path.stat().st_ino == inode and path.read_bytes().startswith(first)  # appended in place
    assert path.read_bytes()[len(first):].decode() == results._encode(results.COLUMNS, [{"task": "b", "status": "ok"}])


def test_a_torn_last_line_does_not_swallow_the_next_row(tmp_path):
    path = tmp_path / "r.csv"
    results.append(path, {"task": "a", "status": "ok"})
    with open(path, "a") as f:
        f.write("2026-01-01,half")  # a writer killed mid-line (disk full)
    results.append(path, {"task": "b", "status": "ok"})
    table = results.read_table(path)  # the torn line is set aside, never a row (issue 24)
    assert [r["task"] for r in table.rows] == ["a", "b"] and table.rows[1]["status"] == "ok"
    assert [line for line, _ in table.torn] == [3] and table.torn[0][1].startswith("2026-01-01,half,")


def _record(run_dir, **kw):
    run_dir.mkdir(parents=True)
    rec = dict(timestamp=kw.pop("timestamp", "2026-01-01T00:00:00"), task="demo", adapter="lora", seed=0, status="ok",
               test_acc=91.5, config_hash="h0", setting="s0", run_dir=str(run_dir), versions='{"pvera-bench": "0.1.0"}')
    rec.update(kw)
    (run_dir / "record.json").write_text(json.dumps(rec))
    return rec


def test_rebuild_restores_and_completes_without_duplicates(tmp_path):
    a = _record(tmp_path / "runs" / "a", timestamp="2026-01-01T00:00:01", test_acc=91.5)
    b = _record(tmp_path / "runs" / "sweep" / "0_b", timestamp="2026-01-01T00:00:02", test_acc=88.25, seed=1,
                config_hash="h1")
    _record(tmp_path / "runs" / "c", skipped=True, timestamp="2026-01-01T00:00:03")  # a copy of a's row
    out = tmp_path / "results.csv"
    assert results.rebuild([tmp_path / "runs"], out) == (2, 2)
    got = results.read(out)
    assert [(r["run_dir"], float(r["test_acc"])) for r in got] == [(a["run_dir"], 91.5), (b["run_dir"], 88.25)]
    out.write_text(out.read_text().splitlines(keepends=True)[0] + out.read_text().splitlines(keepends=True)[2])
    assert results.rebuild([tmp_path / "runs"], out) == (2, 1)  # completes: only the lost row is added
    assert sorted(float(r["test_acc"]) for r in results.read(out)) == [88.25, 91.5]
    assert results.rebuild([tmp_path / "runs" / "a", tmp_path / "runs"], out) == (2, 0)


def test_check_lists_every_kind_of_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "results" / "results.csv"
    ok = _record(tmp_path / "runs" / "ok", timestamp="t1")
    results.append(path, ok)
    assert results.check(path) == []
    results.append(path, ok)  # the same run twice (a rebuild appended it again)
    results.append(path, dict(ok, run_dir=str(tmp_path / "runs" / "gone"), timestamp="t2"))  # same key again
    results.append(path, dict(ok, status="failed", error="diverged", timestamp="t3", config_hash="h9"))
    results.append(path, dict(ok, timestamp="t4", seed=1, config_hash="h2",
                              versions='{"pvera-bench": "0.1.0", "pvera-bench-commit": "abcdef1234567890", '
                                       '"pvera-bench-dirty": true}'))
    problems = results.check(path)
    text = "\n".join(problems)
    assert sum(p.startswith("duplicate row: 2 copies") for p in problems) == 1
    assert sum(p.startswith("duplicate setting: 3 ok rows for config_hash h0") for p in problems) == 1
    assert sum(p.startswith("failed run: lora demo seed 0") and "diverged" in p for p in problems) == 1
    assert sum(p.startswith("missing run directory") and "gone" in p for p in problems) == 1
    assert "mixed code versions: lora on demo (setting s0) has rows from 0.1.0, 0.1.0+gabcdef123456.dirty" in text
    assert len(problems) == 5


def test_code_identity():
    assert results.code_identity('{"pvera-bench": "0.2.0", "pvera-bench-commit": "0123456789abcdef", '
                                 '"pvera-bench-dirty": false}') == "0.2.0+g0123456789ab"
    assert results.code_identity('{"pvera-bench": "0.2.0"}') == "0.2.0" and results.code_identity("") == ""


def test_check_judges_each_key_by_its_latest_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "results.csv"
    failed = _record(tmp_path / "runs" / "f", timestamp="t1", status="failed", error="DataError: no data")
    results.append(path, failed)
    assert [p.split(":")[0] for p in results.check(path)] == ["failed run"]
    results.append(path, _record(tmp_path / "runs" / "ok", timestamp="t2"))  # the same key, rerun: ok
    assert results.check(path) == []
    results.append(path, _record(tmp_path / "runs" / "forced", timestamp="t3", status="failed", error="boom"))
    problems = results.check(path)  # a forced rerun that failed is the key's latest word
    assert len(problems) == 1 and problems[0].startswith("failed run") and "boom" in problems[0]
    rows = results.read(path)
    assert [r["timestamp"] for r in results.latest_by_key(rows)] == ["t3"]
    other = dict(rows[0], config_hash="", timestamp="t4")  # no key: a row stands for itself
    assert [r["timestamp"] for r in results.latest_by_key(rows + [other, dict(other, timestamp="t5")])] == ["t3", "t4", "t5"]


_SECOND_WRITER = """
import contextlib, sys
from pvera_bench import results
results._lock = lambda p: contextlib.nullcontext()
results.append(sys.argv[1], {"task": "second", "status": "ok"})
"""


def test_two_unlocked_writers_creating_a_csv_write_one_header(tmp_path, monkeypatch):
    """Writer A is interrupted while it writes the new file's first bytes; writer B, another process
    without a lock, appends then; A goes on. (Creating the file empty with O_EXCL and writing into it
    gave two headers here: B saw the empty file and wrote its own.)"""
    import contextlib
    import subprocess
    import sys

    path = tmp_path / "results.csv"
    monkeypatch.setattr(results, "_lock", lambda p: contextlib.nullcontext())
    real_write, calls = results.write_all, []

    def interrupted(fd, data, path):
        if not calls:
            calls.append(1)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
            subprocess.run([sys.executable, "-c", _SECOND_WRITER, str(path)], check=True, env=env, timeout=120)
        real_write(fd, data, path)

    monkeypatch.setattr(results, "write_all", interrupted)
    results.append(path, {"task": "first", "status": "ok"})
    assert calls and path.read_text().count("timestamp,task,") == 1
    assert sorted(r["task"] for r in results.read(path)) == ["first", "second"]
    assert not list(tmp_path.glob(".results.csv.*"))
    path.write_text("")  # an existing empty file: replaced whole
    monkeypatch.setattr(results, "write_all", real_write)
    results.append(path, {"task": "third", "status": "ok"})
    assert path.read_text().count("timestamp,task,") == 1 and [r["task"] for r in results.read(path)] == ["third"]
