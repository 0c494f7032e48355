"""Training and evaluation of one adapted classifier on uint8 image splits.

Knows nothing of Hydra, tasks or the CSV: it gets a model, splits and a mapping of settings.
The training step is the hot path: the (small) training split is moved to the device once per
fit, batches are index lookups there, losses and accuracies are accumulated on the device and
read back once per epoch. A backbone with nothing to train (linear probing) is run once per
split and the head trains on the cached features.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import adapters, checkpoint, metrics
from .backbones import Classifier
from .data import Split

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    epochs: int  # epochs actually trained
    best_epoch: int  # the epoch whose weights were kept (1-based)
    val_acc: float = float("nan")
    val_loss: float = float("nan")
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class Predictions:
    probs: torch.Tensor  # (N, C) float32 on the CPU: the (Monte-Carlo averaged) predictive distribution
    labels: torch.Tensor  # (N,) int64
    sample_preds: torch.Tensor | None = None  # (k, N) top-1 of each Monte-Carlo sample, when k > 1
    seconds: float = 0.0

    @property
    def acc(self) -> float:
        return metrics.accuracy(self.probs, self.labels)

    @property
    def loss(self) -> float:
        return metrics.nll(self.probs, self.labels)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_lambda(schedule: str, total: int, warmup: int, min_ratio: float):
    """Linear warmup, then cosine decay to ``min_ratio`` (or constant)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


class CompiledOrEager:
    """``torch.compile(model)``, replaced for good by the eager model the first time it fails."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.compiled = model, None
        try:
            self.compiled = torch.compile(model)
        except Exception as e:  # pragma: no cover - depends on the platform
            log.warning("torch.compile unavailable (%s); running eagerly", e)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except torch.OutOfMemoryError:  # not a compilation failure: eager would fail the same way
                raise
            except Exception as e:
                log.warning("torch.compile failed (%s: %s); running eagerly", type(e).__name__, str(e)[:200])
                self.compiled = None
        return self.model(x)


class Trainer:
    """``fit`` trains the trainable tensors of ``model`` (adapter and head); ``predict`` evaluates.

    ``cfg`` keys: epochs, batch_size, lr_head, lr_adapter, wd_head, wd_adapter, warmup_epochs,
    schedule (cosine | constant), min_lr_ratio, shuffle, precision (auto | bf16 | fp32),
    eval_batch_size, progress. With ``checkpoint_dir`` and ``checkpoint_every`` (epochs), ``fit``
    saves its state every that many epochs and a new trainer with the same settings resumes from
    it (a preempted job); ``compile`` wraps the model in ``torch.compile``, with eager fallback.
    """

    def __init__(self, model: Classifier, cfg: Mapping, device: torch.device, seed: int = 0,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0, compile: bool = False) -> None:
        self.model = model.to(device)
        self.forward = CompiledOrEager(model) if compile else model
        self.cfg = cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = int(checkpoint_every or 0)
        self.device = device
        self.seed = int(seed)
        precision = cfg.get("precision", "auto")
        self.amp_dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and device.type == "cuda")) else None
        self.adapter_params = [p for p in model.backbone.parameters() if p.requires_grad]
        self.aux_layers = adapters.aux_losses(model)
        # A backbone with nothing to train and no sampling is a fixed function: cache its features.
        self.frozen_features = not self.adapter_params and adapters.eval_samples(model) == 1 and not self.aux_layers
        self._feature_cache: dict[int, tuple[Split, torch.Tensor]] = {}
        self.feature_passes = 0  # how many times a split went through the backbone (for tests)

    # -- helpers --------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _progress(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.cfg.get("progress", True), leave=False, dynamic_ncols=True)

    def _to_device(self, images: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(images))  # a copy: memory-mapped splits are read-only
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _features(self, split: Split) -> torch.Tensor:
        """Backbone features of a whole split, computed once and kept (linear probing)."""
        hit = self._feature_cache.get(id(split))
        if hit is not None and hit[0] is split:
            return hit[1]
        feats = []
        self.model.eval()
        bs = int(self.cfg.get("eval_batch_size", 256))
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(split), bs):
                feats.append(self.model.features(self._to_device(split.images[i : i + bs])).float())
        self.feature_passes += 1
        out = torch.cat(feats)
        self._feature_cache[id(split)] = (split, out)
        return out

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        groups = [dict(params=list(self.model.head.parameters()), lr=float(c["lr_head"]), weight_decay=float(c["wd_head"]))]
        if self.adapter_params:
            groups.append(dict(params=self.adapter_params, lr=float(c["lr_adapter"]), weight_decay=float(c["wd_adapter"])))
        return torch.optim.AdamW(groups, fused=self.device.type == "cuda")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)

    # -- training -------------------------------------------------------------------------------
    def fit(self, train: Split, val: Split | None = None, *, select: str | None = None,
            patience: int | None = None, min_rel_delta: float = 0.0, desc: str = "train",
            tag: str = "fit") -> FitResult:
        """Train for ``cfg.epochs`` epochs. With ``val`` and ``select`` (``acc`` or ``loss``), the
        epoch with the best validation score is kept, and with ``patience`` training stops after
        that many evaluations without a relative improvement of ``min_rel_delta``. ``tag`` names
        this fit's checkpoint file."""
        c = self.cfg
        torch.manual_seed(self.seed)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        epochs, bs = int(c["epochs"]), int(c["batch_size"])
        n = len(train)
        steps_per_epoch = math.ceil(n / bs)
        total = epochs * steps_per_epoch
        opt = self._optimizer()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(
            c.get("schedule", "cosine"), total, int(float(c.get("warmup_epochs", 0)) * steps_per_epoch),
            float(c.get("min_lr_ratio", 0.0))))
        if self.frozen_features:
            inputs = self._features(train)
            forward = self.model.head
        else:
            inputs = self._to_device(train.images)
            forward = self.forward
        labels = torch.from_numpy(np.asarray(train.labels)).to(self.device)
        shuffle = bool(c.get("shuffle", True))
        eval_every = max(1, int(c.get("eval_every", 1)))

        best_score, best_state, best_epoch, since_best = None, None, epochs, 0
        result = FitResult(epochs=0, best_epoch=epochs)
        ckpt_path = self.checkpoint_dir / f"{tag}.safetensors" if self.checkpoint_dir and self.checkpoint_every else None
        start = 1
        saved = checkpoint.load(ckpt_path) if ckpt_path else None
        if saved is not None:
            self.load_trainable_state(saved["trainable"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            if saved["cuda_rng"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"])
            best_score, best_state = saved["best_score"], saved["best"]
            best_epoch, since_best = saved["best_epoch"], saved["since_best"]
            result.val_acc, result.val_loss = saved["val_acc"], saved["val_loss"]
            result.history, result.epochs = saved["history"], saved["epoch"]
            start = saved["epoch"] + 1
            log.info("resuming %s from its checkpoint after epoch %d (%s)", tag, saved["epoch"], ckpt_path)
        t0 = time.perf_counter()
        bar = self._progress(total, desc)
        bar.update((start - 1) * steps_per_epoch)
        for epoch in range(start, epochs + 1):
            self.model.train()
            order = torch.randperm(n, generator=gen).to(self.device) if shuffle else torch.arange(n, device=self.device)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            for i in range(0, n, bs):
                idx = order[i : i + bs]
                y = labels[idx]
                with self._autocast():
                    logits = forward(inputs[idx])
                    loss = F.cross_entropy(logits.float(), y)
                    for layer in self.aux_layers:
                        aux = layer.aux_loss()
                        if aux is not None:
                            loss = loss + aux.float()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(-1) == y).sum()
                bar.update(1)
            train_loss = float(loss_sum) / n
            if not math.isfinite(train_loss):
                bar.close()
                raise DivergedError(
                    f"the training loss became {train_loss} in epoch {epoch}; the run diverged. "
                    f"Lower the learning rate (trainer.lr_adapter={c['lr_adapter']}, trainer.lr_head={c['lr_head']})"
                )
            entry = dict(epoch=epoch, train_loss=train_loss, train_acc=float(correct) * 100.0 / n)
            result.epochs = epoch
            if val is not None and (epoch % eval_every == 0 or epoch == epochs):
                pred = self.predict(val, progress=False)
                entry.update(val_acc=pred.acc, val_loss=pred.loss)
                if select is not None:
                    score = pred.acc if select == "acc" else -pred.loss
                    improved = best_score is None or score > best_score + abs(best_score) * min_rel_delta
                    if best_score is None or score > best_score:
                        best_score, best_state, best_epoch = score, self.trainable_state(), epoch
                        result.val_acc, result.val_loss = pred.acc, pred.loss
                    since_best = 0 if improved else since_best + eval_every
                else:
                    result.val_acc, result.val_loss = pred.acc, pred.loss
            result.history.append(entry)
            bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "epoch"}, refresh=False)
            stop = patience is not None and since_best >= int(patience)
            if ckpt_path and epoch % self.checkpoint_every == 0 and epoch < epochs and not stop:
                self._save_checkpoint(ckpt_path, opt, sched, gen, best_state, dict(
                    epoch=epoch, best_score=best_score, best_epoch=best_epoch, since_best=since_best,
                    val_acc=result.val_acc, val_loss=result.val_loss, history=result.history))
            if stop:
                log.info("early stopping after epoch %d (best epoch %d)", epoch, best_epoch)
                break
        bar.close()
        if ckpt_path:
            ckpt_path.unlink(missing_ok=True)
        if best_state is not None:
            self.load_trainable_state(best_state)
            result.best_epoch = best_epoch
        else:
            result.best_epoch = result.epochs
        result.seconds = time.perf_counter() - t0
        return result

    def _save_checkpoint(self, path: Path, opt, sched, gen, best_state, info: dict) -> None:
        checkpoint.save(path, trainable=self.trainable_state(), best=best_state, optimizer=opt.state_dict(),
                        scheduler=sched.state_dict(), generator=gen.get_state(), info=info)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, split: Split, *, progress: bool = True) -> Predictions:
        """The predictive distribution on ``split``: mergeable adapters are merged for the pass,
        stochastic ones (PVeRA in ``mc`` mode) average ``k`` samples drawn in one batched pass."""
        t0 = time.perf_counter()
        labels = torch.from_numpy(np.asarray(split.labels)).long()
        if self.frozen_features:
            feats = self._features(split)
            with self._autocast():
                probs = self.model.head(feats).float().softmax(-1).cpu()
            return Predictions(probs, labels, seconds=time.perf_counter() - t0)
        self.model.eval()
        k = adapters.eval_samples(self.model)
        merged = adapters.fully_mergeable(self.model) and adapters.merge(self.model) > 0
        bs = max(1, int(self.cfg.get("eval_batch_size", 256)) // k)
        probs, samples = [], []
        try:
            with self._autocast():
                bar = self._progress(math.ceil(len(split) / bs), "eval") if progress else None
                for i in range(0, len(split), bs):
                    x = self._to_device(split.images[i : i + bs])
                    if k > 1:
                        p = self.forward(x.repeat(k, 1, 1, 1)).float().softmax(-1).unflatten(0, (k, len(x)))
                        samples.append(p.argmax(-1).cpu())
                        p = p.mean(0)
                    else:
                        p = self.forward(x).float().softmax(-1)
                    probs.append(p.cpu())
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    bar.close()
        finally:
            if merged:
                adapters.unmerge(self.model)
        return Predictions(torch.cat(probs), labels, torch.cat(samples, 1) if samples else None,
                           seconds=time.perf_counter() - t0)
