"""Training quality: every adapter, trained as the demo trains it on the pretrained tiny ViT
(fixed seed, CPU), must reach the test accuracy recorded from this version, within a few points.

The demo's table is the measurement: ``pvera-bench experiment=demo`` (holdout protocol, 25
epochs, seed 0, one thread per run) on ``vit_tiny_pretrained``, then linear probing once more on
the random tiny ViT. A change that makes an adapter learn less (a learning rate silently divided
by 10, a scale lost, a gradient cut) moves its accuracy out of its band. Every registered adapter
must have a band: a new one records its own here (run this test, read the printed accuracies).
"""

import json
from pathlib import Path

import pytest

from pvera_bench import adapters, results

# Test accuracy (%) of `pvera-bench experiment=demo` (seed 0) on vit_tiny_pretrained, recorded from
# this version on the project's CPU machine (torch 2.14.1), one number per adapter. BAND points
# either side pass: other CPUs or torch versions round differently; a real loss of quality is larger.
BANDS_FILE = Path(__file__).with_name("quality_bands.json")
BAND = 3.0
PROBE_MARGIN = 10.0  # linear probing: pretrained must beat random by at least this many points


def rows(tmp_path):
    return results.read(tmp_path / "results" / "results.csv")


def recorded() -> dict[str, float]:
    return json.loads(BANDS_FILE.read_text())["test_acc"]


def test_every_adapter_has_a_recorded_band():
    """A new adapter must record its demo accuracy in quality_bands.json (so the quality test covers it)."""
    assert sorted(recorded()) == adapters.available()


@pytest.mark.slow
def test_demo_accuracy_stays_in_its_recorded_band(cli, tmp_path):
    p = cli("experiment=demo", timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = {r["adapter"]: r for r in rows(tmp_path)}
    assert all(r["status"] == "ok" and r["backbone"] == "vit_tiny_pretrained" for r in got.values())
    acc = {name: float(r["test_acc"]) for name, r in got.items()}
    print("demo test accuracy:", json.dumps(acc, sort_keys=True))
    assert sorted(acc) == sorted(recorded()), "every adapter the demo ran needs a band in quality_bands.json"
    out = {name: (acc.get(name), want) for name, want in recorded().items()
           if name not in acc or abs(acc[name] - want) > BAND}
    assert not out, f"outside the recorded band (+-{BAND} points): {{adapter: (got, recorded)}} = {out}"

    # One relation any working tool keeps: a pretrained backbone's features beat random ones.
    p = cli("experiment=demo", "adapter=linear_probe", "backbone=vit_tiny_random", timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    (rand,) = [r for r in rows(tmp_path) if r["backbone"] == "vit_tiny_random"]
    print("linear probing, random tiny ViT:", rand["test_acc"])
    assert acc["linear_probe"] > float(rand["test_acc"]) + PROBE_MARGIN, (acc["linear_probe"], rand["test_acc"])
