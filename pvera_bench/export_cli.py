"""``pvera-bench export RUN_DIR --format peft --out DIR``: a saved run's adapter and head as a
self-contained PEFT checkpoint (export.py writes it; export_bundle.py adds the backbone, the model
card and the loading code)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import export_bundle as bundle
from . import registry
from .export import ExportError, export_peft, exportable

FORMATS = ("peft",)


def build_parser():
    import argparse

    ap = argparse.ArgumentParser(
        prog="pvera-bench export",
        description="Write a saved run's trained adapter and head in another library's format. "
                    "peft: adapter_config.json + adapter_model.safetensors (the head as modules_to_save), "
                    "loaded with peft.PeftModel.from_pretrained(timm ViT with num_classes=K, DIR); "
                    f"exportable adapters: {', '.join(exportable())}.")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding adapter.safetensors")
    ap.add_argument("--format", choices=FORMATS, default="peft", help="the library whose format to write")
    ap.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory to write")
    ap.add_argument("--inference", choices=("mean", "mc"),
                    help="pvera only: the inference the export computes (default: the run's); mean is "
                         "deterministic, mc samples z at every forward as PEFT's sample_at_inference")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"pvera-bench export: error: {msg}", file=sys.stderr)
        return 2

    from omegaconf import OmegaConf

    from .artifacts import ArtifactError, load_run, read_metadata

    try:
        meta = read_metadata(args.run_dir)
    except ArtifactError as e:
        return fail(str(e))
    cfg = meta["config"]
    adapter = cfg["adapter"]["name"]
    try:
        reason = registry.get(adapter).no_peft_form
    except (registry.UnknownAdapterError, registry.PluginError) as e:
        return fail(f"{e} (the run's adapter; is the package that declares it installed?)")
    if reason:  # before building anything
        return fail(reason)
    if args.inference and adapter != "pvera":
        return fail(f"--inference is for pvera runs; this run's adapter is {adapter}")
    try:
        import peft  # noqa: F401
    except ImportError:
        return fail("exporting to PEFT needs the peft package (pip install 'pvera-bench[peft]')")
    overrides = {"adapter.inference": args.inference} if args.inference else None
    try:
        model, run_cfg = load_run(args.run_dir, overrides)
        bb = run_cfg.backbone
        if bb.get("checkpoint"):
            weights = f"file {bb.checkpoint}, saved in {bundle.BACKBONE_DIR}/"
        elif bb.get("pretrained") and not bb.get("random_weights"):
            weights = "hub"
        else:
            seed = bb.get("init_seed", run_cfg.seed)  # run.py seeds this before creating the backbone
            weights = f"random (torch.manual_seed({seed}) before timm.create_model)"
        info = export_peft(model, adapter, args.out, run=OmegaConf.to_container(run_cfg, resolve=True), meta={
            "backbone": bb.get("name"), "backbone_weights": weights, "timm_model": str(bb.model),
            "timm_kwargs": OmegaConf.to_container(bb.kwargs) if bb.get("kwargs") else {},
            "run_dir": str(Path(args.run_dir).resolve()),
            "task": run_cfg.task.get("name"), "seed": run_cfg.get("seed"),
            "train_hash": meta.get("train_hash"), "config_hash": meta.get("config_hash"),
        })
    except (ArtifactError, ExportError) as e:
        return fail(str(e))
    extra = f", rank {info['peft_rank']}" if "peft_rank" in info else ""
    mode = f", pvera inference {info['pvera_inference']}" if "pvera_inference" in info else ""
    print(f"wrote {args.out}: PEFT {info['peft_type']} ({adapter}{extra}{mode}) on {info['base_model']}, "
          f"head of {info['num_classes']} classes as modules_to_save; loaded as its README.md says, its logits vs "
          f"this tool's: max relative difference {info['self_check_max_rel_diff']:.1e} (float32)")
    return 0
