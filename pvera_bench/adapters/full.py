"""Full fine-tuning: every backbone parameter trains (the head trains as with every adapter).

Nothing is inserted, so there is nothing to merge: the trained weights are the model. The
backbone's learning rate and weight decay are the adapter's (``trainer.lr_adapter``,
``trainer.wd_adapter``). V-PETL-Bench's full fine-tuning does the same (every parameter of the
timm ViT in the optimiser: synbol/Parameter-Efficient-Transfer-Learning-Benchmark
ImageClassification/train/train_model_fulltuning.py).
"""

from __future__ import annotations

from torch import nn



def apply(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
