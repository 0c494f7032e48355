"""A PEFT export scored with PEFT and timm only, against the run's own test predictions.

    python scripts/check_peft_export.py RUN_DIR PEFT_DIR

The model is what a PEFT user builds from the export's ``pvera_bench_export.json``: timm's ViT
(``num_classes`` from the export; for a backbone of random weights, drawn after
``torch.manual_seed(init_seed)`` as the run drew it), then ``peft.PeftModel.from_pretrained``.
No pvera-bench model code is used; pvera-bench only reads the run's test split (the same uint8
images the run scored) and its ``predictions.npz``. Prints the largest difference of the
predicted probabilities and both accuracies.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import peft
import timm
import torch
from omegaconf import OmegaConf


def peft_model(export_dir: Path) -> tuple[torch.nn.Module, dict]:
    info = json.loads((export_dir / "pvera_bench_export.json").read_text())
    weights = info.get("backbone_weights", "hub")
    if weights.startswith("random"):
        torch.manual_seed(int(re.search(r"manual_seed\((\d+)\)", weights).group(1)))
        vit = timm.create_model(info["timm_model"], pretrained=False, num_classes=0, **info["timm_kwargs"])
    elif weights == "hub":
        vit = timm.create_model(info["base_model"], pretrained=True, num_classes=0, **info.get("timm_kwargs", {}))
    else:  # file <path>
        vit = timm.create_model(info["timm_model"], pretrained=True, num_classes=0, **info.get("timm_kwargs", {}),
                                pretrained_cfg_overlay={"file": weights.removeprefix("file ")})
    vit.reset_classifier(info["num_classes"])
    return peft.PeftModel.from_pretrained(vit, str(export_dir)).eval(), info


def main(run_dir: str, export_dir: str) -> None:
    from pvera_bench.data import load_split

    run, out = Path(run_dir), Path(export_dir)
    model, info = peft_model(out)
    cfg = OmegaConf.load(run / "config.yaml")
    split = load_split(OmegaConf.to_container(cfg.task, resolve=True), "test", source=cfg.data.get("source", "tfds"),
                       data_dir=cfg.data.get("dir"), img_size=info["img_size"][0],
                       resize=cfg.data.get("resize", "bilinear_antialias"))
    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    probs = []
    with torch.no_grad():
        for i in range(0, len(split.labels), 128):
            x = torch.from_numpy(np.ascontiguousarray(split.images[i:i + 128])).permute(0, 3, 1, 2).float() / 255.0
            probs.append(model((x - mean) / std).softmax(-1))
    p = torch.cat(probs).numpy()
    ref = np.load(run / "predictions.npz")
    assert np.array_equal(ref["labels"], split.labels), "the test split is not the one the run scored"
    acc = lambda q: 100.0 * float((q.argmax(1) == ref["labels"]).mean())  # noqa: E731
    print(f"{len(p)} test images: max |p_peft - p_run| = {np.abs(p - ref['probs']).max():.2e}; "
          f"test_acc PEFT {acc(p):.2f}, run {acc(ref['probs']):.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
