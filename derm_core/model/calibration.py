"""Temperature scaling (Guo et al. 2017), fitted on the validation split.

One scalar T divides the logits; it changes confidence, never the ranking of classes.
"""
from __future__ import annotations

import numpy as np
import torch


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 minimising the negative log-likelihood of ``softmax(logits / T)``."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.tensor(np.asarray(y_true), dtype=torch.long)   # a copy: the labels may be read-only
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
