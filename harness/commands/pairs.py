"""``sld pairs``: the 12 CIFAR-100 pairs with each base method's learning rate and the published top-1,
and the two ImageNet pairs;
``sld pairs --pair P``: every named method's recipe for P (lr, epochs, views, loss settings) beside
its published number."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from harness.commands._common import user_errors
from harness.config import CEConfig, DKDConfig, KDConfig, MLKDConfig, SLDConfig, TrainConfig
from harness.method_names import NAMED_METHODS, processing_token
from harness.pairs import IMAGENET_PAIRS, PAIRS, get_pair
from harness.paper_results import Top1
from harness.recipes import pair_config

_MISSING = "–"  # no published number found; see harness/paper_results.py
# The published columns: header -> PublishedResult field.
_PUBLISHED = {
    "KD": "kd",
    "DKD": "dkd",
    "MLKD": "mlkd",
    "LS-MLKD": "ls_mlkd",
    "SLD": "sld",
    "LS-KD": "ls_kd",
    "LS-DKD": "ls_dkd",
}


def _fmt(top1: Top1 | None) -> str:
    return _MISSING if top1 is None else f"{top1.value:.2f}"


def _table(title: str) -> Table:
    # No vertical rules, so the table fits an 80-column terminal without cutting a number.
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def pairs(
    pair: Annotated[
        str | None, typer.Option("--pair", help="List every named method's recipe for this pair.")
    ] = None,
) -> None:
    """List the CIFAR-100 and ImageNet teacher -> student pairs: models, official recipes and published top-1
    (%); with --pair, every named method's recipe for that pair."""
    console = Console()
    with user_errors():
        if pair is not None:
            console.print(_method_table(get_pair(pair).name))
            console.print(
                "names: [ls-]base[@processing][+pt]; sld-X = X@swap+pt (README: methods and switches); "
                f"{_MISSING} = not published",
                markup=False,
            )
            return
    recipes = _table("CIFAR-100 pairs: official learning rate per base method, and its views")
    for header in ("pair", "teacher", "student"):
        recipes.add_column(header, no_wrap=True)
    for header, method in (("sld", "sld"), ("kd/dkd/ce", "kd"), ("mlkd", "mlkd")):
        # The views are part of the recipe: a kd-vs-sld comparison compares 1 view with 2.
        recipes.add_column(f"{header}\n{_views(PAIRS.values(), method)}", justify="right", no_wrap=True)
    published = _table("published top-1 (%)")
    published.add_column("pair", no_wrap=True)
    for header in _PUBLISHED:
        base = header.lower().removeprefix("ls-")
        published.add_column(f"{header}\n{_views(PAIRS.values(), base, short=True)}", justify="right",
                             no_wrap=True)
    for p in PAIRS.values():
        lrs = [pair_config(p.name, m).optim.lr for m in ("sld", "kd", "mlkd")]
        recipes.add_row(p.name, p.teacher, p.student, *(f"{lr:g}" for lr in lrs))
        published.add_row(p.name, *(_fmt(getattr(p.published, f)) for f in _PUBLISHED.values()))
    console.print(recipes)
    console.print(
        "240 epochs (mlkd: 480), batch 64, SGD momentum 0.9, wd 5e-4, lr x0.1 after 150/180/210; "
        "views: 2 = weak + strong (losses summed), 1 = weak only (--views overrides)"
    )
    console.print(published)
    console.print("1v / 2v: the method's recipe trains on 1 view (weak) / 2 views (weak + strong)")
    imagenet = _table("ImageNet pairs (official SLD configs; published top-1 %)")
    columns = {k: v for k, v in _PUBLISHED.items() if k not in ("LS-KD", "LS-DKD")}  # not published there
    for header in ("pair", "CE/KD"):  # the models: `sld pairs --pair P`, `sld models`
        imagenet.add_column(header, no_wrap=True)
    for header in columns:
        base = header.lower().removeprefix("ls-")
        imagenet.add_column(f"{header}\n{_views(IMAGENET_PAIRS.values(), base)}", justify="right",
                            no_wrap=True)
    for p in IMAGENET_PAIRS.values():
        weights = f"{p.recipe.ce_weight:g}/{p.recipe.kd_weight:g}"
        imagenet.add_row(p.name, weights,
                         *(_fmt(getattr(p.published, f)) for f in columns.values()))
    console.print(imagenet)
    console.print(
        "ImageNet: 100 epochs, batch 512, lr 0.2 x0.1 after 30/60/90, wd 1e-4; "
        "teachers: torchvision's published weights. gamma stays the official 150, so in 100 epochs the "
        "pseudo-teacher never switches on, as in the official runs; the paper recommends 30: "
        "sld train --pair resnet34-resnet18 --gamma 30"
    )
    console.print(f"{_MISSING} = not found in the sources listed in harness/paper_results.py")
    console.print("sld pairs --pair P: every named method's recipe for P")


def _views(pairs: Any, method: str, *, short: bool = False) -> str:
    """The views ``method``'s recipe trains with over ``pairs``: ``2 views`` (``1-2 views`` if they
    differ; ``short``: ``2v``)."""
    counts = sorted({pair_config(p.name, method).data.views for p in pairs})
    text = "-".join(str(c) for c in counts)
    if short:
        return f"{text}v"
    return f"{text} view{'' if counts == [1] else 's'}"


def _method_table(pair: str) -> Table:
    table = _table(f"{pair}: the named methods' recipes")
    for header in ("method", "base"):
        table.add_column(header, no_wrap=True)
    for header in ("lr", "epochs", "views"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("loss", overflow="fold")
    table.add_column("published", justify="right", no_wrap=True)
    published = get_pair(pair).published
    for name, named in NAMED_METHODS.items():
        config = pair_config(pair, name)
        number = _fmt(getattr(published, named.published)) if named.published else _MISSING
        table.add_row(
            name,
            config.method,
            f"{config.optim.lr:g}",
            str(config.optim.epochs),
            str(config.data.views),
            loss_summary(config),
            number,
        )
    return table


def loss_summary(config: TrainConfig) -> str:
    """The loss settings of ``config`` in a few words, e.g. ``T 4, CE 0.1, KD 0.9, swap, pt>150`` (the
    pseudo-teacher after epoch 150)."""
    loss: Any = config.loss
    if isinstance(loss, CEConfig):
        return "CE"
    if isinstance(loss, SLDConfig):
        temps = ",".join(f"{t:g}" for t in loss.temperatures)
        parts = [f"T {temps}", f"CE {loss.ce_weight:g}", f"KD {loss.kd_weight:g}"]
    elif isinstance(loss, KDConfig):
        parts = [f"T {loss.temperature:g}", f"CE {loss.ce_weight:g}", f"KD {loss.kd_weight:g}"]
    elif isinstance(loss, DKDConfig):
        parts = [
            f"T {loss.temperature:g}",
            f"CE {loss.ce_weight:g}",
            f"alpha {loss.alpha:g}",
            f"beta {loss.beta:g}",
            f"warm-up {loss.warmup_epochs}",
        ]
    elif isinstance(loss, MLKDConfig):
        parts = [
            f"T {','.join(f'{t:g}' for t in loss.temperatures)}",
            f"CE {loss.ce_weight:g}",
            f"KD {loss.kd_weight:g}",
        ]
    else:  # pragma: no cover - every method config is listed above
        return type(loss).__name__
    if loss.teacher_processing != "none":
        parts.append(processing_token(loss))
    if loss.pseudo_teacher:
        parts.append(f"pt>{loss.gamma:g}")
    if loss.logit_stand:
        parts.append("LS")
    return ", ".join(parts)
