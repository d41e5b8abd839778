"""The device-resident CIFAR batches: the same as the epoch loop's batching before
``DeviceResidentData`` existed (15189b9's ``_train_epoch`` / ``train_step`` data lines, written out
plainly here), and ``python -m harness.bench.resident``'s arguments and output (no timings asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness.bench import resident as bench  # noqa: E402
from harness.data.augment import strong_view, weak_view  # noqa: E402
from harness.data.resident import DeviceResidentData  # noqa: E402

from .train_helpers import one_thread, write_tiny_cifar  # noqa: E402, F401 (one_thread: autouse)


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _loop_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, views: int, seed: int, epochs: int
) -> list[tuple[torch.Tensor, ...]]:
    """15189b9's batching: per epoch one ``randperm`` from the run's generator, cut into batches (a
    last one of fewer than 2 rows dropped), each batch's views of the whole batch drawn weak first."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels).long()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for index in order.split(batch_size):
            if index.numel() < 2:
                continue
            batch = x[index]
            out.append((*(view(batch, generator) for view in (weak_view, strong_view)[:views]), y[index]))
    return out


@pytest.mark.parametrize("views", [1, 2])
def test_resident_batches_are_the_loops_batches_bit_for_bit(views: int) -> None:
    images, labels = _images(41)  # batches of 8: five full ones and a single row, which is dropped
    data = DeviceResidentData(
        images, labels, images[:4], labels[:4], num_classes=10, device=torch.device("cpu"),
        batch_size=8, views=views,
    )
    generator = torch.Generator().manual_seed(3)
    got = [(*b.views, b.labels) for epoch in (1, 2) for b in data.train_batches(epoch, generator=generator)]
    want = _loop_batches(images, labels, 8, views, seed=3, epochs=2)
    assert len(got) == len(want) == 10
    for step, (g, w) in enumerate(zip(got, want)):
        assert len(g) == len(w) == views + 1
        for a, b in zip(g, w):
            assert a.dtype == b.dtype and torch.equal(a, b), step


def test_two_ranks_together_get_the_one_process_batches() -> None:
    images, labels = _images(21)  # batches of 8, 8, 5: the last splits 3 / 2
    kwargs = dict(num_classes=10, device=torch.device("cpu"), batch_size=8, views=2)
    data = DeviceResidentData(images, labels, images[:2], labels[:2], **kwargs)
    whole = list(data.train_batches(1, generator=torch.Generator().manual_seed(1)))
    ranks = [
        list(data.train_batches(1, generator=torch.Generator().manual_seed(1), rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert [b.labels.shape[0] for b in ranks[0]] == [4, 4, 3]
    assert [b.global_rows for b in ranks[1]] == [8, 8, 5]
    for one, first, second in zip(whole, *ranks):
        for v in range(2):
            assert torch.equal(torch.cat([first.views[v], second.views[v]]), one.views[v])
        assert torch.equal(torch.cat([first.labels, second.labels]), one.labels)


def test_bench_prints_its_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_cifar(tmp_path / "data", n_train=130, n_test=2)
    out = tmp_path / "bench.json"
    (m,) = bench.main(["--data-dir", str(data), "--rounds", "1", "--epochs", "2", "--no-control",
                       "--json", str(out)])
    # 130 images in batches of 64: 64, 64 and a last batch of 2 rows, which is kept
    assert (m.config.form, m.batches, m.images, len(m.epoch_s)) == ("resident", 3, 130, 2)
    assert all(t > 0 for t in m.epoch_s) and len(m.digest) == 16
    assert m.rounds == 1 and m.round_medians() == [m.median_s]
    printed = capsys.readouterr().out
    assert "one epoch of 3 batches (130 images, batch 64, 2 view(s), augment full), 1 thread(s)" in printed
    assert printed.count("load average:") == 2 and m.digest in printed
    record = json.loads(out.read_text())
    assert [r["config"]["form"] for r in record["measurements"]] == ["resident"]
    assert record["measurements"][0]["digest"] == m.digest and "data_dir" not in record["args"]


def test_bench_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in [
        (["--baseline", str(tmp_path)], f"--baseline {tmp_path} is not a checkout of this project"),
        (["--images", "1"], "need --images >= 2, --batch-size >= 2 and --threads >= 1, got 1, 64 and 1"),
        (["--views", "3"], "argument --views: invalid choice: 3"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            bench.main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err, argv
