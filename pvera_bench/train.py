"""Training and evaluation of one adapted classifier on uint8 image splits.

Knows nothing of Hydra, tasks or the CSV: it gets a model, splits and a mapping of settings.
The training step is the hot path: the (small) training split is moved to the device once per
fit, batches are index lookups there, losses and accuracies are accumulated on the device and
read back once per epoch. A backbone with nothing to train (linear probing) is run once per
split and the head trains on the cached features.

``Trainer.fit`` is the epoch loop; which epoch's weights it keeps and when it stops is a
``Selection`` (the PVeRA code's rule), and its state is checkpointed beside it for preempted jobs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from tqdm.auto import tqdm

from . import adapters, checkpoint, metrics, schema
from .backbones import Classifier
from .data import Split
from .data.augment_ops import Augment
from .compiled import CompiledOrEager
from .selection import FitResult, Selection, test_epoch

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The loss became NaN or infinite. ``seconds`` and ``history``: what the fit did before."""

    def __init__(self, message: str, seconds: float = 0.0, history: list[dict] | None = None) -> None:
        super().__init__(message)
        self.seconds, self.history = seconds, history or []


def check_settings(cfg: Mapping) -> None:
    """The trainer settings in ``cfg`` against their one schema (``schema.TrainerConfig``); raises
    ``TrainerConfigError`` naming the first bad one and what is allowed. Keys the schema does not
    know (``eval_batch_size``, ``progress``) are the runtime's and pass."""
    schema.check_present("trainer", cfg, schema.TrainerConfig)


TrainerConfigError = schema.ConfigError  # a bad trainer setting: one message, no traceback


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


def make_scheduler(opt: torch.optim.Optimizer, cfg: Mapping, epochs: int, steps_per_epoch: int):
    """timm's scheduler for ``cfg``: linear warmup from ``warmup_lr`` over ``warmup_epochs``, then
    ``cosine`` decay to ``min_lr`` or ``constant``; in epochs or in optimiser steps (``schedule_unit``).

    As in NOAH (timm 0.5.4's ``create_scheduler``): the cosine spans all ``epochs`` with the
    warmup counted inside it (no ``warmup_prefix``), and both learning-rate bounds are absolute.
    ``cooldown_epochs`` (timm 0.6.5's ``create_scheduler``: ``t_initial=args.epochs``, then
    ``num_epochs = get_cycle_length() + cooldown_epochs``) takes the last ones out of the cosine:
    past its end timm's cosine (``cycle_limit`` 1) holds ``min_lr``."""
    check_settings(cfg)
    schedule, unit = cfg.get("schedule", "cosine"), cfg.get("schedule_unit", "epoch")
    per = 1 if unit == "epoch" else steps_per_epoch
    kw = dict(warmup_t=round(float(cfg.get("warmup_epochs", 0)) * per), warmup_lr_init=float(cfg.get("warmup_lr", 0.0)),
              t_in_epochs=unit == "epoch")
    if schedule == "cosine":
        span = epochs - int(cfg.get("cooldown_epochs") or 0)
        return CosineLRScheduler(opt, t_initial=span * per, lr_min=float(cfg.get("min_lr", 0.0)), **kw)
    return StepLRScheduler(opt, decay_t=epochs * per + 1, decay_rate=1.0, **kw)


def epoch_schedule_t(epoch: int, offset: int = 0) -> int:
    """The epoch-schedule position that 1-based ``epoch`` trains with, when the source calls
    ``lr_scheduler.step(k + offset)`` after each 0-based epoch k and the first epoch runs at the
    scheduler's initial value (t = 0). NOAH (offset 0, ``step(epoch)``): epoch e trains with
    t = max(e - 2, 0), the first two both at t = 0 (``warmup_lr`` when warming up); SSF (offset 1,
    its train.py ``step(epoch + 1)``): epoch e trains with t = e - 1."""
    return 0 if epoch <= 1 else epoch - 2 + offset


class Trainer:
    """``fit`` trains the trainable tensors of ``model`` (adapter and head); ``predict`` evaluates.

    ``cfg`` keys: epochs, batch_size, lr_head, lr_adapter, wd_head, wd_adapter, wd_skip_1d,
    warmup_epochs, warmup_lr, min_lr, schedule (cosine | constant), schedule_unit (epoch | step),
    schedule_offset, cooldown_epochs, drop_last,
    label_smoothing, augment (a ``data/augment.py`` spec, applied to each training batch on the
    device), softmax_before_loss, shuffle, eval_every, precision (auto | bf16 | fp32),
    eval_batch_size, progress.

    ``softmax_before_loss`` reproduces a DEFECT of the PVeRA code: its heads end in a softmax and
    ``CrossEntropyLoss`` is applied to those probabilities, in training and in the validation loss
    that selects; only for an exact reproduction. ``predict``'s probabilities are the model's own.

    ``fit(..., checkpoint=PATH, every=N)`` saves the fit's state there every N epochs and a new
    trainer with the same settings resumes from it (a preempted job); ``compile`` wraps the model in ``torch.compile``, with eager fallback. After each epoch
    ``on_epoch(tag, entry)`` gets the fit's tag and a dict with epoch, lr, train_loss, train_acc,
    seconds and, when evaluated, val_acc, val_loss, test_acc.
    """

    def __init__(self, model: Classifier, cfg: Mapping, device: torch.device, seed: int = 0, compile: bool = False,
                 on_epoch: Callable[[str, dict], None] | None = None) -> None:
        check_settings(cfg)
        self.model = model.to(device)
        self.forward = CompiledOrEager(model) if compile else model
        self.cfg = cfg
        self.on_epoch = on_epoch
        self.device = device
        self.seed = int(seed)
        precision = cfg.get("precision", "auto")
        self.amp_dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and device.type == "cuda")) else None
        self.softmax_before_loss = bool(cfg.get("softmax_before_loss", False))
        self.label_smoothing = float(cfg.get("label_smoothing", 0.0))
        self.augment = Augment(cfg.get("augment"))  # training batches only (pvera_bench/data/augment.py)
        self.adapter_params = [p for p in model.backbone.parameters() if p.requires_grad]
        self.aux_layers = adapters.aux_losses(model)
        # A backbone with nothing to train and no sampling is a fixed function: cache its features.
        # (Not with augmentation: every step's images differ.)
        self.frozen_features = (not self.adapter_params and adapters.eval_samples(model) == 1 and not self.aux_layers
                                and not self.augment)
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
        """AdamW with the head's and the adapter's learning rate and weight decay. With
        ``wd_skip_1d`` the parameters that are vectors by meaning get no weight decay: biases, norm
        parameters and what each adapter layer declares (``AdapterLayer.vector_params``; see
        :func:`pvera_bench.adapters.no_weight_decay`). That is timm 0.5.4's ``create_optimizer`` rule
        (``filter_bias_and_bn=True``: ``ndim <= 1 or name.endswith(".bias")``) on the sources'
        per-layer tensors, whatever shape ours are stored in."""
        c = self.cfg
        vectors = adapters.no_weight_decay(self.model) if c.get("wd_skip_1d", False) else set()
        groups = []
        for module, lr, wd in ((self.model.head, c["lr_head"], c["wd_head"]),
                               (self.model.backbone, c["lr_adapter"], c["wd_adapter"])):
            params = [p for p in module.parameters() if p.requires_grad]
            for skip, w in ((True, 0.0), (False, float(wd))):
                chosen = [p for p in params if (id(p) in vectors) == skip]
                if chosen:
                    groups.append(dict(params=chosen, lr=float(lr), weight_decay=w))
        return torch.optim.AdamW(groups, fused=self.device.type == "cuda")

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.softmax_before_loss:  # the PVeRA code's defect (see the class docstring)
            logits = logits.softmax(-1)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def val_loss(self, pred: Predictions) -> float:
        """The validation loss that selects: the cross-entropy of ``pred``, or with
        ``softmax_before_loss`` the PVeRA code's cross-entropy of its probabilities."""
        if self.softmax_before_loss:
            return float(F.cross_entropy(pred.probs, pred.labels))
        return pred.loss

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)

    # -- training -------------------------------------------------------------------------------
    def start(self, train: Split, val: Split | None = None, *, select: str | None = None,
              patience: int | None = None, min_rel_delta: float = 0.0, desc: str = "train",
              tag: str = "fit", stamp: Any = None, test: Split | None = None, test_eval_every: int = 0,
              test_eval_at: str = "start", test_eval_from: int = 1) -> "FitLoop":
        """A fit that has not trained yet, stepped one epoch at a time (``FitLoop``); ``fit`` runs
        one to its end, a joint grid (``protocols``) runs several in lockstep."""
        return FitLoop(self, train, val, select=select, patience=patience, min_rel_delta=min_rel_delta, desc=desc,
                       tag=tag, stamp=stamp, test=test, test_eval_every=test_eval_every, test_eval_at=test_eval_at,
                       test_eval_from=test_eval_from)

    def fit(self, train: Split, val: Split | None = None, *, checkpoint: Path | None = None, every: int = 0,
            **kw: Any) -> FitResult:
        """Train for ``cfg.epochs`` epochs (``kw``: :meth:`start`'s). With ``val`` and ``select``
        (``acc`` or ``loss``), the best epoch's weights are kept and ``patience`` stops early, by
        ``Selection``'s rule. ``tag`` names this fit; ``stamp`` (JSON, e.g. the grid point) is
        written into its checkpoint (``FitLoop.run``), and a checkpoint with another stamp is
        discarded. With ``test`` and ``test_eval_every`` = N the test split is scored after epochs
        1, N + 1, 2N + 1, ... and the last (NOAH's ``val_interval`` rule), for the history only:
        nothing here reads it."""
        return self.start(train, val, **kw).run(checkpoint, every)

    def _train_epoch(self, forward, inputs, labels, order, opt, step_sched, first_step: int, bar):
        """One pass over ``order``; returns the summed loss and the number correct (on the device).
        ``step_sched``: a per-step schedule, set before each step (timm's ``step_update``)."""
        self.model.train()
        n, bs = len(order), int(self.cfg["batch_size"])
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for step, i in enumerate(range(0, n, bs), start=first_step):
            if step_sched is not None:
                step_sched.step_update(step)
            idx = order[i : i + bs]
            y = labels[idx]
            x = self.augment(inputs[idx]) if self.augment else inputs[idx]
            with self._autocast():
                logits = forward(x)
                loss = self._loss(logits, y)
                for layer in self.aux_layers:
                    aux = layer.aux_loss()
                    if aux is not None:
                        loss = loss + aux.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(-1) == y).sum()
            bar.update(1)
        return loss_sum, correct

    def _emit(self, tag: str, entry: dict) -> None:
        if self.on_epoch is not None:
            self.on_epoch(tag, entry)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, split: Split, *, stream: str = "eval", progress: bool = True) -> Predictions:
        """The predictive distribution on ``split``: mergeable adapters are merged for the pass,
        stochastic ones (PVeRA in ``mc`` mode) average ``k`` samples drawn in one batched pass.

        The pass runs on its own random stream, seeded from the run's seed and ``stream`` (which
        names the split and the pass, e.g. ``val/select-0/3``): it never reads or advances the
        global generators training draws from, and a stochastic adapter's noise is drawn per
        example (``adapters.example_noise``), so the predictions depend neither on what ran
        before nor on ``eval_batch_size``."""
        t0 = time.perf_counter()
        labels = torch.from_numpy(np.asarray(split.labels)).long()
        if self.frozen_features:
            feats = self._features(split)
            with self._autocast():
                probs = self.model.head(feats).float().softmax(-1).cpu()
            return Predictions(probs, labels, seconds=time.perf_counter() - t0)
        self.model.eval()
        k = adapters.eval_samples(self.model)
        seed = adapters.stream_seed(self.seed, stream)
        merged = adapters.fully_mergeable(self.model) and adapters.merge(self.model) > 0
        bs = max(1, int(self.cfg.get("eval_batch_size", 256)) // k)
        probs, samples = [], []
        cuda = self.device.type == "cuda"
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if cuda else []
        try:
            with torch.random.fork_rng(devices=devices), self._autocast():
                torch.manual_seed(seed)  # anything else that samples in evaluation: this pass's stream too
                bar = self._progress(math.ceil(len(split) / bs), "eval") if progress else None
                for i in range(0, len(split), bs):
                    x = self._to_device(split.images[i : i + bs])
                    with adapters.example_noise(self.model, seed, range(i, i + len(x)), k, self.device):
                        if k > 1:  # each example's k samples in consecutive rows
                            p = self.forward(x.repeat_interleave(k, 0)).float().softmax(-1).unflatten(0, (len(x), k))
                            samples.append(p.argmax(-1).T.cpu())
                            p = p.mean(1)
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


class FitLoop:
    """One fit of a ``Trainer``, one epoch per ``step``: the epoch loop's state (optimiser,
    schedule, data order, RNG, ``Selection``, history) and how to checkpoint and restore it.

    Each loop owns its random state: ``step`` trains with the loop's own torch RNG (and CUDA's),
    so fits stepped in lockstep (a joint grid) train exactly as each would alone. ``finished``:
    every epoch has run; ``stalled``: the selection's patience has run out (``Trainer.fit`` stops
    there; a joint grid stops when every candidate has stalled). ``close`` keeps the best epoch's
    weights (by the selection) and returns the ``FitResult``."""

    def __init__(self, trainer: Trainer, train: Split, val: Split | None, *, select: str | None,
                 patience: int | None, min_rel_delta: float, desc: str, tag: str, stamp: Any,
                 test: Split | None, test_eval_every: int, test_eval_at: str = "start", test_eval_from: int = 1) -> None:
        self.trainer, self.val, self.test, self.test_eval_every = trainer, val, test, int(test_eval_every or 0)
        self.test_eval_at, self.test_eval_from = test_eval_at, int(test_eval_from or 1)
        self.tag, self.stamp = tag, stamp
        c, t = trainer.cfg, trainer
        self.epochs, self.bs, self.n = int(c["epochs"]), int(c["batch_size"]), len(train)
        # drop_last: the last incomplete batch is left out of every epoch (NOAH's DataLoader)
        self.steps = self.n // self.bs if c.get("drop_last", False) else math.ceil(self.n / self.bs)
        if self.steps == 0:
            raise TrainerConfigError(f"trainer.drop_last=true with trainer.batch_size={self.bs} and {self.n} training "
                                     "images leaves no batch; lower the batch size or set trainer.drop_last=false")
        self.used = min(self.n, self.steps * self.bs)  # images trained on per epoch
        self.opt = t._optimizer()
        self.sched = make_scheduler(self.opt, c, self.epochs, self.steps)
        self.per_step = c.get("schedule_unit", "epoch") == "step"
        self.selection = Selection(select, patience, min_rel_delta)
        self.eval_every = max(1, int(c.get("eval_every", 1)))
        self.shuffle = bool(c.get("shuffle", True))
        self.result = FitResult(epochs=0, best_epoch=0)
        self.best_state: dict[str, torch.Tensor] | None = None
        if t.frozen_features:
            self.inputs, self.forward = t._features(train), t.model.head
        else:
            self.inputs, self.forward = t._to_device(train.images), t.forward
        self.labels = torch.from_numpy(np.asarray(train.labels)).to(t.device)
        torch.manual_seed(t.seed)
        self.gen = torch.Generator(device="cpu").manual_seed(t.seed)
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state() if t.device.type == "cuda" else None
        self.bar = t._progress(self.epochs * self.steps, desc)

    @property
    def epoch(self) -> int:
        return self.result.epochs

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs

    @property
    def stalled(self) -> bool:
        return self.selection.should_stop

    def step(self) -> dict[str, Any]:
        """Train the next epoch (and score it); returns its history entry. Raises
        ``DivergedError`` when the training loss is not finite."""
        t, epoch, steps = self.trainer, self.epoch + 1, self.steps
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)
        t0 = time.perf_counter()
        if self.per_step:
            self.sched.step_update((epoch - 1) * steps)
        else:
            self.sched.step(epoch_schedule_t(epoch, int(t.cfg.get("schedule_offset") or 0)))
        entry = dict(epoch=epoch, lr=self.opt.param_groups[-1]["lr"])  # the adapter's (else the head's)
        order = (torch.randperm(self.n, generator=self.gen).to(t.device) if self.shuffle
                 else torch.arange(self.n, device=t.device))[: self.used]
        loss_sum, correct = t._train_epoch(self.forward, self.inputs, self.labels, order, self.opt,
                                           self.sched if self.per_step else None, (epoch - 1) * steps, self.bar)
        train_loss = float(loss_sum) / self.used
        if not math.isfinite(train_loss):
            self.bar.close()
            c = t.cfg
            raise DivergedError(
                f"the training loss became {train_loss} in epoch {epoch}; the run diverged. "
                f"Lower the learning rate (trainer.lr_adapter={c['lr_adapter']}, trainer.lr_head={c['lr_head']})",
                seconds=self.result.seconds + time.perf_counter() - t0, history=self.result.history)
        entry.update(train_loss=train_loss, train_acc=float(correct) * 100.0 / self.used)
        if self.val is not None and (epoch % self.eval_every == 0 or epoch == self.epochs):
            pred = t.predict(self.val, stream=f"val/{self.tag}/{epoch}", progress=False)
            entry.update(val_acc=pred.acc, val_loss=t.val_loss(pred))
            if self.selection.update(epoch, entry["val_acc"], entry["val_loss"]):
                self.best_state = t.trainable_state()
        entry["seconds"] = time.perf_counter() - t0
        if self.test is not None and test_epoch(epoch, self.epochs, self.test_eval_every, self.test_eval_at,
                                                self.test_eval_from):
            entry["test_acc"] = t.predict(self.test, stream=f"test/{self.tag}/{epoch}", progress=False).acc
        self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state()
        self.result.seconds += entry["seconds"]
        self.result.epochs = epoch
        self.result.history.append(entry)
        t._emit(self.tag, entry)
        self.bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "epoch"}, refresh=False)
        return entry

    def run(self, path: Path | None = None, every: int = 0) -> FitResult:
        """Step to the end (or until stalled) and ``close``. With ``path`` and ``every`` > 0 the
        loop resumes from the checkpoint at ``path`` and saves one there every ``every`` epochs
        (never after the last); the file is left for its owner (``checkpoint.RunState``) to
        remove once what the fit produced is saved."""
        saved = checkpoint.load(path) if path is not None and every else None
        if saved is not None and not self.restore(saved, path):
            path.unlink(missing_ok=True)
        while not self.finished and not self.stalled:
            self.step()
            if path is not None and every and self.epoch % every == 0 and not self.finished and not self.stalled:
                checkpoint.save(path, self.state())
        if self.stalled:
            log.info("early stopping after epoch %d (best epoch %d)", self.epoch, self.selection.best_epoch)
        return self.close()

    def state(self) -> dict[str, Any]:
        """What ``checkpoint.save`` writes and ``restore`` reads back."""
        return dict(trainable=self.trainer.trainable_state(), best=self.best_state, optimizer=self.opt.state_dict(),
                    generator=self.gen.get_state(), torch_rng=self.rng, cuda_rng=self.cuda_rng,
                    info=dict(epoch=self.epoch, stamp=self.stamp, selection=self.selection.state_dict(),
                              history=self.result.history, seconds=self.result.seconds))

    def restore(self, saved: Mapping[str, Any], where: Any = "checkpoint") -> bool:
        """Continue from ``saved`` (a ``checkpoint.load`` result) unless it was stamped for another
        point: then False, with a log line, and nothing changes.
        The restored epochs are replayed to the trainer's ``on_epoch`` hook."""
        t = self.trainer
        if saved["stamp"] != json.loads(json.dumps(self.stamp)):
            log.warning("discarding checkpoint %s: it was saved for %s, not %s; training from the start",
                        where, saved.get("stamp"), self.stamp)
            return False
        t.load_trainable_state(saved["trainable"])
        self.opt.load_state_dict(saved["optimizer"])
        self.gen.set_state(saved["generator"])
        self.rng = saved["torch_rng"]
        if saved.get("cuda_rng") is not None and self.cuda_rng is not None:
            self.cuda_rng = saved["cuda_rng"]
        self.selection.load_state_dict(saved["selection"])
        self.best_state, self.result.history, self.result.epochs = saved["best"], saved["history"], saved["epoch"]
        self.result.seconds = saved["seconds"]
        for entry in self.result.history:  # a new run directory gets the earlier segments' epochs too
            t._emit(self.tag, entry)
        self.bar.update(self.epoch * self.steps)
        log.info("resuming %s from its checkpoint after epoch %d (%s)", self.tag, self.epoch, where)
        return True

    def close(self, keep_best: bool = True) -> FitResult:
        """End the fit: load the best epoch's weights (``keep_best``) and return the result."""
        self.bar.close()
        kept = keep_best and self.best_state is not None
        if kept:
            self.trainer.load_trainable_state(self.best_state)
        self.result.best_epoch = self.selection.best_epoch if self.best_state is not None else self.result.epochs
        self.result.val_acc, self.result.val_loss = self.selection.val_acc, self.selection.val_loss
        return self.result
