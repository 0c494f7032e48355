"""Post-hoc calibration by temperature scaling (Guo et al. 2017), an evaluation option for every adapter.

``calibration=temperature``: one scalar ``T`` is fitted on the protocol's validation split (val200)
by minimising the negative log-likelihood of ``softmax(log p / T)``, where ``p`` is the model's
predictive distribution (for a deterministic adapter ``log p`` equals the logits up to a constant
per example, so this is the usual ``softmax(logits / T)``; for PVeRA's ``mc`` mode it scales the
averaged prediction). The 1-D minimisation is scipy's bounded Brent method on ``log T`` in
[log 0.01, log 100]. ``T > 1`` softens an overconfident model; the argmax, and so the accuracy,
never changes.
"""

from __future__ import annotations

import math

import torch

CALIBRATIONS = ("none", "temperature")
LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))


def _log_probs(probs) -> torch.Tensor:
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    return p.clamp_min(torch.finfo(torch.float64).tiny).log()


def scaled(probs, temperature: float) -> torch.Tensor:
    """``softmax(log p / T)`` in float64 (CPU)."""
    return (_log_probs(probs) / float(temperature)).softmax(-1)


def nll_at(log_p: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(log_p / temperature, labels))


def fit_temperature(probs, labels) -> float:
    """The ``T`` minimising the NLL of ``softmax(log p / T)`` on (``probs``, ``labels``)."""
    from scipy.optimize import minimize_scalar

    log_p = _log_probs(probs)
    y = torch.as_tensor(labels).long().cpu()
    res = minimize_scalar(lambda lt: nll_at(log_p, y, math.exp(lt)), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-7})
    return float(math.exp(res.x))
