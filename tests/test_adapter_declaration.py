"""A new adapter defined inside this test, as another package would ship it: its declaration, its
layer, its config and a published reference, installed for the subprocess as a distribution on
PYTHONPATH (a ``*.dist-info`` folder with an ``entry_points.txt``: what ``pip install`` writes), so
that nothing of pvera-bench is added or changed. It goes through validation (a bad option: one
line), the resume key, training (demo task, tiny ViT), ``evaluate`` (the same numbers exactly),
``export`` (refused with its own reason), ``--help`` and the report; a second plugin that declares
an existing name, or fails to import, is one line naming its package."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pvera_bench import registry, results

DECLARATION = '''
"""A test adapter: a trained gain g (d) on each block's attention output, out * (1 + g)."""
from dataclasses import dataclass
from pathlib import Path

from pvera_bench.registry import Adapter, add_configs, add_references, declare, option


@dataclass(frozen=True)
class GainOptions:
    init: float = option(0.0, help="the gain's start (0: the frozen model)")
    blocks: str = option("all", choices=("all", "last"), help="all: every block; last: the last N blocks")
    last: int = option(1, ge=1, used_when={"blocks": ("last",)}, help="N of blocks=last")


declare(Adapter("{name}", GainOptions, apply="{module}.layers:apply",
                help="a gain on each block's attention output (a test adapter)",
                no_peft_form="{name} has no PEFT form: it is the test's own adapter"))
add_configs(Path(__file__).parent / "configs")
add_references(Path(__file__).parent / "references")
'''

LAYERS = '''
import torch
from torch import nn

from pvera_bench.adapters import AdapterLayer, blocks as vit_blocks


class Gain(AdapterLayer):
    vector_params = ("g",)

    def __init__(self, base, init):
        super().__init__()
        self.base = base
        self.g = nn.Parameter(torch.full((base.out_features,), float(init)))

    def forward(self, x):
        return self.base(x) * (1 + self.g)


def apply(model, init, blocks, last):
    bs = list(vit_blocks(model))
    for blk in bs[-last:] if blocks == "last" else bs:
        blk.attn.proj = Gain(blk.attn.proj, init)
'''

REFERENCE = '''
name: gain_paper
title: The gain paper, tiny ViT
source: {repo: example/gain, path: README.md, commit: abc1234, table: Table 1}
backbone: vit_tiny_random
test_number: test accuracy
comparable_metric: acc
differences: []
rows:
  - {method: Gain, adapter: gain, recipe: default, recipe_note: "the test's own", params: 0.0M, mean: 50.0,
     values: {demo: 50.0}}
'''


def make_plugin(site: Path, package: str, module: str, name: str, *, declaration: str = DECLARATION) -> None:
    """Write the package ``module`` and its distribution's metadata into the folder ``site``."""
    pkg = site / module
    (pkg / "configs" / "adapter").mkdir(parents=True)
    (pkg / "references").mkdir()
    (pkg / "__init__.py").write_text(declaration.replace("{name}", name).replace("{module}", module))
    (pkg / "layers.py").write_text(LAYERS)
    (pkg / "configs" / "adapter" / f"{name}.yaml").write_text(f"name: {name}\ninit: 0.0\nblocks: all\nlast: 1\n")
    (pkg / "references" / f"{name}.yaml").write_text(textwrap.dedent(REFERENCE))
    info = site / f"{package.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{name} = {module}\n")


FAST = ["task=demo", "backbone=vit_tiny_random", "protocol=holdout", "trainer.epochs=2", "runtime.progress=false",
        "runtime.threads=1", "seed=3"]


def one_line(p) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


@pytest.mark.slow
def test_an_adapter_declared_by_another_package_runs_the_whole_pipeline(cli, tmp_path):
    site = tmp_path / "site"
    make_plugin(site, "gain-plugin", "gain_plugin", "gain")
    env = {"PYTHONPATH": str(site), "PVERA_BENCH_PLUGINS": "1"}  # conftest turns plugins off

    def run(*args):
        return cli(*args, env=env)

    help_text = run("--help").stdout
    assert "  gain          a gain on each block's attention output (a test adapter)  [gain-plugin]" in help_text
    assert "gain" in next(ln for ln in help_text.splitlines() if ln.startswith("  adapter "))
    # validation: one line, before torch, naming the option, the value and what is allowed
    assert one_line(run("adapter=gain", "adapter.last=0", *FAST)) == \
        "pvera-bench: error: adapter.last=0 is invalid for adapter gain: allowed an integer >= 1"
    assert one_line(run("adapter=gain", "adapter.blocks=first", *FAST)) == \
        "pvera-bench: error: adapter.blocks='first' is invalid for adapter gain: allowed one of all, last"
    assert "takes no option 'rank'" in one_line(run("adapter=gain", "+adapter.rank=2", *FAST))
    # training: an ok row; the trained gain moved away from its start
    p = run("adapter=gain", "adapter.blocks=last", "adapter.last=1", *FAST)
    assert p.returncode == 0, p.stderr
    (row,) = results.read(tmp_path / "results" / "results.csv")
    assert row["status"] == "ok" and row["adapter"] == "gain"
    assert int(row["params_adapter"]) == 64  # one gain of d = 64 in the last block (vit_tiny_random: embed_dim 64)
    assert json.loads(row["adapter_options"]) == {"init": 0.0, "blocks": "last", "last": 1}
    # the resume key: `last` is read only under blocks=last, so these two are one model (trained once)
    for n in (1, 3):
        assert run("adapter=gain", f"adapter.last={n}", *FAST).returncode == 0
    assert len(results.read(tmp_path / "results" / "results.csv")) == 2
    # evaluate: the saved weights give the training row's numbers exactly
    p = run("evaluate", row["run_dir"], "results_csv=re.csv", "runtime.progress=false")
    assert p.returncode == 0, p.stderr
    (again,) = results.read(tmp_path / "re.csv")
    for k in ("test_acc", "test_nll", "test_ece", "test_brier"):
        assert again[k] == row[k], k
    # export: refused with the adapter's own reason
    assert one_line(run("export", row["run_dir"], "--out", str(tmp_path / "x"))) == \
        "pvera-bench export: error: gain has no PEFT form: it is the test's own adapter"
    assert not (tmp_path / "x").exists()
    # the report: our row beside a built-in adapter's, and the plugin's published row
    p = run("report", "--reference", "gain_paper")
    assert p.returncode == 0, p.stderr
    assert "published: Gain [gain_paper]" in p.stdout and "| gain" in p.stdout
    # without the package: the usual unknown-adapter line
    p = cli("adapter=gain", *FAST)
    assert one_line(p).startswith("pvera-bench: error: unknown adapter 'gain'; valid adapter names: adaptformer")


def test_a_plugin_that_fails_or_takes_an_existing_name_is_one_line_naming_its_package(cli, tmp_path):
    site = tmp_path / "site"
    make_plugin(site, "lora-again", "lora_again", "lora")
    line = one_line(cli("adapter=lora", "task=demo", env={"PYTHONPATH": str(site), "PVERA_BENCH_PLUGINS": "1"}))
    assert line == ("pvera-bench: error: package 'lora-again' declares adapter 'lora', which 'pvera-bench' already "
                    "declares; rename it in 'lora-again' or uninstall one of the two (pip uninstall lora-again)")
    site = tmp_path / "site2"
    make_plugin(site, "broken-plugin", "broken_plugin", "broken", declaration="import not_a_module\n")
    for args in (["--help"], ["adapter=lora", "task=demo"]):
        line = one_line(cli(*args, env={"PYTHONPATH": str(site), "PVERA_BENCH_PLUGINS": "1"}))
        assert line == ("pvera-bench: error: package 'broken-plugin' (entry point pvera_bench.adapters: broken = "
                        "broken_plugin) failed to import: ModuleNotFoundError: No module named 'not_a_module'; fix it, "
                        "uninstall it (pip uninstall broken-plugin) or run without plugins (PVERA_BENCH_PLUGINS=0)")
    assert cli("adapter=lora", "task=demo", "--cfg", "job", env={"PYTHONPATH": str(site), "PVERA_BENCH_PLUGINS": "0"}).returncode == 0
