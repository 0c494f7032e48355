"""Self-contained PEFT exports (issue 24): in a Python environment with torch, timm and peft but
WITHOUT pvera_bench, the export's own files and its model card's code give the run's logits.

Runs exported: the demo's file backbone (``vit_tiny_pretrained``, a ``package:`` weights file: saved
in the export in timm's ``local-dir:`` layout), a config naming a timm hub model with random
weights (``vit_tiny_random``: ``vit_tiny_patch16_224``, pretrained=False, drawn after
``torch.manual_seed``, as the card says) and the same with ``backbone.pos_embed=dinov2_hub`` (the
hub's per-forward resampling baked into the saved backbone)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")

from pvera_bench import export_bundle  # noqa: E402
from pvera_bench.artifacts import load_run  # noqa: E402
from pvera_bench.export_cli import main as export_main  # noqa: E402

PLAIN_SCRIPT = textwrap.dedent('''
    import sys
    try:
        import pvera_bench  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("pvera_bench is importable here")
    import torch
    export_dir, inputs = sys.argv[1], sys.argv[2]
    card = open(export_dir + "/README.md").read()
    code = card.split("```python\\n", 1)[1].split("```", 1)[0]
    code = code.replace('export_dir = "."', f"export_dir = {export_dir!r}")
    ns = {}
    exec(code, ns)
    data = torch.load(inputs)
    with torch.no_grad():
        got = ns["logits"](data["images"])
    diff = float((got - data["logits"]).abs().max())
    print(diff, diff / max(1.0, float(data["logits"].abs().max())))
''')


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory) -> Path:
    """A venv whose only packages are the shared site-packages (torch, timm, peft...), by a .pth line
    (its own .pth files, the editable pvera_bench among them, are not processed)."""
    root = tmp_path_factory.mktemp("plain")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    shared = Path(torch.__file__).resolve().parents[1]
    site = next((root / "venv" / "lib").glob("python*/site-packages"))
    (site / "shared.pth").write_text(str(shared) + "\n")
    py = root / "venv" / "bin" / "python"
    p = subprocess.run([str(py), "-c", "import pvera_bench"], cwd=root, capture_output=True, text=True)
    assert p.returncode != 0 and "No module named 'pvera_bench'" in p.stderr
    return py


def saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A demo run directory (artifacts.save) with every trainable tensor moved from its init."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pvera_bench import artifacts
    from pvera_bench.assemble import build_model
    from pvera_bench.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=["task=demo", *overrides])
    config = OmegaConf.to_container(cfg, resolve=True)
    model = build_model(config)  # the one builder: seeded as training seeds it
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    artifacts.save(run_dir, model, config, candidate=0, chosen={}, train_key={"adapter": config["adapter"]["name"]},
                   config_hash="test", versions="test")
    return run_dir


CASES = {
    "file": (["backbone=vit_tiny_pretrained", "adapter=lora"], "local-dir"),
    "hub-named-random": (["backbone=vit_tiny_random", "adapter=pvera", "adapter.r=4", "adapter.inference=mean"],
                         "random"),
    "dinov2_hub": (["backbone=vit_tiny_random", "backbone.pos_embed=dinov2_hub", "adapter=ia3"], "local-dir"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_plain_timm_peft_environment_reproduces_the_run(case, plain_python, tmp_path, capsys):
    overrides, kind = CASES[case]
    run_dir = saved_run(tmp_path, *overrides)
    out = tmp_path / "exported"
    assert export_main([str(run_dir), "--out", str(out)]) == 0, capsys.readouterr().err
    meta = json.loads((out / export_bundle.META_FILE).read_text())
    model, cfg = load_run(run_dir)
    assert meta["base_model_kind"] == kind and meta["resize"] == cfg.data.resize
    assert meta["pos_embed"] == ("dinov2_hub" if case == "dinov2_hub" else "timm")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == meta["base_model"]
    if kind == "local-dir":
        assert config["base_model_name_or_path"] == "local-dir:backbone"
        assert {p.name for p in (out / "backbone").iterdir()} == {"config.json", "model.safetensors"}
    else:
        assert config["base_model_name_or_path"] == "vit_tiny_patch16_224" and not (out / "backbone").exists()
    card = (out / "README.md").read_text()
    assert "32 x 32" in card and f"mean {meta['mean']} and std {meta['std']}" in card
    # the run's logits of the demo's test images, from this package
    from pvera_bench.data import load_split

    images = torch.from_numpy(load_split({"name": "demo", "source": "sklearn_digits", "num_classes": 10,
                                          "sizes": {"test": 797}}, "test", source="sklearn_digits", data_dir=None,
                                         img_size=32, resize=meta["resize"]).images[:64].copy())
    with torch.no_grad():
        logits = model(images)
    torch.save({"images": images, "logits": logits}, tmp_path / "inputs.pt")
    p = subprocess.run([str(plain_python), "-c", PLAIN_SCRIPT, str(out), str(tmp_path / "inputs.pt")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    # float32: within 1e-5 of the largest logit (the export's own self-check tolerance, SELF_CHECK_ATOL)
    absolute, relative = map(float, p.stdout.split())
    assert relative <= 1e-5, (absolute, relative)
