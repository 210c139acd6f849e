"""FID, KID and LPIPS from weights files the user gives: computed, never downloaded, and a
hostile or wrong file refused with a message."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from gan_dist.metrics.perceptual import PerceptualMetrics, PerceptualWeights, WeightsError


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> PerceptualWeights:
    """Randomly initialised nets of the right architectures: the plumbing is what is tested
    (pretrained files cannot be fetched here, and a test must not download)."""
    import torchvision
    from torch_fidelity import feature_extractor_inceptionv3 as fx

    folder = tmp_path_factory.mktemp("weights")
    real_load = fx.FeatureExtractorInceptionV3.load_state_dict
    fx.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    fetch = fx.load_state_dict_from_url
    fx.load_state_dict_from_url = lambda *args, **kwargs: {}
    try:  # torch-fidelity only builds its net with weights; these are the random init's
        inception = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fx.FeatureExtractorInceptionV3.load_state_dict = real_load
        fx.load_state_dict_from_url = fetch
    torch.save(inception.state_dict(), folder / "inception.pth")
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), folder / "squeeze.pth")
    return PerceptualWeights(folder / "inception.pth", folder / "squeeze.pth", "squeeze")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_metrics_from_given_files_without_a_download(weights):
    torch.manual_seed(1)
    images = torch.rand(4, 3, 48, 48)
    same = PerceptualMetrics(weights)
    same.add(images, images)
    scores = same.compute()
    assert set(scores) == {"fid", "kid", "lpips"}
    assert scores["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert abs(scores["fid"]) < 1e-3 and abs(scores["kid"]) < 1e-3
    other = PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="squeeze"))
    other.add(images, torch.rand(4, 3, 48, 48))
    assert other.compute()["lpips"] > 0.01
    grey = PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="squeeze"))
    grey.add(images[:, :1], images[:, :1].flip(-1))  # greyscale is repeated to RGB
    assert set(grey.compute()) == {"lpips"}


def test_fid_and_kid_take_one_inception_pass_a_batch_and_score_as_before(weights, monkeypatch):
    """Each metric ran Inception itself on every batch (twice an image, the cost of eval).
    Now one pass serves both, and each metric holds what separate passes gave it."""
    from gan_dist.metrics import perceptual

    torch.manual_seed(2)
    real, fake = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    shared = PerceptualMetrics(PerceptualWeights(inception=weights.inception))
    net, calls = shared.fid.inception.net, []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: calls.append(len(x)) or forward(x))
    shared.add(fake, real)
    assert calls == [2, 2]  # the originals, then the repairs: once each
    monkeypatch.setattr(perceptual._FeaturesOnce, "forward", lambda self, x: self.net(x))
    separate = PerceptualMetrics(PerceptualWeights(inception=weights.inception))
    separate.add(fake, real)
    for a, b in ((shared.fid, separate.fid), (shared.kid, separate.kid)):  # what they sum
        for name in a._defaults:
            mine, theirs = getattr(a, name), getattr(b, name)
            if isinstance(mine, list):
                mine, theirs = torch.cat(mine), torch.cat(theirs)
            assert torch.equal(mine, theirs), name


def test_reset_starts_a_new_pass(weights):
    metrics = PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="squeeze"))
    metrics.add(torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32))
    metrics.reset()
    assert metrics.compute() == {}
    image = torch.rand(2, 3, 32, 32)
    metrics.add(image, image)
    assert metrics.compute()["lpips"] == pytest.approx(0.0, abs=1e-6)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_bad_weight_files_are_refused_with_the_file_named(weights, tmp_path):
    with pytest.raises(WeightsError, match="no such"):
        PerceptualMetrics(PerceptualWeights(inception=tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match=r"squeeze\.pth: not torch-fidelity's Inception"):
        PerceptualMetrics(PerceptualWeights(inception=weights.lpips))
    with pytest.raises(WeightsError, match="not torchvision alexnet"):
        PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="alex"))
    _Payload.target = str(tmp_path / "ran")
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(WeightsError, match="not a plain PyTorch weights file"):
        PerceptualMetrics(PerceptualWeights(lpips=hostile, lpips_net="squeeze"))
    assert not (tmp_path / "ran").exists()  # nothing in the file was run


def test_a_folder_or_an_unknown_lpips_net_is_named(tmp_path):
    with pytest.raises(WeightsError, match="a folder, not"):
        PerceptualMetrics(PerceptualWeights(lpips=tmp_path))
    with pytest.raises(WeightsError, match="LPIPS net 'bogus'"):
        PerceptualWeights(lpips_net="bogus")


def test_a_whole_image_is_one_sample_whatever_its_size(weights):
    """`gan-dist eval` on a folder: LPIPS at the image's own scale in tiles, FID/KID on
    Inception's input size; an image is one sample, a 16-bit one read in its own range."""
    import numpy as np

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 700, 3), dtype=np.uint8)  # 3 tiles of 512 px across
    same = PerceptualMetrics(weights)
    for image in (big, big[:, :300]):
        same.add_image(image, image)
    scores = same.compute()
    assert same.samples == 2 and set(scores) == {"fid", "kid", "lpips"}
    assert scores["lpips"] == pytest.approx(0.0, abs=1e-6) and abs(scores["fid"]) < 1e-3
    other = PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="squeeze"))
    other.add_image(big, big[::-1].copy())
    eight = other.compute()["lpips"]
    assert eight > 0.01
    deep = PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="squeeze"))
    deep.add_image(big.astype(np.uint16) * 257, big[::-1].astype(np.uint16) * 257)
    assert deep.compute()["lpips"] == pytest.approx(eight, abs=1e-5)
    grey = PerceptualMetrics(PerceptualWeights(lpips=weights.lpips, lpips_net="squeeze"))
    grey.add_image(big[:, :, :1], big[::-1, :, :1].copy())
    assert grey.compute()["lpips"] > 0.01
