"""Protocols: grid choice on validation only; the test split is opened once, after every choice."""

import numpy as np
import pytest
import torch

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.protocols import ProtocolError, grid_points, run_protocol
from pvera_bench.train import Trainer

from conftest import tiny_vit

SETTINGS = dict(epochs=2, batch_size=16, lr_head=1e-2, lr_adapter=1e-2, wd_head=0.0, wd_adapter=0.0,
                warmup_epochs=0, schedule="cosine", shuffle=True, precision="fp32", eval_batch_size=64,
                progress=False)


def make_split(n, seed):
    g = np.random.default_rng(seed)
    labels = g.integers(0, 3, n)
    images = np.zeros((n, 32, 32, 3), np.uint8) + (labels * 80)[:, None, None, None].astype(np.uint8)
    return Split(images, labels.astype(np.int64))


class Spy:
    """Records every event in order: split loads and fits."""

    def __init__(self):
        self.events = []
        self.splits = {"train800": make_split(48, 0), "val200": make_split(24, 1),
                       "train800val200": make_split(72, 2), "test": make_split(30, 3)}

    def load(self, name):
        self.events.append(("load", name))
        return self.splits[name]

    def build(self, point):
        torch.manual_seed(0)
        bb = tiny_vit()
        adapters.apply(bb, "lora", r=2, alpha=2)
        settings = dict(SETTINGS, **{k.split(".", 1)[1]: v for k, v in point.items()})
        trainer = Trainer(Classifier(bb, 3), settings, torch.device("cpu"))
        spy = self
        fit = trainer.fit

        def recorded_fit(train, val=None, **kw):
            assert train is not spy.splits["test"] and val is not spy.splits["test"]
            spy.events.append(("fit", dict(point)))
            return fit(train, val, **kw)

        trainer.fit = recorded_fit
        return trainer


def test_grid_points():
    assert grid_points({}) == [{}]
    assert grid_points({"a.x": [1, 2], "b": {"y": [3]}}) == [{"a.x": 1, "b.y": 3}, {"a.x": 2, "b.y": 3}]
    assert grid_points({"a": 5}) == [{"a": 5}]


@pytest.mark.parametrize("final_on", ["train800val200", None])
def test_test_split_is_opened_last_and_once(final_on):
    spy = Spy()
    p = dict(select_on="train800", val_split="val200", final_on=final_on, test_split="test", metric="loss",
             checkpoint="best" if final_on is None else "last",
             grid={"trainer.lr_adapter": [1e-2, 1e-4], "trainer.lr_head": [1e-2]})
    out = run_protocol(p, spy.build, spy.load)
    loads = [e for e in spy.events if e[0] == "load"]
    assert spy.events[-1] == ("load", "test")  # nothing happens after the test split is opened...
    assert loads.count(("load", "test")) == 1  # ...and it is opened once
    fits = [e for e in spy.events if e[0] == "fit"]
    assert len(fits) == (3 if final_on else 2)
    # the choice is the candidate with the best validation score
    best = min(out.grid_scores, key=lambda s: s["val_loss"])
    assert out.chosen == best["point"] and out.val_loss == best["val_loss"]
    if final_on:
        assert fits[-1] == ("fit", out.chosen) and ("load", "train800val200") in loads
    assert len(out.test.probs) == 30 and out.test.labels.tolist() == spy.splits["test"].labels.tolist()


def test_single_point_vtab_trains_final_model_directly():
    spy = Spy()
    p = dict(select_on="train800", val_split="val200", final_on="train800val200", test_split="test",
             metric="acc", checkpoint="last", grid={})
    out = run_protocol(p, spy.build, spy.load)
    assert [e for e in spy.events if e[0] == "load"] == [("load", "train800val200"), ("load", "test")]
    assert np.isnan(out.val_acc)


@pytest.mark.parametrize("bad", [dict(metric="accuracy"), dict(checkpoint="bets")])
def test_a_misspelt_selection_rule_is_an_error_before_any_training(bad):
    def never(*args):
        raise AssertionError("nothing may be built or loaded")

    p = {**dict(name="x", select_on="train800", val_split="val200", final_on=None, test_split="test",
                metric="acc", checkpoint="best"), **bad}
    with pytest.raises(ProtocolError, match="metric must be acc or loss"):
        run_protocol(p, never, never)
