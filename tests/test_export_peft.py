"""PEFT export: what PEFT loads from the exported directory computes our model's logits.

Each exportable adapter is applied to a tiny timm ViT (non-zero biases), every trainable tensor
is set to random non-trivial values (so that an export that dropped or misplaced one cannot pass
on an identity), the model is exported, and ``peft.PeftModel.from_pretrained`` on a fresh timm
ViT with the same frozen weights (and ``num_classes=K``, timm's own head) must give our logits
within 1e-5 (float32). Adapters with no exact PEFT form are refused in one line.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import pytest
import timm
import torch

from pvera_bench import adapters, export
from pvera_bench.backbones import Classifier

peft = pytest.importorskip("peft")

D, K = 32, 5
TIMM = dict(img_size=32, patch_size=8, embed_dim=D, depth=2, num_heads=2)
CASES = {
    "lora": dict(r=4),
    "lora-qkv": dict(r=3, alpha=5.0, targets="qkv"),
    "lora-fused": dict(r=4, alpha=12.0, fused=True),
    "lora-fused-qkv": dict(r=2, fused=True, targets="qkv"),
    "dora": dict(r=4, alpha=6.0),
    "vera": dict(r=8, alpha=3.0),
    "pvera": dict(r=8, alpha=2.0),
    "ia3": {},
}


def frozen_vit(num_classes: int = 0, seed: int = 0):
    """The tiny timm ViT, same weights for every call with ``seed`` (biases made non-zero)."""
    torch.manual_seed(seed)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TIMM)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    if num_classes:
        m.reset_classifier(num_classes)  # timm's own head (PEFT's checkpoint replaces its weights)
    return m.eval()


def adapted(case: str) -> tuple[Classifier, str]:
    name = case.split("-")[0]
    backbone = frozen_vit()
    torch.manual_seed(1)
    adapters.apply(backbone, name, **CASES[case])
    model = Classifier(backbone, K)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # every trainable tensor away from its init
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), name


def peft_logits(out, x, seed=None):
    vit = frozen_vit(num_classes=K)
    pm = peft.PeftModel.from_pretrained(vit, str(out)).eval()
    with torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        return pm(x)


def ours(model, x, seed=None):
    with torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        return model.head(model.backbone(x))


def test_every_adapter_is_exportable_or_refused_with_a_reason():
    assert set(export.exportable()) | set(export.not_exportable()) == set(adapters.available())
    assert not set(export.exportable()) & set(export.not_exportable())


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_the_export_with_our_logits(case, tmp_path):
    model, name = adapted(case)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    info = export.export_peft(model, name, tmp_path / "peft")
    out = tmp_path / "peft"
    assert {"adapter_config.json", "adapter_model.safetensors", export.META_FILE} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["head"] and info["num_classes"] == K
    mine, theirs = ours(model, x), peft_logits(out, x)
    # the adapter is not the identity: the frozen ViT with the same head gives other logits
    plain = frozen_vit(num_classes=K)
    plain.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        assert (plain(x) - mine).abs().max() > 1e-2
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-5)


def test_lora_export_is_block_structured(tmp_path):
    """q/v LoRA at rank r is a rank-2r LoRA on qkv whose k rows are zero and whose q rows read
    only the first r codes; the scaling lora_alpha / rank equals ours."""
    from safetensors.torch import load_file

    model, _ = adapted("lora")
    export.export_peft(model, "lora", tmp_path / "p")
    sd = load_file(tmp_path / "p" / "adapter_model.safetensors")
    b = sd["base_model.model.blocks.0.attn.qkv.lora_B.weight"]
    assert b.shape == (3 * D, 8)
    assert torch.all(b[D:2 * D] == 0) and torch.all(b[:D, 4:] == 0) and torch.all(b[2 * D:, :4] == 0)
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] / cfg["r"] == pytest.approx(8 / 4)


def test_pvera_mc_export_samples_the_same_draws(tmp_path):
    """Under mc, PEFT's PVeRA (sample_at_inference) draws one eps per element as ours does:
    from the same global RNG state the samples agree; from different ones they differ."""
    model, _ = adapted("pvera")
    adapters.set_inference(model, "mc", 4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    export.export_peft(model, "pvera", tmp_path / "p")
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["sample_at_inference"] is True
    torch.testing.assert_close(peft_logits(tmp_path / "p", x, seed=7), ours(model, x, seed=7), rtol=0, atol=1e-5)
    assert (ours(model, x, seed=7) - ours(model, x, seed=8)).abs().max() > 1e-3


def test_pvera_fixed_mode_is_refused(tmp_path):
    model, _ = adapted("pvera")
    adapters.set_inference(model, "fixed")
    with pytest.raises(export.ExportError, match="no PEFT form"):
        export.export_peft(model, "pvera", tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_a_merged_model_or_the_wrong_adapter_is_refused(tmp_path):
    model, _ = adapted("vera")
    with pytest.raises(export.ExportError, match="expected LoraQV"):
        export.export_peft(model, "lora", tmp_path / "p")
    adapters.merge(model)
    with pytest.raises(export.ExportError, match="merged"):
        export.export_peft(model, "vera", tmp_path / "p")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("name", sorted(export.not_exportable()))
def test_no_peft_form_is_one_error(name, tmp_path):
    backbone = frozen_vit()
    adapters.apply(backbone, name)
    with pytest.raises(export.ExportError, match=f"^{name} has no PEFT form"):
        export.export_peft(Classifier(backbone, K), name, tmp_path / "p")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- the CLI on saved runs
@pytest.fixture
def saved_run(tmp_path):
    """``make(adapter, **options) -> run_dir``: a run directory holding ``adapter.safetensors`` of the
    demo setting (tiny random ViT, demo task) with every trainable tensor moved away from its
    init, written by the artifact format's own ``save`` and read back by the CLI's ``load_run``."""
    artifacts = pytest.importorskip("pvera_bench.artifacts")  # the saved-run format (issue 17, item 1)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pvera_bench.assemble import build_model
    from pvera_bench.paths import config_dir

    def make(adapter: str, *overrides: str):
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose("config", overrides=["backbone=vit_tiny_random", "task=demo", f"adapter={adapter}",
                                               *overrides])
        config = OmegaConf.to_container(cfg, resolve=True)
        model = build_model(config)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(p + torch.randn(p.shape, generator=g) * 0.3)
        run_dir = tmp_path / f"run_{adapter}"
        run_dir.mkdir()
        artifacts.save(run_dir, model, config, candidate=0, chosen={}, train_key={"adapter": adapter}, config_hash="test",
                       versions="test")
        return run_dir

    return make


def test_cli_export_then_peft_loads_it(saved_run, cli, tmp_path):
    """A PVeRA run evaluated with inference=fixed: refused as it is (PEFT has no fixed mode), then
    exported with --inference mean, and PEFT's model gives the run's mean-mode logits."""
    from pvera_bench.artifacts import load_run

    run_dir = saved_run("pvera", "adapter.r=16", "adapter.inference=fixed")
    out = tmp_path / "exported"
    p = cli("export", str(run_dir), "--format", "peft", "--out", str(out))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "no PEFT form" in p.stderr
    assert not out.exists()
    p = cli("export", str(run_dir), "--format", "peft", "--out", str(out), "--inference", "mean")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {out}: PEFT PVERA (pvera, rank 32, pvera inference mean)")
    meta = json.loads((out / export.META_FILE).read_text())
    assert meta["task"] == "demo" and meta["num_classes"] == 10 and meta["run_dir"] == str(run_dir.resolve())
    assert meta["pvera_inference"] == "mean"
    # a PEFT user's model, from the export's own description of the (random) backbone
    assert meta["backbone_weights"] == "random (torch.manual_seed(0) before timm.create_model)"
    torch.manual_seed(0)
    vit = timm.create_model(meta["timm_model"], pretrained=False, num_classes=0, **meta["timm_kwargs"])
    vit.reset_classifier(meta["num_classes"])  # timm's own head: the checkpoint must bring ours
    pm = peft.PeftModel.from_pretrained(vit, str(out)).eval()
    model, _ = load_run(run_dir, {"adapter.inference": "mean"})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model.head(model.backbone(x)), rtol=0, atol=1e-5)


def test_cli_missing_weights_is_one_line(cli, tmp_path):
    pytest.importorskip("pvera_bench.artifacts")  # the saved-run format (issue 17, item 1)
    p = cli("export", str(tmp_path), "--out", str(tmp_path / "exported"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "adapter.safetensors" in p.stderr
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("adapter", sorted(export.not_exportable()))
def test_cli_refuses_an_adapter_without_a_peft_form(adapter, saved_run, cli, tmp_path):
    run_dir = saved_run(adapter)
    p = cli("export", str(run_dir), "--format", "peft", "--out", str(tmp_path / "exported"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == f"pvera-bench export: error: {export.not_exportable()[adapter]}"
    assert not (tmp_path / "exported").exists()



# ---------------------------------------------------------------- the reverse
@pytest.mark.parametrize("make_config", [
    lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], modules_to_save=["head"]),
    lambda: peft.VeraConfig(r=8, target_modules=["qkv", "attn.proj"], save_projection=True, modules_to_save=["head"]),
], ids=["lora-qkv-fc1", "vera-qkv-proj"])
def test_a_peft_checkpoint_trained_elsewhere_evaluates_as_our_classifier(make_config, tmp_path):
    """A PEFT checkpoint in a form our adapters do not have (LoRA on qkv and fc1; VeRA on qkv and the
    attention output) runs inside our Classifier: uint8 images in, PEFT's own logits out."""
    pm = peft.get_peft_model(frozen_vit(num_classes=K), make_config())
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(tmp_path / "elsewhere"))
    clf = export.load_peft(tmp_path / "elsewhere", frozen_vit())
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pcfg = clf.backbone.pretrained_cfg
    x = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(pcfg["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(pcfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(clf(images), pm.eval()(x), rtol=0, atol=1e-5)
        plain = frozen_vit(num_classes=K)
        plain.head.load_state_dict(clf.head.state_dict())
        assert (plain(x) - clf(images)).abs().max() > 1e-2  # the adapter is in there
    assert adapters.count_trainable(clf) == 0 and not clf.training


def test_load_peft_without_a_head_is_refused(tmp_path):
    pm = peft.get_peft_model(frozen_vit(), peft.LoraConfig(r=2, target_modules=["qkv"]))
    pm.save_pretrained(str(tmp_path / "nohead"))
    with pytest.raises(export.ExportError, match="holds no classifier head"):
        export.load_peft(tmp_path / "nohead", frozen_vit())
