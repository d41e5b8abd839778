"""The streamed pipeline: global batches and rank shares, the same pixels for 0/1/2 workers and world sizes
1/2, evaluation covering every image once, restart from any step, and no use of global RNG state."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

from harness.data.cifar import DatasetError  # noqa: E402
from harness.data.folder import scan_imagenet  # noqa: E402
from harness.data.pil_augment import IMAGENET_MEAN, IMAGENET_STD, eval_view, load_rgb  # noqa: E402
from harness.data.pil_augment import strong_view as pil_strong  # noqa: E402
from harness.data.pil_augment import weak_view as pil_weak  # noqa: E402
from harness.data.streamed import (  # noqa: E402
    EpochBatchSampler,
    StreamedImageData,
    epoch_order,
    global_batches,
    normalize,
    rank_share,
    view_rng,
)
from harness.data.synthetic_images import write_image_folder  # noqa: E402

SIZE, RESIZE = 24, 28  # small crops keep the test fast; the recipe's 224/256 only scales the pixels
N_TRAIN, N_VAL = 3 * 7, 3 * 3
BATCH = 8  # 21 images: batches of 8, 8, 5 (kept for world 1 and 2; 5 >= 2 * 2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(root, num_classes=3, train_per_class=7, val_per_class=3, size=(40, 30), seed=1)
    return scan_imagenet(root)


def _data(folder, workers: int, **kwargs) -> StreamedImageData:
    options = dict(batch_size=BATCH, seed=5, image_size=SIZE, resize_size=RESIZE, eval_batch_size=4)
    return StreamedImageData(folder, num_workers=workers, **{**options, **kwargs})


def _epoch(data: StreamedImageData, epoch: int, rank: int = 0, world: int = 1, start_step: int = 0):
    return [
        ([v.clone() for v in views], labels.clone(), rows)
        for views, labels, rows in data.train_loader(epoch, rank, world, start_step=start_step)
    ]


def _assert_same_steps(a, b) -> None:
    assert len(a) == len(b)
    for (views_a, labels_a, rows_a), (views_b, labels_b, rows_b) in zip(a, b):
        assert rows_a == rows_b and torch.equal(labels_a, labels_b) and len(views_a) == len(views_b)
        for va, vb in zip(views_a, views_b):
            assert torch.equal(va, vb)


# -------------------------------------------------------------------------------------- order and shares


def test_global_batches_cut_the_seeded_permutation() -> None:
    order = epoch_order(21, seed=5, epoch=3)
    assert sorted(order.tolist()) == list(range(21))
    assert np.array_equal(order, epoch_order(21, 5, 3)) and not np.array_equal(order, epoch_order(21, 5, 4))
    batches = global_batches(21, 8, seed=5, epoch=3, world_size=2)
    assert [b.tolist() for b in batches] == [order[:8].tolist(), order[8:16].tolist(), order[16:].tolist()]
    assert len(global_batches(21, 8, 5, 3, world_size=3)) == 2  # 5 rows < 2 * 3: dropped
    assert len(global_batches(17, 8, 5, 3, world_size=1)) == 2  # 1 row < 2: dropped
    with pytest.raises(ValueError, match=r"batch_size \(3\) must be at least 2 \* world_size \(4\)"):
        global_batches(21, 3, 5, 3, world_size=2)


@pytest.mark.parametrize("rows", [5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_share_is_tensor_split(rows: int, world: int) -> None:
    batch = np.arange(100, 100 + rows)
    expected = [t.tolist() for t in torch.tensor_split(torch.from_numpy(batch), world)]
    assert [rank_share(batch, r, world).tolist() for r in range(world)] == expected


def test_sampler_yields_epoch_index_keys() -> None:
    sampler = EpochBatchSampler(21, 8, seed=5, rank=1, world_size=2)
    sampler.set_epoch(3, start_step=1)
    batches = global_batches(21, 8, 5, 3, world_size=2)
    assert list(sampler) == [[(3, int(i)) for i in rank_share(b, 1, 2)] for b in batches[1:]]
    assert len(sampler) == 2


def test_steps_per_epoch(folder) -> None:
    data = _data(folder, 0)
    assert data.steps_per_epoch(1) == data.steps_per_epoch(2) == 3 and data.steps_per_epoch(3) == 2
    assert (data.num_classes, data.classes, data.num_train, data.num_eval) == (
        3,
        ("n00000000", "n00000001", "n00000002"),
        N_TRAIN,
        N_VAL,
    )


# --------------------------------------------------------------------------------------- what comes out


def test_pixels_are_the_pil_views_of_each_image(folder) -> None:
    data = _data(folder, 0)
    steps = _epoch(data, epoch=2)
    order = np.concatenate(global_batches(N_TRAIN, BATCH, 5, 2))
    weak = torch.cat([views[0] for views, _, _ in steps])
    strong = torch.cat([views[1] for views, _, _ in steps])
    labels = torch.cat([labels for _, labels, _ in steps])
    assert (
        weak.dtype == torch.uint8 and weak.shape == (N_TRAIN, 3, SIZE, SIZE) and labels.dtype == torch.int64
    )
    for row, index in enumerate(order.tolist()):
        image = load_rgb(folder.train.path(index))
        expected_weak = pil_weak(image, view_rng(5, 2, index, 0), SIZE)
        expected_strong = pil_strong(image, view_rng(5, 2, index, 1), SIZE)
        assert np.array_equal(weak[row].numpy(), expected_weak)
        assert np.array_equal(strong[row].numpy(), expected_strong)
        assert int(labels[row]) == int(folder.train.labels[index])
    assert [rows for _, _, rows in steps] == [8, 8, 5]


def test_same_images_for_0_1_and_2_workers(folder) -> None:
    reference = None
    for workers in (0, 1, 2):
        with _data(folder, workers) as data:
            run = [_epoch(data, 1), _epoch(data, 2)]  # persistent workers across two epochs
        if reference is None:
            reference = run
            assert not torch.equal(run[0][0][0][0], run[1][0][0][0])  # epochs differ
        else:
            for a, b in zip(reference, run):
                _assert_same_steps(a, b)


def test_rank_shares_concatenate_to_the_global_batch(folder) -> None:
    data = _data(folder, 0)
    whole = _epoch(data, 4)
    shares = [_epoch(data, 4, rank, 2) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(whole)
    for step, (views, labels, rows) in enumerate(whole):
        parts = [shares[rank][step] for rank in range(2)]
        assert all(p[2] == rows for p in parts)  # every rank knows the global row count
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        for v in range(len(views)):
            assert torch.equal(torch.cat([p[0][v] for p in parts]), views[v])
        assert [p[1].shape[0] for p in parts] == [len(t) for t in torch.tensor_split(torch.arange(rows), 2)]


def test_starting_mid_epoch_continues_bit_identically(folder) -> None:
    with _data(folder, 1) as data:
        whole = _epoch(data, 6)
        _assert_same_steps(_epoch(data, 6, start_step=2), whole[2:])
    fresh = _data(folder, 0)  # a new process after a restart: nothing but (seed, epoch, step)
    _assert_same_steps(_epoch(fresh, 6, start_step=1), whole[1:])


def test_one_view(folder) -> None:
    steps = _epoch(_data(folder, 0, views=1), 1)
    assert all(len(views) == 1 for views, _, _ in steps)
    _assert_same_steps(
        steps, [([views[0]], labels, rows) for views, labels, rows in _epoch(_data(folder, 0), 1)]
    )


def test_global_rng_is_not_touched(folder) -> None:
    before = torch.get_rng_state()
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002
    with _data(folder, 1) as data:
        _epoch(data, 1)
        list(data.eval_loader())
    assert torch.equal(torch.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002


# ------------------------------------------------------------------------------------------- on a device


def test_train_batches_are_normalized_on_the_device(folder) -> None:
    data = _data(folder, 0)
    raw = _epoch(data, 3, rank=1, world=2)
    batches = list(data.train_batches(3, rank=1, world_size=2))
    assert len(batches) == len(raw)
    mean = np.array(IMAGENET_MEAN, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, dtype=np.float64).reshape(1, 3, 1, 1)
    for batch, (views, labels, rows) in zip(batches, raw):
        assert batch.global_rows == rows and torch.equal(batch.labels, labels)
        for got, x in zip(batch.views, views):
            assert got.dtype == torch.float32 and got.device.type == "cpu"
            expected = (x.numpy().astype(np.float64) / 255.0 - mean) / std
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_normalize_checks_its_input() -> None:
    with pytest.raises(ValueError, match=r"expected a uint8 \(N, 3, H, W\) batch, got torch.float32"):
        normalize(torch.zeros(1, 3, 2, 2))
    x = torch.full((2, 3, 1, 1), 255, dtype=torch.uint8)
    out = normalize(x)
    assert torch.equal(x, torch.full((2, 3, 1, 1), 255, dtype=torch.uint8))  # the input is left alone
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), expected, rtol=1e-6)


# -------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("world", [1, 2, 4])
def test_eval_shards_cover_every_image_once(folder, world: int) -> None:
    data = _data(folder, 0)
    indices = [data.eval_indices(rank, world) for rank in range(world)]
    assert sorted(np.concatenate(indices).tolist()) == list(range(N_VAL))
    images, labels = [], []
    for rank in range(world):
        for x, y in data.eval_loader("test", rank, world):
            assert x.shape[0] <= 4 and x.dtype == torch.uint8
            images.append(x)
            labels.append(y)
    images, labels = torch.cat(images), torch.cat(labels)
    assert labels.tolist() == folder.val.labels.tolist()
    for i in (0, N_VAL - 1):
        expected = eval_view(load_rgb(folder.val.path(i)), RESIZE, SIZE)
        assert np.array_equal(images[i].numpy(), expected)


def test_eval_batches_with_workers_match(folder) -> None:
    with _data(folder, 2) as data:
        got = list(data.eval_batches(rank=0, world_size=2))
    reference = list(_data(folder, 0).eval_batches(rank=0, world_size=2))
    assert [len(y) for _, y in got] == [len(y) for _, y in reference] == [4, 1]  # rank 0 of 2: images 0..4
    for (x, y), (rx, ry) in zip(got, reference):
        assert torch.equal(x, rx) and torch.equal(y, ry)


# ------------------------------------------------------------------------------------------------ errors


def test_an_unreadable_image_names_its_file(tmp_path: Path) -> None:
    root = write_image_folder(
        tmp_path / "bad", num_classes=2, train_per_class=2, val_per_class=1, size=(20, 16)
    )
    broken = root / "train" / "n00000001" / "n00000001_0.JPEG"
    broken.write_bytes(b"not a jpeg")
    data = StreamedImageData(scan_imagenet(root), batch_size=4, image_size=8, resize_size=8, num_workers=0)
    with pytest.raises(DatasetError, match=rf"cannot decode image {broken}.*UnidentifiedImageError"):
        list(data.train_loader(1))


def test_bad_settings_are_refused(folder) -> None:
    with pytest.raises(ValueError, match="image_size <= resize_size"):
        _data(folder, 0, image_size=32, resize_size=28)
    with pytest.raises(ValueError, match="views must be 1"):
        _data(folder, 0, views=3)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        _data(folder, 0, seed=-1)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, 2\)"):
        next(iter(_data(folder, 0).train_loader(1, rank=2, world_size=2)))
    assert os.cpu_count()  # the worker tests above ran real processes


# ------------------------------------------------------------------------------------- the loader benchmark


def test_throughput_reports_every_worker_count(folder, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.bench.loader import loader_throughput, main

    results = loader_throughput(folder, workers=(0, 1), images=8, batch_size=4, rounds=2, image_size=SIZE)
    assert [r.workers for r in results] == [0, 1]
    assert all(r.images == 8 and len(r.rounds) == 2 and r.images_per_s > 0 for r in results)

    main(["--workers", "0", "--images", "4", "--batch-size", "2", "--rounds", "1", "--jpeg-size", "40x30",
          "--image-size", str(SIZE)])  # fmt: skip
    out = capsys.readouterr().out
    assert "generated 40x30 JPEGs" in out and out.splitlines()[-1].split()[0] == "0"
