"""The results CSV's hard edges: one row type, torn lines, all-or-nothing appends, foreign files,
evaluation records kept apart by rebuild."""

import errno
import json
import os

import pytest

from pvera_bench import results, rundir
from pvera_bench.report import main as report_main


def row(task, **kw):
    cells = dict(timestamp=f"2026-01-01T00:00:0{len(task)}", task=task, adapter="lora", backbone="vit_tiny_random",
                 protocol="holdout", seed=0, status="ok", test_acc=50.0, params_adapter=8192)
    return results.make_row(**dict(cells, **kw))


def test_the_row_type_declares_every_column_once_with_a_help():
    assert results.COLUMNS == [c.name for c in results.ROW] and len(set(results.COLUMNS)) == len(results.ROW)
    assert all(c.help and "\n" not in c.help for c in results.ROW)
    with pytest.raises(ValueError, match="unknown results column.*bogus"):
        results.make_row(task="demo", bogus=1)
    assert list(results.make_row(status="ok", task="demo")) == ["task", "status"]  # ROW's order


def test_every_column_a_writer_emits_is_declared():
    import torch

    from pvera_bench import metrics, ood
    from pvera_bench.evaluate import FROM_TRAINING, VALIDATION
    from pvera_bench.protocols import Outcome
    from pvera_bench.selection import FitResult

    probs = torch.full((4, 3), 1 / 3)
    labels = torch.tensor([0, 1, 2, 0])
    emitted = set(metrics.summarize(probs, labels, torch.zeros(2, 4, dtype=torch.long)))
    emitted |= set(ood.ood_columns(probs, True, {"other": probs}))
    emitted |= {f"{k}_uncal" for k in ("test_nll", "test_ece", "test_brier")}
    emitted |= {"calibration", "temperature", "calibration_split", "evaluated_from", "train_key", "eval_options"}
    emitted |= set(Outcome(None, type("P", (), {"seconds": 0.0})(), FitResult(1, 1), {}, 0.0, 0.0, [], 0.0).record())
    emitted |= set(FROM_TRAINING) | set(VALIDATION)
    assert emitted - set(results.COLUMNS) == set()


def test_a_torn_quoted_last_line_never_swallows_the_next_row(tmp_path, capsys):
    path = tmp_path / "results.csv"
    results.append(path, row("demo", error='a cell, with "quotes"\nand a newline'))
    with open(path, "a") as f:  # a write cut inside a quoted cell (disk full): the line ends in an open quote
        f.write(results._encode(results.COLUMNS, [row("cifar100", error='cut, here')])[:-12])
    table = results.read_table(path)
    assert [r["task"] for r in table.rows] == ["demo"] and [line for line, _ in table.torn] == [4]
    results.append(path, row("dtd"))
    table = results.read_table(path)
    assert [r["task"] for r in table.rows] == ["demo", "dtd"]
    assert table.rows[0]["error"] == 'a cell, with "quotes"\nand a newline' and table.rows[1]["status"] == "ok"
    assert table.rows[1]["params_adapter"] == "8192" and [line for line, _ in table.torn] == [4]
    results.append(path, row("eurosat"))  # the torn line stays closed: later appends are plain
    assert [r["task"] for r in results.read(path)] == ["demo", "dtd", "eurosat"]

    assert results.main(["check", "--results", str(path)]) == 1
    out = capsys.readouterr().out
    assert "torn line 4 (a write cut short, set aside; not a row)" in out and "3 rows, 1 problems" in out
    assert report_main(["--results", str(path)]) == 0
    cap = capsys.readouterr()
    assert "torn line 4" in cap.err and "dtd" in cap.out and "eurosat" in cap.out and "cifar100" not in cap.out


def test_a_torn_line_is_kept_through_a_header_upgrade(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text('task,adapter,status\ndemo,lora,ok\ndtd,lora,"cut')
    results.append(path, dict(task="eurosat", adapter="lora", status="ok"))
    table = results.read_table(path)
    assert [r["task"] for r in table.rows] == ["demo", "eurosat"] and len(table.torn) == 1
    assert table.header[:3] == ["task", "adapter", "status"] and set(results.COLUMNS) <= set(table.header)


def test_a_last_row_without_its_newline_is_a_row(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("task,adapter,status\ndemo,lora,ok")  # saved by hand
    assert [r["task"] for r in results.read(path)] == ["demo"] and results.read_table(path).torn == []
    results.append(path, dict(task="dtd", adapter="lora", status="ok"))
    assert [r["task"] for r in results.read(path)] == ["demo", "dtd"]


def test_an_append_on_a_full_disk_is_all_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    results.append(path, row("demo"))
    before = path.read_bytes()
    state = {"n": 0}

    def half_then_full(fd, data):
        if state["n"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        state["n"] += 1
        return os.write(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(rundir, "_write", half_then_full)
    with pytest.raises(rundir.DiskFullError, match=f"could not write {path} "):
        results.append(path, row("dtd"))
    assert path.read_bytes() == before  # cut back to where it was
    monkeypatch.undo()
    results.append(path, row("dtd"))
    assert [r["task"] for r in results.read(path)] == ["demo", "dtd"] and results.read_table(path).torn == []


@pytest.mark.parametrize("text", ["name,score\nx,1\n", "just some notes\n", "\xff\xfe binary"])
def test_a_file_that_is_not_this_tools_csv_is_refused_never_rewritten(tmp_path, capsys, text):
    path = tmp_path / "mine.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(results.ForeignFileError, match="is not a pvera-bench results CSV.*left unchanged"):
        results.append(path, row("demo"))
    runs = tmp_path / "runs" / "a"
    runs.mkdir(parents=True)
    (runs / "record.json").write_text(json.dumps(row("demo", run_dir=str(runs))))
    assert results.main(["rebuild", "--runs", str(tmp_path / "runs"), "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a pvera-bench results CSV" in err
    assert path.read_bytes() == text.encode("latin-1")
    with pytest.raises(results.ResultsFileError, match="is a directory"):
        results.check_writable(tmp_path)


def test_rebuild_keeps_evaluation_records_apart(tmp_path, capsys):
    run = tmp_path / "outputs" / "run"
    ev = run / "evaluations" / "2026-01-01_00-00-00-000000_abcdef01"
    ev.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps(row("demo", run_dir=str(run), config_hash="h")))
    (ev / "record.json").write_text(json.dumps(row("demo", run_dir=str(ev), config_hash="h", timestamp="t2",
                                                   evaluated_from=str(run))))
    out = tmp_path / "results.csv"
    assert results.rebuild([tmp_path / "outputs"], out) == (1, 1)
    assert results.check(out) == [] and [r["run_dir"] for r in results.read(out)] == [str(run)]
    evals = tmp_path / "evaluations.csv"
    assert results.main(["rebuild", "--runs", str(tmp_path / "outputs"), "--out", str(evals), "--evaluations"]) == 0
    assert "1 evaluation records found" in capsys.readouterr().out
    assert [r["evaluated_from"] for r in results.read(evals)] == [str(run)]


@pytest.mark.slow
def test_a_fresh_csv_keeps_its_header_through_evaluations_and_a_foreign_csv_is_refused(cli, tmp_path):
    common = ["task=demo", "adapter=lora", "backbone=vit_tiny_random", "trainer.epochs=1", "runtime.threads=1"]
    p = cli(*common)
    assert p.returncode == 0, p.stderr[-2000:]
    csv = tmp_path / "results" / "results.csv"
    header = csv.read_bytes().split(b"\n", 1)[0] + b"\n"
    assert header.decode() == ",".join(results.COLUMNS) + "\n"
    (run,) = [d for d in (tmp_path / "outputs").glob("*/*") if (d / "adapter.safetensors").is_file()]
    for extra in ("calibration=temperature", "ood_task=[demo]"):
        p = cli("evaluate", str(run), extra)
        assert p.returncode == 0, p.stderr[-2000:]
    rows = results.read(csv)
    assert csv.read_bytes().startswith(header) and len(rows) == 3
    assert rows[1]["calibration"] == "temperature" and rows[2]["ood_task"] == "demo" and rows[2]["ood_aurocs"]
    foreign = tmp_path / "theirs.csv"
    foreign.write_text("name,score\nx,1\n")
    p = cli(*common, "seed=1", f"results_csv={foreign}")
    assert p.returncode == 2 and "is not a pvera-bench results CSV" in p.stderr and "Traceback" not in p.stderr
    assert foreign.read_text() == "name,score\nx,1\n"
    p = cli("evaluate", str(run), f"results_csv={foreign}")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "is not a pvera-bench results CSV" in p.stderr
    assert foreign.read_text() == "name,score\nx,1\n"


def _full_for(part):
    """rundir's write primitive, finding the disk full for files whose name holds ``part``."""
    def write(fd, data):
        if part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)
    return write


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell the files apart")
def test_a_full_disk_after_training_is_one_line_and_no_failed_row(tmp_path, monkeypatch, capsys):
    from hydra import compose, initialize_config_dir

    from pvera_bench import job as runmod
    from pvera_bench.paths import config_dir

    csv = tmp_path / "results.csv"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["task=demo", "adapter=lora", "backbone=vit_tiny_random", "trainer.epochs=1",
                                           f"results_csv={csv}", f"runtime.checkpoint_dir={tmp_path / 'ck'}",
                                           "runtime.progress=false", "runtime.threads=1"])
    for i, part in enumerate(("predictions.npz", "results.csv")):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        with monkeypatch.context() as m, pytest.raises(SystemExit) as e:
            m.setattr(rundir, "_write", _full_for(part))
            runmod.run(cfg, run_dir, [], False)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err
        assert err.startswith("pvera-bench: error: disk full: could not write ") and part in err
        assert not csv.exists() or results.read(csv) == []  # no failed row: the numbers were complete
    rec = runmod.run(cfg, tmp_path / "run2", [], False)  # space again: the saved record's row, no training
    rows = results.read(csv)
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["run_dir"] == str(tmp_path / "run1")
    assert rec["test_acc"] == pytest.approx(float(rows[0]["test_acc"]))


def test_a_results_path_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(results.ResultsFileError, match=f"cannot be written \\({blocker} is a file, not a directory\\)"):
        results.append(blocker / "results.csv", row("demo"))
    assert blocker.read_text() == "x"
