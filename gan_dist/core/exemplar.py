"""An exemplar fill of the holes: PatchMatch copies patches from the known part of the
same image (Barnes et al., "PatchMatch: a randomized correspondence algorithm for structural
image editing", SIGGRAPH 2009; the engine of Photoshop's Content-Aware Fill).

A smooth fill (`prefill.py`) is the conditional mean of the hole at best: a net trained from
it with a pixel loss learns a smudge. A copy of the image's own patches carries its texture
(grass, grain, noise) into the hole, at some cost in fidelity where the copy is wrong; the
generator then learns what a copy gets wrong (colour, seams, structure) instead of having to
synthesise texture. The search and the fill are `pypatchmatch`'s compiled code (InvokeAI's
wheel, MIT), run per image on 8-bit RGB: the fill of a 16-bit or float image is quantised to
1/255 of its range inside the holes (a first guess the generator corrects); its known pixels
are the input's own, exactly.

PatchMatch's search is randomised: every call starts from the same seed (`SEED`), so a fill
is a function of the image and its mask alone: a rerun, a resumed run and a tile of a large
repair (each group of holes is filled once on its whole box, see `repair.py`) all get the
same exemplars.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

PATCH_RADIUS = 3  # px: 7x7 patches, the pypatchmatch examples' size
SEED = 0
# pypatchmatch keeps its seed in the native library: one seed-and-fill at a time per process
_LOCK = threading.Lock()


@torch.no_grad()
def patchmatch_fill(
    image: torch.Tensor, known: torch.Tensor, patch_radius: int = PATCH_RADIUS
) -> torch.Tensor:
    """image (B, C, H, W) in [-1, 1] with C 1 or 3; known (B, 1, H, W), 1 where the pixel is
    kept. Returns image's dtype, device and shape with each unknown pixel copied, patch by
    patch, from the known part of its own image; known pixels are returned unchanged. An
    image with nothing known becomes 0 (mid-grey), one with nothing unknown is returned as it
    is. Deterministic. Raises ValueError for another number of channels."""
    if image.shape[1] not in (1, 3):
        raise ValueError(f"an exemplar fill takes 1 or 3 channels, not {image.shape[1]}")
    hole = known[:, 0] < 0.5
    if not bool(hole.any()):
        return image
    out = image.clone()
    pixels = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for i in range(len(image)):
        if not bool(hole[i].any()):
            continue
        if bool(hole[i].all()):
            out[i] = 0
            continue
        rgb = pixels[i].cpu().permute(1, 2, 0).expand(-1, -1, 3).contiguous().numpy()
        filled = _inpaint(rgb, hole[i].cpu().numpy(), patch_radius)
        fill = torch.from_numpy(filled).to(image.device).permute(2, 0, 1)[: image.shape[1]]
        fill = fill.to(image.dtype) / 127.5 - 1
        out[i] = torch.where(hole[i], fill, image[i])
    return out


def _inpaint(rgb: np.ndarray, hole: np.ndarray, patch_radius: int) -> np.ndarray:
    """(H, W, 3) uint8 with (H, W) bool holes -> (H, W, 3) uint8 filled."""
    from patchmatch import patch_match

    if not patch_match.patchmatch_available:
        raise RuntimeError(
            "pypatchmatch's native library did not load; reinstall it with "
            "`pip install --force-reinstall pypatchmatch`"
        )
    with _LOCK:
        patch_match.set_random_seed(SEED)
        return patch_match.inpaint(rgb, hole.astype(np.uint8) * 255, patch_size=patch_radius)
