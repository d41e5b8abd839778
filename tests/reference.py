"""Independent float64 references, written plainly with loops over rows and classes (NumPy only for
storage). They share no code with sld_core, so agreement means something."""

from __future__ import annotations

import math

import numpy as np


def ref_swap(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = np.array(logits, dtype=np.float64, copy=True)
    for b in range(out.shape[0]):
        row = list(out[b])
        top = row.index(max(row))  # first index on ties
        y = int(targets[b])
        if top != y:
            out[b, y], out[b, top] = row[top], row[y]
    return out


def ref_softmax(row: list[float], temperature: float) -> list[float]:
    scaled = [v / temperature for v in row]
    peak = max(scaled)
    exps = [math.exp(v - peak) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def ref_kl(p: list[float], q: list[float]) -> float:
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q) if pk > 0)


def ref_terms(student, teacher, targets, *, epoch, temperatures=(1, 2, 3, 4, 5, 6), gamma=150,
              ce_weight=0.1, kd_weight=0.9, teacher_swap=True, pseudo_teacher=True) -> dict[str, float]:
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    batch = s.shape[0]
    t_used = ref_swap(t, targets) if teacher_swap else t
    s_swapped = ref_swap(s, targets)
    ce = sum(-math.log(ref_softmax(list(s[b]), 1.0)[int(targets[b])]) for b in range(batch)) / batch
    teacher_term = pseudo_term = 0.0
    for temp in temperatures:
        for b in range(batch):
            q = ref_softmax(list(s[b]), temp)
            teacher_term += temp**2 * ref_kl(ref_softmax(list(t_used[b]), temp), q) / batch
            if pseudo_teacher and epoch > gamma:
                pseudo_term += temp**2 * ref_kl(ref_softmax(list(s_swapped[b]), temp), q) / batch
    total = ce_weight * ce + kd_weight * (teacher_term + pseudo_term)
    return {"total": total, "ce": ce, "teacher": teacher_term, "pseudo": pseudo_term}


def numeric_grad(fn, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of scalar ``fn`` at ``x`` (float64)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad
