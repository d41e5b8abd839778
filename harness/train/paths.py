"""Where runs live. ``sld train-teacher`` writes a teacher to ``<runs>/teachers/<model>/`` and
``sld train`` looks there (then in mdistiller's ``download_ckpts/`` layout) when ``--teacher`` is not
given. Paths are relative to the working directory unless ``--runs-dir`` says otherwise."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEFAULT_RUNS_DIR",
    "MDISTILLER_CKPT_DIR",
    "TeacherNotFoundError",
    "find_teacher",
    "teacher_candidates",
    "teacher_run_dir",
]

DEFAULT_RUNS_DIR = "runs"
MDISTILLER_CKPT_DIR = "download_ckpts"  # where mdistiller's README untars cifar_teachers.tar
MDISTILLER_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


class TeacherNotFoundError(FileNotFoundError):
    """No checkpoint for the teacher; the message says which command makes one."""


def teacher_run_dir(model: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The run directory ``sld train-teacher --model MODEL`` writes to."""
    return Path(runs_dir) / "teachers" / model


def teacher_candidates(model: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[Path]:
    """Where a checkpoint for teacher ``model`` is looked for, in order: our own teacher run's
    ``best.pt``, then mdistiller's community file for that model (if any pair uses it as teacher)."""
    from harness.pairs import PAIRS

    candidates = [teacher_run_dir(model, runs_dir) / "best.pt"]
    for pair in PAIRS.values():
        if pair.teacher == model:
            candidates.append(pair.teacher_checkpoint_path(MDISTILLER_CKPT_DIR))
            break
    return candidates


def find_teacher(model: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The first existing teacher checkpoint of :func:`teacher_candidates`.

    Raises
    ------
    TeacherNotFoundError
        None exists; the message lists where it looked and the command that trains one.
    """
    candidates = teacher_candidates(model, runs_dir)
    for path in candidates:
        if path.is_file():
            return path
    runs_flag = "" if str(runs_dir) == DEFAULT_RUNS_DIR else f" --runs-dir {runs_dir}"
    looked = ", ".join(str(p) for p in candidates)
    raise TeacherNotFoundError(
        f"no checkpoint for teacher {model!r} (looked in: {looked}). Train one with:\n"
        f"    sld train-teacher --model {model}{runs_flag}\n"
        f"or untar mdistiller's cifar_teachers.tar ({MDISTILLER_TEACHERS_URL}) into {MDISTILLER_CKPT_DIR}/, "
        "or pass --teacher PATH"
    )
