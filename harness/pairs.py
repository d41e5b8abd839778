"""The teacher -> student pairs of the official SLD code, each with its training recipe: the 12 CIFAR-100
pairs and the two ImageNet pairs.

Which pairs: the twelve ``configs/cifar100/sld/*.yaml`` files of
https://github.com/StephenEkaputra/Swapped-Logit-Distillation (read at commit 9797b5f). Every value of
:class:`Recipe` is read from those configs, from ``mdistiller/engine/cfg.py`` (the defaults they do not
override) or from ``mdistiller/distillers/SLD.py`` (constants written into the loss) of the same repo;
the comment on each field says which. Across the twelve configs only the learning rate differs. The
ImageNet pairs come from ``configs/imagenet/{r34_r18,r50_mv2}/sld.yaml`` of the same repository.

    >>> from harness.pairs import get_pair
    >>> pair = get_pair("resnet32x4-resnet8x4")
    >>> pair.teacher, pair.student, pair.recipe.lr
    ('resnet32x4', 'resnet8x4', 0.025)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.paper_results import CIFAR100_RESULTS, IMAGENET_RESULTS, PublishedResult

if TYPE_CHECKING:
    from sld_core import SLDConfig

OFFICIAL_REPO = "https://github.com/StephenEkaputra/Swapped-Logit-Distillation"


@dataclass(frozen=True)
class Recipe:
    """How the official code trains one student (CIFAR-100). Defaults are the values all 12 configs share."""

    lr: float  # per pair: SOLVER.LR of the pair's SLD config (0.025, or 0.008-0.01 for small students)
    baseline_lr: float  # SOLVER.LR of mdistiller's KD/DKD config for the pair: to rerun the KD baseline
    epochs: int = 240  # SOLVER.EPOCHS in every SLD config; epochs count from 1 (trainer loops 1..240)
    batch_size: int = 64  # SOLVER.BATCH_SIZE; each step sees 64 images, twice (weak and strong view)
    test_batch_size: int = 64  # DATASET.TEST.BATCH_SIZE default in cfg.py; affects nothing but speed
    momentum: float = 0.9  # SOLVER.MOMENTUM, plain SGD (SOLVER.TYPE "SGD", no Nesterov)
    weight_decay: float = 5e-4  # SOLVER.WEIGHT_DECAY in the configs; cfg.py's default 1e-4 is overridden
    lr_decay_epochs: tuple[int, ...] = (150, 180, 210)  # SOLVER.LR_DECAY_STAGES: step decay points
    lr_decay_rate: float = 0.1  # SOLVER.LR_DECAY_RATE: lr multiplied by this at each stage
    ce_weight: float = 0.1  # cfg.KD.LOSS.CE_WEIGHT, which SLD.py reads; applied to the CE of each view
    kd_weight: float = 0.9  # cfg.KD.LOSS.KD_WEIGHT; applied to every temperature's KL term of each view
    temperatures: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)  # SLD.py: terms summed, each * T^2
    gamma: int = 150  # SLD.py: the pseudo-teacher (swapped student) term is on for epoch > gamma
    num_views: int = 2  # train_ours.py + AugTrainer: weak and strong (RandAugment) view, losses summed
    teacher_swap: bool = True  # SLD.py swaps the teacher's target and argmax logits before the KL
    detach_pseudo_teacher: bool = False  # SLD.py clones the student logits with grad: not detached

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.baseline_lr <= 0:
            raise ValueError(
                f"learning rates must be positive, got lr={self.lr}, baseline_lr={self.baseline_lr}"
            )
        if list(self.lr_decay_epochs) != sorted(self.lr_decay_epochs) or not all(
            0 < e <= self.epochs for e in self.lr_decay_epochs
        ):
            raise ValueError(
                f"lr_decay_epochs must be increasing and within 1..{self.epochs}, got {self.lr_decay_epochs}"
            )

    def sld_config(self) -> SLDConfig:
        """The loss settings of this recipe as a :class:`sld_core.SLDConfig`."""
        from sld_core import SLDConfig

        return SLDConfig(
            temperatures=self.temperatures,
            gamma=self.gamma,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            teacher_swap=self.teacher_swap,
            pseudo_teacher=True,
            detach_pseudo_teacher=self.detach_pseudo_teacher,
        )


@dataclass(frozen=True)
class Pair:
    """One teacher -> student pair: the models, the official recipe and the published numbers."""

    name: str  # CLI name, e.g. "wrn40_2-wrn16_2"
    teacher: str  # model names exactly as in tests/data/cifar_checkpoint_manifest.json
    student: str
    recipe: Recipe
    official_config: str  # the SLD config in OFFICIAL_REPO this pair's recipe was read from
    # CIFAR-100: the path inside mdistiller's cifar_teachers.tar (untarred into download_ckpts/);
    # ImageNet: torchvision's published weight file (harness.runs looks in torch's download cache).
    teacher_checkpoint: str
    published: PublishedResult
    dataset: str = "cifar100"  # "cifar100" or "imagenet" (harness.config.DATASETS)

    def teacher_checkpoint_path(self, root: str | Path) -> Path:
        """Where the teacher file lies once ``cifar_teachers.tar`` is extracted into ``root``.

        mdistiller extracts it into ``download_ckpts/``, giving e.g.
        ``download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth``.
        """
        return Path(root) / self.teacher_checkpoint


# CLI spellings of the model names that do not follow "lowercase, drop the underscore after the family".
_SHORT_NAMES = {"ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2"}

# mdistiller's KD and DKD configs use 0.05, and 0.01 for MobileNet/ShuffleNet students
# (configs/cifar100/kd.yaml, configs/cifar100/dkd/*.yaml of megvii-research/mdistiller).
_BASELINE_LR_SMALL_STUDENT = 0.01
_BASELINE_LR = 0.05


def _short(model: str) -> str:
    return _SHORT_NAMES.get(model, model.lower().replace("_", "", 1))


def _pair(teacher: str, student: str, *, lr: float, config: str) -> Pair:
    name = f"{_short(teacher)}-{_short(student)}"
    small_student = student.startswith(("MobileNet", "Shuffle"))
    return Pair(
        name=name,
        teacher=teacher,
        student=student,
        recipe=Recipe(lr=lr, baseline_lr=_BASELINE_LR_SMALL_STUDENT if small_student else _BASELINE_LR),
        official_config=f"configs/cifar100/sld/{config}.yaml",
        teacher_checkpoint=f"cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth",
        published=CIFAR100_RESULTS[name],
    )


PAIRS: dict[str, Pair] = {
    p.name: p
    for p in (
        # same family; SOLVER.LR 0.025 in each config
        _pair("resnet56", "resnet20", lr=0.025, config="res56_res20"),
        _pair("resnet110", "resnet32", lr=0.025, config="res110_res32"),
        _pair("resnet32x4", "resnet8x4", lr=0.025, config="res32x4_res8x4"),
        _pair("wrn_40_2", "wrn_16_2", lr=0.025, config="wrn40_2_wrn_16_2"),
        _pair("wrn_40_2", "wrn_40_1", lr=0.025, config="wrn40_2_wrn_40_1"),
        _pair("vgg13", "vgg8", lr=0.025, config="vgg13_vgg8"),
        # different families; the lr is each config's own
        _pair("resnet32x4", "ShuffleV1", lr=0.009, config="res32x4_shuv1"),
        _pair("resnet32x4", "ShuffleV2", lr=0.008, config="res32x4_shuv2"),
        _pair("wrn_40_2", "ShuffleV1", lr=0.01, config="wrn40_2_shuv1"),
        _pair("wrn_40_2", "vgg8", lr=0.025, config="wrn40_2_vgg8"),
        _pair("vgg13", "MobileNetV2", lr=0.008, config="vgg13_mv2"),
        _pair("ResNet50", "MobileNetV2", lr=0.008, config="res50_mv2"),
    )
}


# The official ImageNet runs (configs/imagenet/*/sld.yaml of OFFICIAL_REPO, SLD.py): batch 512, 100 epochs,
# lr 0.2 x0.1 after 30/60/90, wd 1e-4, 2 views, the CIFAR temperatures 1..6. gamma is hard-coded to 150 in
# SLD.py, so in a 100-epoch run the pseudo-teacher never switches on: the default keeps that (the official
# behaviour); the paper recommends gamma 30 (after the first lr decay): `sld train --pair P --gamma 30`.
_IMAGENET = {"lr": 0.2, "baseline_lr": 0.2, "epochs": 100, "batch_size": 512, "test_batch_size": 128,
             "weight_decay": 1e-4, "lr_decay_epochs": (30, 60, 90), "kd_weight": 0.5}


def _imagenet_pair(teacher: str, student: str, *, ce_weight: float, config: str, weights: str) -> Pair:
    name = f"{_short(teacher)}-{_short(student)}"
    return Pair(
        name=name,
        teacher=teacher,
        student=student,
        recipe=Recipe(ce_weight=ce_weight, **_IMAGENET),  # type: ignore[arg-type]
        official_config=f"configs/imagenet/{config}/sld.yaml",
        teacher_checkpoint=weights,
        published=IMAGENET_RESULTS[name],
        dataset="imagenet",
    )


# The official code's second ImageNet student is registered as "MobileNetV2" but defined as a MobileNet V1
# (a 3x3 stem and 13 depthwise-separable blocks): the seed's table, and this project, call it mobilenet_v1.
IMAGENET_PAIRS: dict[str, Pair] = {
    p.name: p
    for p in (
        _imagenet_pair(
            "resnet34", "resnet18", ce_weight=0.5, config="r34_r18", weights="resnet34-333f7ec4.pth"
        ),
        _imagenet_pair(
            "resnet50", "mobilenet_v1", ce_weight=1.0, config="r50_mv2", weights="resnet50-19c8e357.pth"
        ),
    )
}
# Every pair by name: what get_pair, the teacher lookup and reports know. PAIRS stays the CIFAR-100 table
# (`sld reproduce --pairs all` is that table: one data set, one --data-dir).
ALL_PAIRS: dict[str, Pair] = {**PAIRS, **IMAGENET_PAIRS}


def get_pair(name: str) -> Pair:
    """The pair called ``name`` (case-insensitive), e.g. ``"vgg13-mobilenetv2"``.

    Raises
    ------
    ValueError
        If there is no such pair; the message lists the valid names.
    TypeError
        If ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"pair name must be a str, got {type(name).__name__}")
    try:
        return ALL_PAIRS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown pair {name!r}; valid pairs: {', '.join(ALL_PAIRS)}") from None
