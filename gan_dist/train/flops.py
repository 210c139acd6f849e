"""FLOPs of a recipe's training step, counted by PyTorch, for model-FLOP utilisation (MFU).

`torch.utils.flop_counter.FlopCounterMode` counts the matrix work (convolutions, matrix
products, and their backward passes) of one real `train_step`: the generator's forward and
backward, and the discriminator's forward and backward on real and repaired pairs and again
for the generator's loss. Elementwise work (norms, activations, the hole prefill) is not
counted, as in the MFU convention of PaLM (Chowdhery et al. 2022) and torchtitan.
"""

from __future__ import annotations

import torch

from gan_dist.config.recipe import Recipe

# Dense bf16 peak of common accelerators, FLOP/s (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H100 SXM": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H200": 989.4e12,
    "A100": 312.0e12,
}


def train_step_flops(recipe: Recipe, batch: int = 2) -> float:
    """FLOPs of one training step per image (generator update included) at the recipe's
    image size; measured on the CPU in fp32 (the count does not depend on precision).
    Needs no Accelerate state: the step runs through a plain single-process Accelerator."""
    from accelerate import Accelerator
    from torch.utils.flop_counter import FlopCounterMode

    from gan_dist.nets.build import build_discriminator, build_generator
    from gan_dist.train.builder import optimizer
    from gan_dist.train.step import Nets, train_step

    data = recipe.data
    accelerator = Accelerator(cpu=True)
    G = build_generator(recipe.model, data.channels, data.image_size)
    D = build_discriminator(recipe.model.discriminator, data.channels, data.image_size)
    nets = Nets(
        G, D, optimizer(G, recipe.optim.generator), optimizer(D, recipe.optim.discriminator)
    )
    s = data.image_size
    mask = (torch.rand(batch, 1, s, s) > 0.7).float()
    clean = torch.rand(batch, data.channels, s, s) * 2 - 1
    sample = {"damaged": clean * (1 - mask), "clean": clean, "mask": mask}
    with FlopCounterMode(display=False) as counter:
        train_step(sample, nets, recipe.objective, accelerator, update_g=True)
    return counter.get_total_flops() / batch
