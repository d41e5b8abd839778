"""``from backends import SLDLoss``: found where users look, torch imported only when asked for, and the
same label checks by default as the functions (``check_targets=True``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import backends  # noqa: E402
import sld_core  # noqa: E402
from backends.torch_sld import SLDLoss as DefinedHere  # noqa: E402


def test_the_module_is_exported_from_backends() -> None:
    from backends import SLDLoss

    assert SLDLoss is DefinedHere and backends.SLDLoss is DefinedHere
    with pytest.raises(AttributeError, match="module 'backends' has no attribute 'SLDLos'"):
        backends.SLDLos  # noqa: B018 (a typo still fails as usual)


def test_backends_imports_torch_only_when_sldloss_is_asked_for() -> None:
    code = (
        "import sys, backends\n"
        "assert 'torch' not in sys.modules\n"
        "from backends import SLDLoss\n"
        "assert 'torch' in sys.modules and SLDLoss.__module__ == 'backends.torch_sld'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_checks_the_labels_like_the_functions() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    bad = torch.tensor([0, 1, 2, 5])  # 5 is out of range for 5 classes
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        backends.SLDLoss()(s, t, bad, epoch=1)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        backends.sld_loss(s, t, bad, epoch=1)
    # asked for, the check goes (no sync); the loss of valid labels is the same either way
    good = torch.tensor([0, 1, 2, 4])
    checked = backends.SLDLoss()(s, t, good, epoch=1).total
    unchecked = backends.SLDLoss(check_targets=False)(s, t, good, epoch=1).total
    assert torch.equal(checked, unchecked)


def test_module_matches_a_float64_reference_and_counts_epochs_from_one() -> None:
    """SLD of one row written out: 0.1 CE + 0.9 [KL(swap(t) || s) + (epoch > gamma) KL(swap(s) || s)]
    at T = 1, with a teacher and a student that are both wrong, so both swaps act."""
    s = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)  # top: class 1, the label is 0
    t = torch.tensor([[0.0, 3.0, 1.0]])  # top: class 1 too
    y = torch.tensor([0])
    config = sld_core.SLDConfig(temperatures=(1.0,), gamma=1, ce_weight=0.1, kd_weight=0.9)
    loss = backends.SLDLoss(config)

    def kl(target_logits: torch.Tensor, log_q: torch.Tensor) -> float:
        p = torch.softmax(target_logits, 0)
        return float((p * (torch.log(p) - log_q)).sum())

    s64, t64 = s.detach().double()[0], t.double()[0]
    log_q = s64 - torch.logsumexp(s64, 0)
    swap = [1, 0, 2]  # the label's logit (class 0) and the top logit (class 1) trade places
    ce, kl_teacher, kl_pseudo = float(-log_q[0]), kl(t64[swap], log_q), kl(s64[swap], log_q)
    assert kl_pseudo > 0.1  # the pseudo-teacher term is not trivially zero here
    expected = {1: 0.1 * ce + 0.9 * kl_teacher, 2: 0.1 * ce + 0.9 * (kl_teacher + kl_pseudo)}
    for epoch, value in expected.items():  # gamma = 1: off in epoch 1, on from epoch 2
        assert float(loss(s, t, y, epoch=epoch).total.detach()) == pytest.approx(value, rel=1e-6)
    loss(s, t, y, epoch=2).total.backward()
    assert s.grad is not None and s.grad.shape == s.shape and t.grad is None
