"""Metrics that need pretrained nets: FID and KID (Inception-v3 features; Heusel et al. 2017,
Binkowski et al. 2018) and LPIPS (Zhang et al. 2018), through torchmetrics.

Clusters are often offline, so the weights are always a file the user gives, never a download:
- Inception: torch-fidelity's `pt_inception-2015-12-05-6726825d.pth` (the TF-FID port every
  FID paper uses);
- LPIPS: the torchvision backbone (`alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth` or
  `squeezenet1_1-b8a52dc0.pth`); LPIPS's own linear layers ship with torchmetrics.
A weights file is read with `torch.load(weights_only=True)`, which runs no code from it (a
hostile pickle is refused), then handed to torchmetrics as plain tensors.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gan_dist.core.errors import GanDistError

if TYPE_CHECKING:
    import numpy as np

LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
INCEPTION_SIDE = 299  # px: the input Inception-v3 resizes every image to
LPIPS_TILE = 512  # px: `add_image` compares whole images in tiles of this side
LPIPS_BATCH = 4  # tiles per pass


class WeightsError(GanDistError):
    """A metrics weights file that is missing, unreadable or of the wrong net."""


@dataclass(frozen=True)
class PerceptualWeights:
    inception: Path | None = None
    lpips: Path | None = None
    lpips_net: str = "alex"

    def __post_init__(self) -> None:
        if self.lpips_net not in LPIPS_BACKBONES:
            raise WeightsError(
                f"LPIPS net {self.lpips_net!r}: use one of {', '.join(LPIPS_BACKBONES)}"
            )

    def __bool__(self) -> bool:
        return bool(self.inception or self.lpips)


def _tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise WeightsError(f"{path}: a folder, not a {what} weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: no such {what} weights file")
    try:
        with warnings.catch_warnings():  # torch's note on old pickles; the error says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: not a plain PyTorch weights file ({type(exc).__name__}); give the "
            f"{what} state dict saved with torch.save"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors for {what}")
    return state


class _FeaturesOnce(torch.nn.Module):
    """Inception-v3 run once for a batch that FID and KID both take: each metric calls its
    network on every update, so sharing the module alone still ran it twice an image. The
    last batch (held, so its identity cannot be reused) and its features are kept."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] is not images:
            self._last = (images, self.net(images))
        return self._last[1]


class PerceptualMetrics:
    """Accumulates (repaired, original) pairs and computes `fid`, `kid` (x1e3, the mean over
    subsets) and `lpips` (mean over images; lower is better for all three).

    add(pred, target): (B, C, H, W) in [0, 1], C = 1 or 3 (greyscale is repeated to RGB).
    add_image(pred, target): one whole image of any size (a folder's photo), as uint arrays.
    FID and KID compare the distribution of the repaired images with the originals', so they
    need a few hundred samples to mean much; LPIPS is per pair.
    Raises WeightsError for a bad weights file.
    """

    def __init__(self, weights: PerceptualWeights, device: torch.device | str = "cpu") -> None:
        self.fid = self.kid = self.lpips = None
        self.device = device
        self.samples = 0
        self.image_lpips: list[float] = []  # `add_image`'s per-image scores
        with tempfile.TemporaryDirectory(prefix="gan-dist-weights-") as tmp:
            if weights.inception:
                self._inception(weights.inception, Path(tmp))
            if weights.lpips:
                self._lpips(weights.lpips, weights.lpips_net, Path(tmp))

    def _inception(self, path: Path, tmp: Path) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise WeightsError(
                f"{path}: FID and KID need torch-fidelity: pip install 'gan-dist[metrics]'"
            )

        clean = tmp / "inception.pt"
        torch.save(_tensors(path, "Inception-v3 (torch-fidelity)"), clean)
        try:
            self.fid = FrechetInceptionDistance(
                feature=2048, feature_extractor_weights_path=str(clean)
            ).to(self.device)
        except RuntimeError as exc:  # load_state_dict: keys or shapes of another net
            raise WeightsError(f"{path}: not torch-fidelity's Inception-v3 weights") from exc
        self.fid.set_dtype(torch.float64)
        # KID reuses FID's network (one weights file), and each batch's features: see _update
        self.fid.inception = _FeaturesOnce(self.fid.inception)
        self.kid = KernelInceptionDistance(feature=self.fid.inception, subset_size=2).to(
            self.device
        )

    def _lpips(self, path: Path, net: str, tmp: Path) -> None:
        import torchvision
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        if net not in LPIPS_BACKBONES:
            raise WeightsError(f"LPIPS net {net!r}: use one of {', '.join(LPIPS_BACKBONES)}")
        arch = LPIPS_BACKBONES[net]
        weights_enum = torchvision.models.get_model_weights(arch).DEFAULT
        state = _tensors(path, f"torchvision {arch}")
        try:  # the right net? checked here, with a message, rather than deep in torchmetrics
            torchvision.models.get_model(arch).load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"{path}: not torchvision {arch} weights ({net} LPIPS)") from exc
        # torchvision finds the file in its hub cache under its published name and does not
        # download; that cache is pointed here only while the metric is built
        cached = tmp / "checkpoints" / Path(weights_enum.url).name
        cached.parent.mkdir(parents=True)
        torch.save(state, cached)
        before = torch.hub.get_dir()
        torch.hub.set_dir(str(tmp))
        try:
            self.lpips = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).to(
                self.device
            )
        finally:
            torch.hub.set_dir(before)

    def reset(self) -> None:
        self.samples = 0
        self.image_lpips = []
        for metric in (self.fid, self.kid, self.lpips):
            if metric is not None:
                metric.reset()

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape[1] == 1:
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        pred, target = pred.float().to(self.device), target.float().to(self.device)
        self.samples += len(pred)
        if self.fid is not None:
            fake8, real8 = ((t * 255).round().to(torch.uint8) for t in (pred, target))
            self._update(fake8, real8)
        if self.lpips is not None:
            self.lpips.update(pred, target)

    def add_image(self, pred: np.ndarray, target: np.ndarray) -> None:
        """One whole image of any size: pred (a repair) and target (its original), (H, W, C)
        uint8 or uint16, C = 1 or 3. FID and KID see both resized (antialiased, Lanczos) to
        Inception's 299 x 299 px input, the size Inception would resize them to anyway,
        without the antialiasing a photo's 10-20x reduction needs. LPIPS compares them at
        their own scale, in LPIPS_TILE px tiles (the last of a row or column shifted to end
        at the edge, as repair's tiles are), and the mean over the tiles is the image's
        score: one image, one sample, whatever its size."""
        import numpy as np

        from gan_dist.data.images import resize, to_bit_depth

        self.samples += 1
        if self.fid is not None:
            side = INCEPTION_SIDE
            small = [to_bit_depth(resize(x, side, side), 8) for x in (pred, target)]
            fake8, real8 = (_rgb(torch.from_numpy(np.array(x)))[None] for x in small)
            self._update(fake8.to(self.device), real8.to(self.device))
        if self.lpips is None:
            return
        top = float(np.iinfo(target.dtype).max)
        height, width = target.shape[:2]
        th, tw = min(LPIPS_TILE, height), min(LPIPS_TILE, width)
        corners = [(y, x) for y in _starts(height, th) for x in _starts(width, tw)]
        total = 0.0
        for i in range(0, len(corners), LPIPS_BATCH):
            chunk = corners[i : i + LPIPS_BATCH]
            fake, real = (
                torch.stack(
                    [
                        _rgb(torch.from_numpy(x[y : y + th, c : c + tw] / np.float32(top)))
                        for y, c in chunk
                    ]
                ).to(self.device)
                for x in (pred, target)
            )
            total += float(self.lpips(fake, real)) * len(chunk)  # this chunk's mean
        self.image_lpips.append(total / len(corners))

    def _update(self, fake8: torch.Tensor, real8: torch.Tensor) -> None:
        """FID and KID on one batch, (B, 3, H, W) uint8: each batch goes to both metrics in
        turn, so `_FeaturesOnce` runs Inception once for it."""
        for images, real in ((real8, True), (fake8, False)):
            self.fid.update(images, real=real)
            self.kid.update(images, real=real)

    def compute(self) -> dict[str, float]:
        """{} before any sample; FID/KID need at least two samples."""
        out: dict[str, float] = {}
        if self.fid is not None and self.samples >= 2:
            out["fid"] = float(self.fid.compute())
            self.kid.subset_size = min(1000, self.samples)
            kid_mean, _ = self.kid.compute()
            out["kid"] = 1e3 * float(kid_mean)
        if self.image_lpips:
            out["lpips"] = sum(self.image_lpips) / len(self.image_lpips)
        elif self.lpips is not None and self.samples:
            out["lpips"] = float(self.lpips.compute())
        return out


def _rgb(pixels: torch.Tensor) -> torch.Tensor:
    """(H, W, C) pixels, C = 1 or 3 -> (3, H, W), greyscale repeated."""
    return pixels.permute(2, 0, 1).expand(3, -1, -1)


def _starts(length: int, size: int) -> list[int]:
    """Tile offsets covering `length` with tiles of `size`, the last one ending at the edge."""
    starts = list(range(0, length - size, size))
    return [*starts, length - size]
