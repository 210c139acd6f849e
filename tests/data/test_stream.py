from __future__ import annotations

import io
import itertools
import json
import logging
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_dist.config.recipe import resolve_damage
from gan_dist.core.errors import GanDistError
from gan_dist.data.images import write_png_atomic
from gan_dist.data.pack import PackOptions, pack_folder
from gan_dist.data.stream import StreamConfig, dihedral, make_stream, shard_urls
from support import gradient16


def keys_of(stream) -> list[str]:
    return [k for batch in stream for k in batch["key"]]


def test_finite_pass_yields_every_sample_once_as_normalised_tensors(packed):
    stream = make_stream(
        str(packed), StreamConfig(batch_size=3, channels=3, train=False), split="train"
    )
    batches = list(stream)
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == 16 == len(set(keys))
    assert [len(b["key"]) for b in batches][-1] == 1  # the last short batch is kept
    b = batches[0]
    assert b["damaged"].shape == (3, 3, 32, 32) and b["clean"].shape == (3, 3, 32, 32)
    assert b["mask"].shape == (3, 1, 32, 32) and b["damaged"].dtype == torch.float32
    assert b["clean"].min() >= -1 and b["clean"].max() <= 1 and b["clean"].min() < -0.5
    assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0} and b["mask"].sum() > 0
    holes = b["mask"].bool().expand_as(b["damaged"])
    assert torch.all(b["damaged"][holes] == -1.0)  # holes filled with 0 -> -1 in [-1, 1]
    assert stream.skipped == 0


def test_16bit_values_keep_their_precision(tmp_path):
    src = tmp_path / "src"
    arr = gradient16(32, 32, 1)
    write_png_atomic(src / "a.png", arr)
    write_png_atomic(src / "b.png", arr[::-1].copy())
    steps, label = resolve_damage("denoise")
    pack_folder(
        src,
        tmp_path / "out",
        PackOptions(size=32, crops_per_image=1, damage=steps, damage_source=label, val_fraction=0),
    )
    stream = make_stream(
        str(tmp_path / "out"), StreamConfig(2, channels=1, train=False), split="train"
    )
    clean = next(iter(stream))["clean"]
    expected = torch.from_numpy(arr[:, :, 0].astype(np.float32)) / 65535 * 2 - 1
    got = clean[0, 0] if torch.allclose(clean[0, 0], expected, atol=1e-6) else clean[1, 0]
    assert torch.allclose(got, expected, atol=1e-6)


def test_ranks_read_disjoint_shards_that_cover_the_split(packed, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = make_stream(str(packed), StreamConfig(4, channels=3, train=False), "train")
        seen.append(set(keys_of(stream)))
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 16


@pytest.mark.integration
def test_worker_processes_split_shards_without_repeats(packed):
    stream = make_stream(
        str(packed), StreamConfig(2, channels=3, train=False, workers=2), split="train"
    )
    keys = keys_of(stream)
    assert len(keys) == 16 == len(set(keys))


def test_training_stream_is_endless_and_reproducible(packed):
    def first_keys(seed: int) -> list[str]:
        stream = make_stream(
            str(packed), StreamConfig(4, channels=3, train=True, shuffle_buffer=8, seed=seed)
        )
        return [k for b in itertools.islice(iter(stream), 10) for k in b["key"]]

    a, b, c = first_keys(1), first_keys(1), first_keys(2)
    assert len(a) == 40 > 16  # more batches than one pass holds
    assert a == b and a != c


def test_wrong_channel_count_is_skipped_and_counted(packed, caplog):
    stream = make_stream(str(packed), StreamConfig(4, channels=1, train=False), "val")
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        assert keys_of(stream) == []
    assert stream.skipped == 8
    assert "val-000000.tar" in caplog.text and "3 channels" in caplog.text


def _copy_shards(packed: Path, dest: Path) -> list[Path]:
    dest.mkdir()
    manifest = json.loads((packed / "manifest.json").read_text())
    paths = []
    for shard in manifest["shards"]:
        if shard["split"] == "train":
            (dest / shard["name"]).write_bytes((packed / shard["name"]).read_bytes())
            paths.append(dest / shard["name"])
    return paths


def test_truncated_and_corrupt_shards_are_skipped_by_name(packed, tmp_path, caplog):
    shards = _copy_shards(packed, tmp_path / "s")
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(shards[1].read_bytes())) as src,
        tarfile.open(fileobj=buf, mode="w") as dst,
    ):
        for member in src.getmembers():
            payload = src.extractfile(member).read()
            if member.name.endswith("clean.png"):
                payload = payload[:40]  # a PNG cut short inside an intact tar
            member.size = len(payload)
            dst.addfile(member, io.BytesIO(payload))
    shards[1].write_bytes(buf.getvalue())

    pattern = str(tmp_path / "s" / "train-{000000..000003}.tar")
    stream = make_stream(pattern, StreamConfig(4, channels=3, train=False))
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        keys = keys_of(stream)
    assert 8 <= len(keys) < 16  # the two intact shards stream fully
    assert stream.skipped >= 5  # 4 corrupt samples + the truncation
    assert "train-000000.tar" in caplog.text and "train-000001.tar" in caplog.text


def test_missing_shards_are_reported_up_front(tmp_path):
    with pytest.raises(GanDistError, match="2 of the 2 shards it names do not exist"):
        shard_urls(str(tmp_path / "x-{0..1}.tar"))
    with pytest.raises(GanDistError, match="no manifest.json"):
        shard_urls(str(tmp_path))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.integration)])
def test_a_resumed_stream_continues_exactly(packed, workers):
    def stream(skip=None):
        cfg = StreamConfig(
            3, channels=3, train=True, workers=workers, shuffle_buffer=8, seed=5, skip=skip
        )
        return make_stream(str(packed), cfg)

    straight = [b["key"] for b in itertools.islice(iter(stream()), 14)]
    first = stream()
    it = iter(first)
    head = [next(it)["key"] for _ in range(6)]
    tail = [b["key"] for b in itertools.islice(iter(stream(first.position)), 8)]
    assert head + tail == straight


def test_prefilled_batches_give_the_generator_what_it_would_compute_itself(packed):
    """Training on a CPU takes the holes' prefill from the pack (16-bit, issue 25) or fills
    them in the data workers; the repair must not change beyond that rounding."""
    from gan_dist.config.recipe import ModelConfig
    from gan_dist.core.prefill import fill_holes
    from gan_dist.nets.build import build_generator

    config = StreamConfig(4, 3, train=False, workers=1, prefill="biharmonic")
    batch = next(iter(make_stream(str(packed), config, "train")))
    solved = fill_holes(batch["damaged"], 1 - batch["mask"])
    assert (batch["start"] - solved).abs().max() <= 1.5 / 65535
    G = build_generator(ModelConfig(), 3, 32).eval()
    torch.nn.init.normal_(list(G.body.parameters())[-2])  # a non-zero correction
    with torch.no_grad():
        given = G(batch["damaged"], batch["mask"], batch["start"])
        computed = G(batch["damaged"], batch["mask"])
    assert (given - computed).abs().max() < 1e-3  # a 16-bit level is 3e-5 of [-1, 1]
    assert not torch.equal(given, batch["start"])


def test_dihedral_gives_eight_views_of_a_square_and_keeps_a_rectangle_s_shape():
    square, wide = torch.arange(9.0).reshape(1, 3, 3), torch.arange(12.0).reshape(1, 3, 4)
    assert len({tuple(dihedral(square, t).flatten().tolist()) for t in range(8)}) == 8
    assert len({tuple(dihedral(wide, t).flatten().tolist()) for t in range(8)}) == 4
    assert {dihedral(wide, t).shape for t in range(8)} == {wide.shape}


def test_augmented_samples_turn_image_and_mask_together_and_resume_exactly(packed):
    def stream(augment: bool, skip=None):
        cfg = StreamConfig(4, 3, train=True, shuffle_buffer=8, seed=3, skip=skip, augment=augment)
        return make_stream(str(packed), cfg)

    plain = list(itertools.islice(iter(stream(False)), 10))
    turned = list(itertools.islice(iter(stream(True)), 10))
    turns = set()
    for p, a in zip(plain, turned, strict=True):
        assert p["key"] == a["key"]  # same samples in the same order, only turned
        for i in range(len(p["key"])):
            (turn,) = [
                t for t in range(8) if torch.equal(dihedral(p["clean"][i], t), a["clean"][i])
            ][:1]
            turns.add(turn)
            for part in ("damaged", "mask"):
                assert torch.equal(dihedral(p[part][i], turn), a[part][i])
    assert len(turns) >= 4

    first = stream(True)
    it = iter(first)
    head = [next(it) for _ in range(4)]
    tail = list(itertools.islice(iter(stream(True, first.position)), 6))
    for want, got in zip(turned, head + tail, strict=True):
        assert torch.equal(want["damaged"], got["damaged"])


@pytest.fixture(scope="module")
def one_shard(photo_dir, tmp_path_factory) -> Path:
    """A pack smaller than --shard-samples: ONE train shard (16 samples), one val shard."""
    out = tmp_path_factory.mktemp("one-shard")
    steps, label = resolve_damage("inpaint")
    options = PackOptions(
        size=32, crops_per_image=4, damage=steps, damage_source=label, val_fraction=0.34
    )
    pack_folder(photo_dir, out, options)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["split"] for s in manifest["shards"]] == ["train", "val"]
    return out


def rank_batches(
    shards: Path, rank: int, world: int, workers: int, n: int, shuffle: int
) -> list[list[str]]:
    cfg = StreamConfig(2, 3, train=True, workers=workers, shuffle_buffer=shuffle, seed=0)
    cfg.rank, cfg.world = rank, world
    stream = make_stream(str(shards), cfg)
    try:
        return [b["key"] for b in itertools.islice(iter(stream), n)]
    finally:
        stream.close()


@pytest.mark.integration
@pytest.mark.parametrize("pack", ["one_shard", "packed"])
def test_every_rank_and_worker_trains_on_its_own_samples(pack, request):
    """Finding 1: with one shard every rank got the same batches, and two workers repeated
    each other's; with several shards two workers drawing one shard still did."""
    shards = request.getfixturevalue(pack)
    # 2 ranks x 2 workers: 4 slots share 16 samples, 4 each: one pass = 4 batches of 2
    in_order = [rank_batches(shards, rank, 2, 2, 4, shuffle=0) for rank in (0, 1)]
    for batches in in_order:  # a pass hands out each of the rank's 8 samples once
        assert len({k for b in batches for k in b}) == 8
    shuffled = [rank_batches(shards, rank, 2, 2, 12, shuffle=4) for rank in (0, 1)]
    seen = [{k for b in batches for k in b} for batches in shuffled]
    assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]  # never shared
    for batches in shuffled:  # no batch arrives twice in a row (two workers in step)
        assert all(a != b for a, b in itertools.pairwise(batches))
    # the same slot layout gives the same sequence again: resume stays exact
    assert rank_batches(shards, 0, 2, 2, 12, shuffle=4) == shuffled[0]


def test_a_finite_pass_over_one_shard_sees_every_sample_once_across_ranks(one_shard):
    seen = []
    for rank in (0, 1):
        cfg = StreamConfig(3, 3, train=False)
        cfg.rank, cfg.world = rank, 2
        seen.append(keys_of(make_stream(str(one_shard), cfg, "train")))
    assert len(seen[0]) == len(seen[1]) == 8  # split by sample: both ranks get half
    assert len(set(seen[0]) | set(seen[1])) == 16


def test_repeated_failures_of_one_shard_are_logged_once_a_minute(caplog):
    from gan_dist.data.stream import _SkipLog

    skips = _SkipLog()
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        for i in range(1000):
            skips(ValueError(f"sample {i}: truncated", "s/train-000000.tar"))
            skips(FileNotFoundError("No such file", "s/train-000001.tar"))
    assert skips.count == 2000
    assert len(caplog.records) == 2  # one line per shard, not 2000
    assert "train-000001.tar" in skips.last_error


def test_a_stream_with_nothing_to_read_stops_with_the_shards_and_last_error(packed, tmp_path):
    """Finding 2: a source that yields nothing made the resampled stream spin for ever."""
    from gan_dist.data.stream import DataStalled

    shards = _copy_shards(packed, tmp_path / "s")
    cfg = StreamConfig(4, 3, train=True, stall_timeout_s=1.0)
    stream = make_stream(str(tmp_path / "s" / "train-{000000..000003}.tar"), cfg)
    for shard in shards:
        shard.unlink()  # a scratch purge after the run started
    started = time.monotonic()
    with pytest.raises(
        DataStalled, match=r"no training sample .*train-00000\d\.tar: .*No such file"
    ):
        next(iter(stream))
    assert time.monotonic() - started < 20


def test_a_small_healthy_pack_behind_a_large_shuffle_buffer_is_not_a_stall(photo_dir, tmp_path):
    """Found by trying: a slot whose few samples wait in the shuffle buffer counted its
    rounds as failed, slept through back-offs and was declared stalled."""
    steps, label = resolve_damage("inpaint")
    options = PackOptions(size=32, crops_per_image=1, damage=steps, damage_source=label)
    (tmp_path / "src").mkdir()
    shutil.copy(photo_dir / "astronaut.png", tmp_path / "src")
    pack_folder(tmp_path / "src", tmp_path / "one", options)
    cfg = StreamConfig(2, 3, train=True, shuffle_buffer=64, stall_timeout_s=0.5)
    started = time.monotonic()
    batches = list(itertools.islice(iter(make_stream(str(tmp_path / "one"), cfg)), 3))
    assert [len(b["key"]) for b in batches] == [2, 2, 2]
    assert time.monotonic() - started < 5  # no back-off sleeps on healthy data


@pytest.mark.integration
def test_a_read_that_blocks_for_ever_is_bounded(tmp_path):
    """Found by trying: a data worker blocked inside a read (a hung mount; here a pipe that
    never ends) reached no liveness check and the run waited for ever."""
    from gan_dist.data.stream import DataStalled

    cfg = StreamConfig(2, 3, train=True, workers=1, stall_timeout_s=2, allow_shell=True)
    stream = make_stream("pipe:sleep 617", cfg)
    started = time.monotonic()
    try:
        with pytest.raises(DataStalled, match=r"no batch came from the data workers for 4 s"):
            next(iter(stream))
    finally:
        stream.close()
    assert time.monotonic() - started < 30
    import psutil

    assert not [p for p in psutil.process_iter(["cmdline"]) if "617" in (p.info["cmdline"] or [])]


def test_fresh_damage_draws_new_masks_each_pass_and_resumes_exactly(packed):
    """data.fresh_damage: every read of a sample gets a new mask from the recipe's damage,
    holes hold the fill value, the clean image is the packed one, and a resumed stream
    draws the same masks again (they follow the sample's place in the stream)."""
    steps, _ = resolve_damage("inpaint-boxes")

    def stream(skip=None):
        cfg = StreamConfig(
            2, 3, train=True, shuffle_buffer=0, seed=3, skip=skip, fresh_damage=steps
        )
        return make_stream(str(packed), cfg)

    packed_batch = next(
        iter(make_stream(str(packed), StreamConfig(2, 3, shuffle_buffer=0, seed=3)))
    )
    first = stream()
    batches = list(itertools.islice(iter(first), 10))  # 20 of the 16 samples
    assert torch.equal(batches[0]["clean"], packed_batch["clean"])
    assert not torch.equal(batches[0]["mask"], packed_batch["mask"])
    for b in batches:
        hole = b["mask"].expand_as(b["clean"]) > 0
        assert hole.any() and (b["damaged"][hole] == -1).all()
        assert torch.equal(b["damaged"][~hole], b["clean"][~hole])
    # the same sample met again later gets another mask
    keys = [k for b in batches for k in b["key"]]
    masks = [m for b in batches for m in b["mask"]]
    repeats = [(i, j) for i in range(len(keys)) for j in range(i) if keys[i] == keys[j]]
    assert repeats and all(not torch.equal(masks[i], masks[j]) for i, j in repeats)
    part = stream()
    head = iter(part)
    next(head), next(head)
    resumed = list(itertools.islice(iter(stream(part.position)), 4))
    for a, b in zip(batches[2:6], resumed, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["mask"], b["mask"])
    # validation keeps the packed damage
    fresh_val = StreamConfig(2, 3, train=False, fresh_damage=steps)
    plain_val = StreamConfig(2, 3, train=False)
    assert torch.equal(
        next(iter(make_stream(str(packed), fresh_val)))["mask"],
        next(iter(make_stream(str(packed), plain_val)))["mask"],
    )
