"""Run-state tensor files carry a digest of every tensor: a flipped byte or a truncated file in any
of them is reported in one line, set aside and that part trained again, to the same numbers."""

import logging

import pytest
import torch

from pvera_bench import checkpoint
from pvera_bench.protocols import run_protocol

from test_protocols import HOLDOUT, JOINT, EpochSpy, Spy, die_on, killed_at_test, pvera_build

GRID = dict(HOLDOUT, grid={"trainer.lr_adapter": [1e-4, 1e-2]})
FINAL = dict(HOLDOUT, name="vtab", final_on="train800val200", checkpoint="last", grid={"trainer.lr_adapter": [1e-2, 1e-4]})


def _damage(path, how):
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[-20] ^= 0x10  # inside the last tensor's bytes (the last 64 bytes, as the issue found)
    else:
        raw = raw[: len(raw) * 2 // 3]
    path.write_bytes(bytes(raw))


def _die_on_joint(monkeypatch):
    real = checkpoint.save_joint

    def save_joint(path, *a):
        real(path, *a)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_joint", save_joint)


_REF: dict = {}


def _reference(p):
    key = repr(sorted(p.items()))
    if key not in _REF:
        _REF[key] = run_protocol(p, Spy().build, Spy().load)
    return _REF[key]


# (protocol, how the first job dies, the damaged file, the fits the second job trains)
KINDS = {
    "model": (GRID, "test", "model.safetensors", 0),  # rebuilt from the kept candidate: no fit
    "candidate": (GRID, "test", "candidate-{i}.safetensors", 0),  # the committed model still holds it
    "fit checkpoint": (FINAL, "final.safetensors", "final.safetensors", 1),  # the final fit from epoch 0
    "select checkpoint": (GRID, "select-0.safetensors", "select-0.safetensors", 2),
}


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_damaged_state_file_is_set_aside_and_retrained_to_the_same_numbers(tmp_path, monkeypatch, caplog,
                                                                                kind, how):
    p, die, name, fits = KINDS[kind]
    ref = _reference(p)
    first = Spy(tmp_path)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        if die == "test":
            run_protocol(p, first.build, killed_at_test(first), state=first.state)
        else:
            m.setattr(checkpoint, "save", die_on(die))
            run_protocol(p, first.build, first.load, state=first.state)
    i = [s["point"] for s in ref.grid_scores].index(ref.chosen) if ref.grid_scores else 0
    damaged = tmp_path / name.format(i=i)
    _damage(damaged, how)
    again = Spy(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pvera_bench.checkpoint"):
        out = run_protocol(p, again.build, again.load, state=again.state)
    assert torch.equal(out.test.probs, ref.test.probs) and out.chosen == ref.chosen
    assert len([e for e in again.events if e[0] == "fit"]) == fits
    aside = [f.name for f in tmp_path.iterdir() if ".corrupt-" in f.name]
    assert len(aside) == 1 and aside[0].startswith(damaged.name + ".corrupt-")
    lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and str(damaged) in lines[0]
    assert ("truncated" in lines[0]) == (how == "truncate") and "trained again" in lines[0]


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_joint_round_starts_the_grid_again_to_the_same_numbers(tmp_path, monkeypatch, how):
    ref = run_protocol(JOINT, pvera_build(EpochSpy(), epochs=3), Spy().load)
    first = EpochSpy(tmp_path)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _die_on_joint(m)  # after the round of epoch 1
        run_protocol(JOINT, pvera_build(first, epochs=3), first.load, state=first.state)
    _damage(tmp_path / "select-joint.safetensors", how)
    again = EpochSpy(tmp_path)
    out = run_protocol(JOINT, pvera_build(again, epochs=3), again.load, state=again.state)
    assert [e[:2] for e in again.epochs[:2]] == [("select-0", 1), ("select-1", 1)]  # from epoch 1 again
    assert torch.equal(out.test.probs, ref.test.probs) and out.chosen == ref.chosen
    assert any(f.name.startswith("select-joint.safetensors.corrupt-") for f in tmp_path.iterdir())


def test_a_damaged_record_json_in_the_state_is_set_aside(tmp_path):
    state = checkpoint.RunState(tmp_path)
    state.commit_record({"test_acc": 91.5})
    (tmp_path / "record.json").write_text('{"test_acc": 91.')
    assert checkpoint.RunState(tmp_path).record() is None
    assert [f.name.split(".corrupt-")[0] for f in tmp_path.iterdir()] == ["record.json"]
