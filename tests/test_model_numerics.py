"""The zoo's numerics against the CRD / mdistiller model files that trained the published students:
initialisation per family, the WRN forward's second batch-norm pass, and the pooling before the classifier.

The official rules are written out below from those files (``mdistiller/models/cifar/*.py``), not taken
from the code under test:

=============================  =====================================  ====================================
family (files)                 convolutions                           classifier (Linear)
=============================  =====================================  ====================================
resnet*, resnet*x4 (resnet)    kaiming_normal_(fan_out, relu)         torch default
ResNet18/50 (resnetv2)         kaiming_normal_(fan_out, relu)         torch default
wrn_* (wrn)                    normal_(0, sqrt(2 / (k*k*out)))        torch default weight, zero bias
vgg* (vgg)                     normal_(0, sqrt(2 / (k*k*out))), 0     normal_(0, 0.01), zero bias
MobileNetV2 (mobilenetv2)      normal_(0, sqrt(2 / (k*k*out)))        normal_(0, 0.01), zero bias
ShuffleV1/V2 (ShuffleNetv1/2)  torch default                          torch default
=============================  =====================================  ====================================

Batch norm is weight 1, bias 0 everywhere (explicitly, or torch's default). Torch's default for both
``Conv2d`` and ``Linear`` weights is ``kaiming_uniform_(a=sqrt(5))``, i.e. ``U(-b, b)`` with ``b = 1 /
sqrt(fan_in)`` (std ``b / sqrt(3)``), and the same ``U(-b, b)`` for a bias. He-normal's std is ``sqrt(2 /
fan_out)``: the two differ by ``sqrt(6 * fan_in / fan_out)`` in std and in shape (a normal sample passes
the uniform's bound), which the checks below see.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from harness.models import MODELS, build_model, model_info  # noqa: E402

HE, TORCH_DEFAULT, ZERO, NORMAL_001 = "he-normal", "torch-default", "zero", "normal(0, 0.01)"

# name -> (conv weight, conv bias, linear weight, linear bias), from the official files (table above).
OFFICIAL_INIT = {
    "resnet8": (HE, None, TORCH_DEFAULT, TORCH_DEFAULT),
    "resnet110": (HE, None, TORCH_DEFAULT, TORCH_DEFAULT),
    "resnet8x4": (HE, None, TORCH_DEFAULT, TORCH_DEFAULT),
    "ResNet18": (HE, None, TORCH_DEFAULT, TORCH_DEFAULT),
    "ResNet50": (HE, None, TORCH_DEFAULT, TORCH_DEFAULT),
    "wrn_16_2": (HE, None, TORCH_DEFAULT, ZERO),
    "wrn_40_1": (HE, None, TORCH_DEFAULT, ZERO),
    "vgg8": (HE, ZERO, NORMAL_001, ZERO),
    "vgg13": (HE, ZERO, NORMAL_001, ZERO),
    "MobileNetV2": (HE, None, NORMAL_001, ZERO),
    "ShuffleV1": (TORCH_DEFAULT, None, TORCH_DEFAULT, TORCH_DEFAULT),
    "ShuffleV2": (TORCH_DEFAULT, None, TORCH_DEFAULT, TORCH_DEFAULT),
}


def _rule(kind: str, module: nn.Module, fan_in: int) -> tuple[str, float]:
    """(distribution, std) of a tensor initialised by ``kind``."""
    if kind == HE:
        k = module.kernel_size[0] * module.kernel_size[1]
        return "normal", math.sqrt(2.0 / (k * module.out_channels))
    if kind == NORMAL_001:
        return "normal", 0.01
    if kind == TORCH_DEFAULT:
        return "uniform", 1.0 / math.sqrt(fan_in) / math.sqrt(3.0)
    raise AssertionError(kind)


def _check_tensor(name: str, t: torch.Tensor, kind: str | None, module: nn.Module, fan_in: int) -> list[str]:
    """Problems of one initialised tensor against its rule; empty when it fits."""
    if kind is None:
        return [] if t is None else [f"{name}: unexpected tensor"]
    w = t.detach().double().flatten()
    if kind == ZERO:
        return [] if bool((w == 0).all()) else [f"{name}: not zero"]
    dist, std = _rule(kind, module, fan_in)
    n = w.numel()
    kurtosis = 3.0 if dist == "normal" else 1.8
    # mean(w^2) has variance std^4 (kurtosis - 1) / n when E[w] = 0: a z-score that is N(0, 1) under the rule.
    z_var = (float((w**2).mean()) / std**2 - 1.0) / math.sqrt((kurtosis - 1.0) / n)
    z_mean = float(w.mean()) / (std / math.sqrt(n))
    problems = []
    if abs(z_var) > 5.5 or abs(z_mean) > 5.5:
        problems.append(f"{name}: {dist} std {std:.4g} expected, got {float(w.std()):.4g} (z {z_var:.1f})")
    bound = math.sqrt(3.0) * std  # the uniform's edge; a normal sample passes it 8.3% of the time
    beyond = float((w.abs() > bound * (1 + 1e-6)).double().mean())
    if dist == "uniform" and beyond > 0:
        problems.append(f"{name}: values beyond the uniform bound {bound:.4g}")
    if dist == "normal" and n >= 300 and not 0.04 < beyond < 0.13:
        problems.append(f"{name}: {beyond:.3f} of the values beyond {bound:.4g}, a normal has 0.083")
    return problems


def _init_problems(model: nn.Module, rules: tuple[str, str | None, str, str]) -> tuple[list[str], int]:
    """Problems of every initialised layer of ``model`` against ``rules``; how many tensors were checked."""
    conv_w, conv_b, lin_w, lin_b = rules
    problems: list[str] = []
    checked = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            problems += _check_tensor(f"{name}.weight", m.weight, conv_w, m, fan_in)
            problems += _check_tensor(f"{name}.bias", m.bias, conv_b, m, fan_in)
            checked += 2
        elif isinstance(m, nn.Linear):
            problems += _check_tensor(f"{name}.weight", m.weight, lin_w, m, m.in_features)
            problems += _check_tensor(f"{name}.bias", m.bias, lin_b, m, m.in_features)
            checked += 2
        elif isinstance(m, nn.BatchNorm2d):
            exact = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
            for key, value in exact.items():
                if not bool((getattr(m, key) == value).all()):
                    problems.append(f"{name}.{key}: not {value}")
            checked += 4
    return problems, checked


@pytest.mark.parametrize("name", sorted(OFFICIAL_INIT))
def test_initialisation_follows_the_official_file(name: str) -> None:
    torch.manual_seed(0)
    problems, checked = _init_problems(build_model(name), OFFICIAL_INIT[name])
    assert checked > 10
    assert not problems, "\n".join(problems)


def test_official_init_covers_every_family() -> None:
    families = {"resnet", "ResNet", "wrn", "vgg", "MobileNetV2", "ShuffleV1", "ShuffleV2"}
    cifar = [name for name in MODELS if model_info(name).dataset == "cifar100"]  # ImageNet: their own tests
    assert {next(f for f in families if name.startswith(f)) for name in cifar} == families
    assert {next(f for f in families if name.startswith(f)) for name in OFFICIAL_INIT} == families


def _he_init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@pytest.mark.parametrize(
    ("name", "tamper"),
    [
        ("ShuffleV1", _he_init),  # the rule the zoo used before
        ("ShuffleV2", _he_init),
        ("vgg8", lambda m: m.classifier.reset_parameters() or m),  # torch's default classifier
        ("MobileNetV2", lambda m: m.classifier[0].reset_parameters() or m),
        ("wrn_16_2", lambda m: m.fc.reset_parameters() or m),  # a uniform bias instead of zero
        ("resnet8", lambda m: [c.reset_parameters() for c in m.modules() if isinstance(c, nn.Conv2d)] and m),
    ],
    ids=[
        "ShuffleV1-he",
        "ShuffleV2-he",
        "vgg-default-fc",
        "mobilenet-default-fc",
        "wrn-fc-bias",
        "resnet-default",
    ],
)
def test_the_init_check_fails_for_the_wrong_rule(name: str, tamper) -> None:
    torch.manual_seed(0)
    problems, _ = _init_problems(tamper(build_model(name)), OFFICIAL_INIT[name])
    assert problems


def test_both_he_formulas_give_the_same_float32_std_for_every_conv_in_the_zoo() -> None:
    """resnet.py calls kaiming_normal_ (std sqrt(2) / sqrt(n)); the other files normal_(0, sqrt(2 / n)).
    normal_ draws with a float32 std, so one formula gives the other's weights."""
    sizes = {
        m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        for name in MODELS
        for m in build_model(name).modules()
        if isinstance(m, nn.Conv2d)
    }
    assert len(sizes) > 30
    for n in sizes:
        assert np.float32(math.sqrt(2.0) / math.sqrt(n)) == np.float32(math.sqrt(2.0 / n)), n
    n = 24  # fan-out of a 1x1 conv to 24 channels: the two doubles differ here, the draws do not
    assert math.sqrt(2.0) / math.sqrt(n) != math.sqrt(2.0 / n)
    a = torch.empty(24, 3, 1, 1)
    b = torch.empty(24, 3, 1, 1)
    torch.manual_seed(3)
    nn.init.kaiming_normal_(a, mode="fan_out", nonlinearity="relu")
    torch.manual_seed(3)
    nn.init.normal_(b, 0.0, math.sqrt(2.0 / n))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ WRN's second batch-norm pass

TWICE = ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1")  # what the official forward calls again


def _record_bn_inputs(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    calls: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(
                lambda mod, args, name=name: calls.setdefault(name, []).append(args[0].detach().clone())
            )
    return calls


def _one_training_step(model: nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (16,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    optimizer.step()
    return logits.detach()


def _running_stats_reference(inputs: torch.Tensor, updates: int, momentum: float = 0.1) -> tuple:
    """BatchNorm2d's running mean/var after ``updates`` training calls on the same batch, in float64:
    ``r <- (1 - m) r + m * batch statistic`` from (0, 1), the variance unbiased."""
    x = inputs.double()
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
    running_mean, running_var = torch.zeros_like(mean), torch.ones_like(var)
    for _ in range(updates):
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var
    return running_mean, running_var


@pytest.mark.parametrize("name", ["wrn_16_2", "wrn_40_1"])
@pytest.mark.parametrize("official", [True, False], ids=["official", "clean"])
def test_wrn_running_statistics_after_one_step(name: str, official: bool) -> None:
    torch.manual_seed(0)
    model = build_model(name, official_bn_updates=official).train()
    calls = _record_bn_inputs(model)
    _one_training_step(model)
    bns = dict((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert set(TWICE) <= set(bns) and len(bns) > len(TWICE)
    for bn_name, bn in bns.items():
        updates = 2 if official and bn_name in TWICE else 1
        assert len(calls[bn_name]) == updates, bn_name
        if updates == 2:  # the second pass sees exactly the features of the first
            assert torch.equal(calls[bn_name][0], calls[bn_name][1]), bn_name
        assert int(bn.num_batches_tracked) == updates, bn_name
        mean, var = _running_stats_reference(calls[bn_name][0], updates)
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6, msg=bn_name)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6, msg=bn_name)


def test_wrn_bn_switch_leaves_the_logits_and_gradients_alone() -> None:
    models = []
    for official in (True, False):
        torch.manual_seed(0)
        models.append(build_model("wrn_16_2", official_bn_updates=official).train())
    logits = [_one_training_step(m) for m in models]
    assert torch.equal(logits[0], logits[1])
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.equal(a, b), name  # same gradients, so the same step
    stats = [m.bn1.running_mean for m in models]
    assert not torch.allclose(stats[0], stats[1])  # the switch does change the statistics


def test_wrn_in_eval_mode_runs_each_batch_norm_once_and_moves_nothing() -> None:
    torch.manual_seed(0)
    model = build_model("wrn_16_2").eval()
    calls = _record_bn_inputs(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert all(len(v) == 1 for v in calls.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_build_model_passes_constructor_options() -> None:
    assert build_model("wrn_40_1").official_bn_updates is True
    assert build_model("wrn_40_1", official_bn_updates=False).official_bn_updates is False
    with pytest.raises(ValueError, match=r"model 'resnet8' takes no option 'official_bn_updates'"):
        build_model("resnet8", official_bn_updates=False)
    with pytest.raises(TypeError, match="official_bn_updates must be a bool"):
        build_model("wrn_16_1", official_bn_updates="no")


# --------------------------------------------------------------------------- pooling before the classifier


def _relu(t: torch.Tensor) -> torch.Tensor:
    return F.relu(t)


# name -> (module whose output is pooled, what the official forward does to that output before the
# classifier), from the official forwards.
OFFICIAL_HEADS = {
    "resnet8": ("layer3", lambda f: nn.AvgPool2d(8)(f).reshape(f.shape[0], -1)),
    "resnet32x4": ("layer3", lambda f: nn.AvgPool2d(8)(f).reshape(f.shape[0], -1)),
    "ResNet18": ("layer4", lambda f: nn.AdaptiveAvgPool2d((1, 1))(f).reshape(f.shape[0], -1)),
    "wrn_16_2": ("bn1", lambda f: F.avg_pool2d(_relu(f), 8).reshape(f.shape[0], -1)),
    "vgg8": ("block4", lambda f: nn.AdaptiveAvgPool2d((1, 1))(_relu(f)).reshape(f.shape[0], -1)),
    "MobileNetV2": ("conv2", lambda f: nn.AvgPool2d(2, ceil_mode=True)(f).reshape(f.shape[0], -1)),
    "ShuffleV1": ("layer3", lambda f: F.avg_pool2d(f, 4).reshape(f.shape[0], -1)),
    "ShuffleV2": ("bn2", lambda f: F.avg_pool2d(_relu(f), 4).reshape(f.shape[0], -1)),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_HEADS))
def test_classifier_input_is_the_official_pooling_bit_for_bit(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    feature_name, official = OFFICIAL_HEADS[name]
    seen: dict[str, torch.Tensor] = {}
    dict(model.named_modules())[feature_name].register_forward_hook(
        lambda m, a, out: seen.update(f=out.clone())
    )
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    classifier.register_forward_pre_hook(lambda m, args: seen.update(pooled=args[0].clone()))
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    assert torch.equal(seen["pooled"], official(seen["f"]))


def test_window_pooling_and_mean_differ_in_the_last_bit() -> None:
    """Why the pooling op matters: the same average, summed in another order."""
    f = torch.relu(torch.randn(64, 64, 8, 8, generator=torch.Generator().manual_seed(0)))
    window, mean = F.avg_pool2d(f, 8).flatten(1), f.mean(dim=(2, 3))
    torch.testing.assert_close(window, mean)
    assert (window != mean).float().mean() > 0.1
