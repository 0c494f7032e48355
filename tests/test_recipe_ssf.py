"""recipe=vpetl adapter=ssf: SSF as its scripts run it (dongzelian/SSF @ e94e0e7, train_scripts/vit/vtab/
<task>/train_ssf.sh with its train.py on timm 0.6.5), and the per-epoch learning rate of a real fit against
SSF's loop computed here from timm 0.6.5's CosineLRScheduler formula (not from our scheduler)."""

import math

import numpy as np
import pytest
import torch

from pvera_bench import adapters
from pvera_bench.backbones import Classifier
from pvera_bench.data import Split
from pvera_bench.train import Trainer

from conftest import tiny_vit
from test_recipes import hydra_configs, job  # noqa: F401  (hydra_configs: the module's autouse fixture)


def test_ssf_resolves_to_the_augreg_weights_110_epochs_drop_last_and_the_offset():
    c = job("recipe=vpetl", "adapter=ssf", "task=dtd")
    b, t = c["backbone"], c["trainer"]
    # SSF models/vision_transformer.py ~121-123: vit_base_patch16_224_in21k -> augreg/B_16-i21k-300ep-...npz
    assert (b["name"], b["model"], b["pretrained"]) == ("vit_b16_augreg", "vit_base_patch16_224.augreg_in21k", True)
    assert (t["epochs"], t["cooldown_epochs"], t["schedule_offset"], t["drop_last"]) == (110, 10, 1, True)
    assert (t["warmup_epochs"], t["warmup_lr"], t["min_lr"], t["lr_adapter"]) == (10, 1e-7, 1e-8, 5e-3)
    assert c["protocol"]["test_eval_every"] == 1


def test_other_recipes_keep_noahs_stepping_and_no_cooldown():
    for args in (("recipe=vpetl", "adapter=lora", "task=dtd"), ("recipe=noah", "adapter=lora", "task=dtd"),
                 ("task=demo",), ("recipe=pvera_paper", "adapter=vera", "task=dtd")):
        t = job(*args)["trainer"]
        assert (t["schedule_offset"], t["cooldown_epochs"]) == (0, 0), args
    assert job("recipe=vpetl", "adapter=lora", "task=dtd")["backbone"]["model"] == "vit_base_patch16_224.orig_in21k"


def ssf_lrs(lr, warmup_lr, min_lr, warmup_t, epochs, cooldown):
    """SSF train.py's loop, written out: create_scheduler (timm 0.6.5 scheduler_factory.py) builds
    CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_lr_init=warmup_lr, warmup_t=warmup_t,
    cycle_limit=1, k_decay=1, no noise) and trains num_epochs = epochs + cooldown; the constructor sets
    warmup_lr for 0-based epoch 0; after epoch k the loop calls step(k + 1), so epoch k runs at
    _get_lr(k): t < warmup_t: warmup_lr + t * (lr - warmup_lr) / warmup_t; else cycle i = t // epochs,
    i < 1: min_lr + 0.5 (lr - min_lr)(1 + cos(pi t / epochs)), else min_lr (the cool-down)."""
    def get_lr(t):
        if t < warmup_t:
            return warmup_lr + t * (lr - warmup_lr) / warmup_t
        if t // epochs < 1:
            return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t % epochs) / epochs))
        return min_lr

    return [warmup_lr] + [get_lr(k) for k in range(1, epochs + cooldown)]


def test_dtd_per_epoch_lr_equals_ssfs_loop_over_all_110_epochs():
    t = job("recipe=vpetl", "adapter=ssf", "task=dtd")["trainer"]
    want = ssf_lrs(5e-3, 1e-7, 1e-8, 10, 100, 10)  # train_ssf.sh (dtd): --lr 5e-3 --warmup-lr 1e-7 --min-lr 1e-8 ...
    assert len(want) == 110 and want[1] == pytest.approx(1e-7 + 5e-3 / 10 - 1e-8, abs=1e-6)
    torch.manual_seed(0)
    bb = tiny_vit()
    adapters.apply(bb, "linear_probe")  # the schedule is the trainer's, whatever trains: a fast fit
    settings = dict(t, eval_batch_size=64, progress=False)
    g = np.random.default_rng(0)
    images = Split(g.integers(0, 255, (70, 32, 32, 3)).astype(np.uint8), g.integers(0, 3, 70))
    fit = Trainer(Classifier(bb, 3), settings, torch.device("cpu")).fit(images)
    got = [e["lr"] for e in fit.history]
    assert len(got) == 110
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[100:] == [1e-8] * 10  # the cool-down at the floor
    assert got[1] != got[0]  # unlike NOAH's step(epoch): epoch 2 already moves (5.0e-4, not 1.0e-7)
