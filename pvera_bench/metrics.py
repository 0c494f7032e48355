"""Evaluation metrics: accuracy, calibration (NLL, ECE, Brier), predictive entropy, OOD AUROC.

Pure functions, no Hydra and no files. Inputs are class probabilities ``probs (N, C)`` and
integer ``labels (N,)`` (torch tensors on any device, or numpy arrays); Monte-Carlo inputs are
``sample_probs (k, N, C)``, one probability table per stochastic forward pass. Everything is
computed in float64 on the CPU.

Conventions:

* ``accuracy`` and the MC accuracy interval are percentages; ``ece`` is a fraction in [0, 1].
* Top-1 prediction = ``argmax`` (the first class wins a tie); confidence = the max probability.
* ECE / reliability bins: ``n_bins`` equal-width bins over [0, 1], bin ``i`` holds confidences in
  ``(i / n_bins, (i + 1) / n_bins]``; the first bin also holds 0, i.e. it is ``[0, 1 / n_bins]``.
  ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` over the non-empty bins.
* Entropies are in nats, with ``0 log 0 = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metric_registry import METRICS, Metric  # noqa: F401  (the registry of what is recorded)

EPS = 1e-12
"""Probabilities are clamped at this value before a log (NLL)."""

N_BINS = 15


def _probs(probs, ndim: int = 2, name: str = "probs") -> torch.Tensor:
    t = torch.as_tensor(probs).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.shape[-2] == 0:
        raise ValueError(f"{name} holds no examples")
    return t


def _labels(labels, n: int) -> torch.Tensor:
    t = torch.as_tensor(labels).detach().to(device="cpu")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("labels must be integers")
    t = t.to(torch.long)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(t.shape)}")
    return t


def _prepare(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got [{int(y.min())}, {int(y.max())}]")
    return p, y


def accuracy(probs, labels) -> float:
    """Top-1 accuracy in percent."""
    p, y = _prepare(probs, labels)
    return float((p.argmax(dim=1) == y).to(torch.float64).mean() * 100.0)


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class (nats), probabilities clamped at ``EPS``."""
    p, y = _prepare(probs, labels)
    p_true = p.gather(1, y[:, None]).squeeze(1).clamp_min(EPS)
    return float(-p_true.log().mean())


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean over examples of ``sum_k (p_k - onehot_k)^2`` (range [0, 2])."""
    p, y = _prepare(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-1 confidence; arrays of length ``n_bins`` (``edges``: ``n_bins + 1``).

    ``accuracy`` and ``confidence`` are fractions, NaN for an empty bin.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float


def reliability_bins(probs, labels, n_bins: int = N_BINS) -> ReliabilityBins:
    """Bin the top-1 confidences into ``n_bins`` equal-width bins ``(lo, hi]`` (the first is ``[0, hi]``)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p, y = _prepare(probs, labels)
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives i with edges[i] < x <= edges[i+1] over the inner edges; x <= edges[1]
    # (0 included) -> 0; anything above the last inner edge (confidence up to 1) -> n_bins - 1.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    sum_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    nonempty = counts > 0
    safe = counts.clamp_min(1.0)
    acc_b = torch.where(nonempty, sum_acc / safe, torch.full_like(counts, float("nan")))
    conf_b = torch.where(nonempty, sum_conf / safe, torch.full_like(counts, float("nan")))
    gap = (sum_acc - sum_conf).abs()  # = n_b * |acc_b - conf_b|, 0 for empty bins
    ece_value = float(gap.sum() / counts.sum())
    return ReliabilityBins(
        edges=edges.numpy(),
        counts=counts.to(torch.long).numpy(),
        accuracy=acc_b.numpy(),
        confidence=conf_b.numpy(),
        ece=ece_value,
    )


def ece(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected calibration error (fraction in [0, 1]); see the module docstring for the bins."""
    return reliability_bins(probs, labels, n_bins).ece


def predictive_entropy(probs) -> torch.Tensor:
    """Entropy (nats) of each row of ``probs``: a float64 CPU tensor of shape ``(N,)``."""
    p = _probs(probs)
    return -torch.special.xlogy(p, p).sum(dim=1)


def mean_predictive_entropy(probs) -> float:
    """Mean over examples of :func:`predictive_entropy`."""
    return float(predictive_entropy(probs).mean())


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve for telling in-distribution (positive) from OOD examples.

    Higher scores must mean "more in-distribution". Ties count one half (as in
    ``sklearn.metrics.roc_auc_score``); the value is a fraction in [0, 1].
    """
    from sklearn.metrics import roc_auc_score

    s_in = torch.as_tensor(scores_in).detach().to("cpu", torch.float64).reshape(-1).numpy()
    s_out = torch.as_tensor(scores_out).detach().to("cpu", torch.float64).reshape(-1).numpy()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("auroc needs at least one in-distribution and one OOD score")
    y_true = np.concatenate([np.ones(s_in.size), np.zeros(s_out.size)])
    return float(roc_auc_score(y_true, np.concatenate([s_in, s_out])))


def mc_sample_accuracies(samples, labels) -> torch.Tensor:
    """Accuracy (percent) of each of the ``k`` Monte-Carlo samples: a float64 tensor ``(k,)``.

    ``samples`` is either the samples' probabilities ``(k, N, C)`` or their top-1 predictions
    ``(k, N)`` (what the evaluator keeps, to spare memory on large test splits).
    """
    s = torch.as_tensor(samples).detach().cpu()
    if s.ndim == 3:
        s = _probs(s, ndim=3, name="sample_probs").argmax(dim=2)
    elif s.ndim != 2:
        raise ValueError(f"samples must be (k, N, C) probabilities or (k, N) predictions, got shape {tuple(s.shape)}")
    if s.shape[0] == 0:
        raise ValueError("samples holds no Monte-Carlo sample")
    y = _labels(labels, s.shape[1])
    return (s == y[None, :]).to(torch.float64).mean(dim=1) * 100.0


def mc_accuracy_interval(samples, labels) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles (linear interpolation, as ``numpy.percentile``) of the
    per-sample accuracies, in percent."""
    accs = mc_sample_accuracies(samples, labels)
    q = torch.quantile(accs, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(q[0]), float(q[1])


def summarize(probs, labels, samples=None) -> dict[str, float]:
    """The per-run metrics, as written to the results CSV.

    Keys: ``test_acc`` (percent), ``test_nll``, ``test_ece`` (fraction), ``test_brier``. With
    Monte-Carlo ``samples`` (see :func:`mc_sample_accuracies`; ``probs`` is then their average)
    also ``mc_entropy`` (mean predictive entropy of ``probs``), ``mc_acc_low`` and ``mc_acc_high``
    (see :func:`mc_accuracy_interval`).
    """
    out = {
        "test_acc": accuracy(probs, labels),
        "test_nll": nll(probs, labels),
        "test_ece": ece(probs, labels),
        "test_brier": brier(probs, labels),
    }
    if samples is not None:
        out["mc_samples"] = int(torch.as_tensor(samples).shape[0])
        out["mc_entropy"] = mean_predictive_entropy(probs)
        out["mc_acc_low"], out["mc_acc_high"] = mc_accuracy_interval(samples, labels)
    return out


def ood_scores(probs) -> dict[str, torch.Tensor]:
    """Per-example OOD scores, higher = more in-distribution (float64 CPU tensors, shape ``(N,)``).

    ``msp``: the max softmax probability; ``entropy``: the negated predictive entropy.
    """
    p = _probs(probs)
    return {"msp": p.max(dim=1).values, "entropy": -predictive_entropy(p)}
