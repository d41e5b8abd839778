r"""Temperature-scaled log-softmax and the KL divergence between two such distributions.

.. math:: \mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k - \log q_k), \qquad
   \log \mathrm{softmax}(z/T)_k = z_k/T - \max_j z_j/T - \log \sum_j e^{z_j/T - \max_j z_j/T}

Subtracting the row maximum keeps ``exp`` in range for logits of any scale.
"""

from __future__ import annotations

from typing import Any

__all__ = ["log_softmax", "kl_rows"]


def log_softmax(logits: Any, temperature: float = 1.0, *, xp: Any) -> Any:
    """Row-wise ``log(softmax(logits / temperature))``, stable for any logit scale."""
    scaled = logits / temperature
    shifted = scaled - xp.max(scaled, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def kl_rows(log_p: Any, log_q: Any, *, xp: Any) -> Any:
    """``KL(p || q)`` per row, from log-probabilities, shape ``(B,)``. Entries where ``p`` underflows
    to 0 contribute exactly 0 (their log-probabilities stay finite, so no ``0 * inf``)."""
    return xp.sum(xp.exp(log_p) * (log_p - log_q), axis=1)
