"""Published CIFAR-100 and ImageNet top-1 accuracies (%) that reproductions are compared against.

Facts only, each number with where it was read. Nothing here is computed; a number that could not be
found in a source is ``None`` rather than guessed. The community protocol behind all of them: mean
over several runs of the best-epoch test accuracy, 240 epochs, the CRD/mdistiller teacher zoo.

Provenance, in short (the full list is in each :class:`Top1`'s ``source``):

- teacher and student-alone accuracies: the CRD benchmark table, which DKD, MLKD and SLD reuse;
- KD and DKD: the mdistiller README (DKD's official code);
- MLKD, and KD, DKD and MLKD + logit standardization: the Logit Standardization (CVPR 2024) README
  (its MLKD row repeats the MLKD paper's numbers; the MLKD and LS-MLKD runs behind them trained for
  480 epochs, see ``harness.recipes``);
- SLD: the project spec ``shared/spec/paper_results.md``, which quotes the SLD paper. The paper's
  tables themselves (arXiv:2504.20108) could not be read from here, so these five numbers are
  second-hand; the other seven pairs have no SLD number we could find.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where each kind of number was read. Kept as named constants so a reader can check one source once.
CRD_README = (
    "https://github.com/HobbitLong/RepDistiller/blob/master/README.md (Benchmark Results on CIFAR-100)"
)
MDISTILLER_README = "https://github.com/megvii-research/mdistiller/blob/master/README.md (DKD main results)"
LS_README = (
    "https://github.com/sunshangquan/logit-standardization-KD/blob/master/README.md (Results and Logs)"
)
SPEC_IMAGENET = (
    "shared/spec/paper_results.md (copied facts: the SLD paper's ImageNet table, KD/DKD/MLKD/LS-MLKD/SLD "
    "rows, and torchvision's teacher accuracies); not checked against the paper's own tables"
)
SPEC_SLD = (
    "shared/spec/paper_results.md, quoting arXiv:2504.20108 (https://arxiv.org/html/2504.20108v1); "
    "not checked against the paper's own tables"
)


@dataclass(frozen=True)
class Top1:
    """One published top-1 accuracy on the CIFAR-100 test set, in percent, with its source."""

    value: float
    source: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 100.0:
            raise ValueError(f"top-1 accuracy must be a percentage in [0, 100], got {self.value}")


@dataclass(frozen=True)
class PublishedResult:
    """The published numbers for one teacher -> student pair; ``None`` where no source gives one."""

    teacher_model: str  # model names as in tests/data/cifar_checkpoint_manifest.json
    student_model: str
    teacher_top1: Top1 | None  # the released teacher checkpoint, evaluated alone
    student_top1: Top1 | None  # the student architecture trained alone (no distillation)
    kd: Top1 | None  # Hinton KD, T=4, CE 0.1 / KD 0.9 (mdistiller's recipe)
    dkd: Top1 | None
    mlkd: Top1 | None
    ls_mlkd: Top1 | None  # MLKD + logit standardization
    sld: Top1 | None
    ls_kd: Top1 | None = None  # KD + logit standardization ("KD+Ours" of the LS README)
    ls_dkd: Top1 | None = None  # DKD + logit standardization ("DKD+Ours")

    def methods(self) -> dict[str, Top1 | None]:
        """The distillation results by method name, for tables and reports."""
        return {
            "KD": self.kd,
            "DKD": self.dkd,
            "MLKD": self.mlkd,
            "LS-MLKD": self.ls_mlkd,
            "SLD": self.sld,
            "LS-KD": self.ls_kd,
            "LS-DKD": self.ls_dkd,
        }


# Teachers as released in mdistiller's cifar_teachers.tar (the CRD zoo); source: CRD_README, the
# "Teacher" row of both tables.
TEACHER_TOP1: dict[str, float] = {
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "ResNet50": 79.34,
    "wrn_40_2": 75.61,
    "vgg13": 74.64,
}

# Students trained alone; source: CRD_README, the "Student" row of both tables.
STUDENT_TOP1: dict[str, float] = {
    "resnet20": 69.06,
    "resnet32": 71.14,
    "resnet8x4": 72.50,
    "wrn_16_2": 73.26,
    "wrn_40_1": 71.98,
    "vgg8": 70.36,
    "MobileNetV2": 64.60,
    "ShuffleV1": 70.50,
    "ShuffleV2": 71.82,
}


def _t(value: float | None, source: str) -> Top1 | None:
    return None if value is None else Top1(value, source)


def _result(
    teacher: str,
    student: str,
    *,
    kd: float | None,
    dkd: float | None,
    mlkd: float | None,
    ls_mlkd: float | None,
    sld: float | None,
    ls_kd: float | None = None,
    ls_dkd: float | None = None,
) -> PublishedResult:
    return PublishedResult(
        teacher_model=teacher,
        student_model=student,
        teacher_top1=_t(TEACHER_TOP1.get(teacher), CRD_README),
        student_top1=_t(STUDENT_TOP1.get(student), CRD_README),
        kd=_t(kd, MDISTILLER_README),  # the same KD numbers are in CRD_README
        dkd=_t(dkd, MDISTILLER_README),
        mlkd=_t(mlkd, LS_README),
        ls_mlkd=_t(ls_mlkd, LS_README),
        sld=_t(sld, SPEC_SLD),
        ls_kd=_t(ls_kd, LS_README),
        ls_dkd=_t(ls_dkd, LS_README),
    )


# Keyed by the pair names of harness.pairs.PAIRS. Notes on individual cells:
# - resnet32x4 -> ShuffleV2: the mdistiller README's second DKD table heads this column
#   "ResNet32x4 / MobileNet-V2", but its DOT table, the CRD table (KD 74.45) and the LS README all put
#   74.45 / 77.07 under ShuffleNet-V2, so they are recorded here.
# - wrn_40_2 -> wrn_16_2 DKD: mdistiller says 76.23, the LS README 76.24; mdistiller is DKD's own code.
# - MLKD for the two ShuffleV1 pairs and everything but teacher/student for wrn_40_2 -> vgg8 were not
#   found in any source read (the LS README has no ShuffleV1 column; CRD has ResNet50 -> vgg8 only).
CIFAR100_RESULTS: dict[str, PublishedResult] = {
    # teachers and students of the same family
    "resnet56-resnet20": _result(
        "resnet56",
        "resnet20",
        kd=70.66,
        dkd=71.97,
        mlkd=72.19,
        ls_mlkd=72.33,
        sld=None,
        ls_kd=71.43,
        ls_dkd=72.32,
    ),
    "resnet110-resnet32": _result(
        "resnet110",
        "resnet32",
        kd=73.08,
        dkd=74.11,
        mlkd=74.11,
        ls_mlkd=74.32,
        sld=74.57,
        ls_kd=74.17,
        ls_dkd=74.29,
    ),
    "resnet32x4-resnet8x4": _result(
        "resnet32x4",
        "resnet8x4",
        kd=73.33,
        dkd=76.32,
        mlkd=77.08,
        ls_mlkd=78.28,
        sld=77.69,
        ls_kd=76.62,
        ls_dkd=77.01,
    ),
    "wrn40_2-wrn16_2": _result(
        "wrn_40_2",
        "wrn_16_2",
        kd=74.92,
        dkd=76.23,
        mlkd=76.63,
        ls_mlkd=76.95,
        sld=77.19,
        ls_kd=76.11,
        ls_dkd=76.39,
    ),
    "wrn40_2-wrn40_1": _result(
        "wrn_40_2",
        "wrn_40_1",
        kd=73.54,
        dkd=74.81,
        mlkd=75.35,
        ls_mlkd=75.56,
        sld=None,
        ls_kd=74.37,
        ls_dkd=74.89,
    ),
    "vgg13-vgg8": _result(
        "vgg13", "vgg8", kd=72.98, dkd=74.68, mlkd=75.18, ls_mlkd=75.22, sld=None, ls_kd=74.36, ls_dkd=74.81
    ),
    # different families
    "resnet32x4-shufflenetv1": _result(
        "resnet32x4", "ShuffleV1", kd=74.07, dkd=76.45, mlkd=None, ls_mlkd=None, sld=None
    ),
    "resnet32x4-shufflenetv2": _result(
        "resnet32x4",
        "ShuffleV2",
        kd=74.45,
        dkd=77.07,
        mlkd=78.44,
        ls_mlkd=78.76,
        sld=78.82,
        ls_kd=75.56,
        ls_dkd=77.37,
    ),
    "wrn40_2-shufflenetv1": _result(
        "wrn_40_2", "ShuffleV1", kd=74.83, dkd=76.70, mlkd=None, ls_mlkd=None, sld=None
    ),
    "wrn40_2-vgg8": _result("wrn_40_2", "vgg8", kd=None, dkd=None, mlkd=None, ls_mlkd=None, sld=None),
    "vgg13-mobilenetv2": _result(
        "vgg13",
        "MobileNetV2",
        kd=67.37,
        dkd=69.71,
        mlkd=70.57,
        ls_mlkd=70.94,
        sld=None,
        ls_kd=68.61,
        ls_dkd=69.98,
    ),
    "resnet50-mobilenetv2": _result(
        "ResNet50",
        "MobileNetV2",
        kd=67.35,
        dkd=70.35,
        mlkd=71.04,
        ls_mlkd=71.19,
        sld=71.48,
        ls_kd=69.02,
        ls_dkd=70.45,
    ),
}


# The seed's two ImageNet rows (top-1 on the 50,000 validation images). The teachers are torchvision's
# published weights (the official code loads them with pretrained=True); no student-alone number is given.
IMAGENET_RESULTS: dict[str, PublishedResult] = {
    "resnet34-resnet18": PublishedResult(
        teacher_model="resnet34",
        student_model="resnet18",
        teacher_top1=Top1(73.31, SPEC_IMAGENET),
        student_top1=None,
        kd=Top1(71.03, SPEC_IMAGENET),
        dkd=Top1(71.70, SPEC_IMAGENET),
        mlkd=Top1(71.90, SPEC_IMAGENET),
        ls_mlkd=Top1(72.08, SPEC_IMAGENET),
        sld=Top1(72.15, SPEC_IMAGENET),
    ),
    "resnet50-mobilenetv1": PublishedResult(
        teacher_model="resnet50",
        student_model="mobilenet_v1",
        teacher_top1=Top1(76.13, SPEC_IMAGENET),
        student_top1=None,
        kd=Top1(70.50, SPEC_IMAGENET),
        dkd=Top1(72.05, SPEC_IMAGENET),
        mlkd=Top1(73.01, SPEC_IMAGENET),
        ls_mlkd=Top1(73.22, SPEC_IMAGENET),
        sld=Top1(73.27, SPEC_IMAGENET),
    ),
}
