"""Fine-tuning: the weights a run starts from (`model.init`), checked against the recipe.
Where they are read from (a registered version, a run, a model folder) is the caller's
(`repair.model_file.initial_weights`): training never reads the model registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gan_dist.config.recipe import ModelConfig
from gan_dist.core.errors import GanDistError

if TYPE_CHECKING:
    import torch


@dataclass
class InitialWeights:
    """Where a fine-tuning run starts (`model.init`): the source's generator weights (EMA,
    as registered), its discriminator's when the source is a run or checkpoint, the
    source's model settings and channels to check against the recipe, and its lineage."""

    source: str
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] | None
    model: dict[str, Any]  # the source's `model` section, as spec.json holds it
    channels: int
    image_size: int  # px, the source's training crops
    parent: str | None  # models:/NAME/VERSION when the source is a registered version

    @property
    def tags(self) -> dict[str, str]:
        """The lineage, as run and model-version tags."""
        return {"init": self.source} | ({"parent": self.parent} if self.parent else {})

    def check_generator(self, model: ModelConfig, channels: int) -> None:
        """Raises GanDistError naming each generator setting (and the channels) in which the
        recipe differs from the source: weights only load into the same net."""
        from gan_dist.tracking.tracker import flatten

        ours = {
            "channels": str(channels),
            "noise": str(model.noise),
            **flatten(model.generator.model_dump(mode="json")),
        }
        theirs = {
            "channels": str(self.channels),
            "noise": str(self.model.get("noise", False)),
            **flatten(self.model["generator"]),
        }
        differ = [
            f"{key} {theirs.get(key)} (recipe: {ours.get(key)})"
            for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key)
        ]
        if differ:
            raise GanDistError(
                f"model.init {self.source}: its generator differs from the recipe's in "
                f"{', '.join(differ)}; set model.generator, model.noise and data.channels to "
                "match it"
            )

    def discriminator_fits(self, model: ModelConfig) -> bool:
        """Whether the source has a discriminator of the recipe's family and settings."""
        ours = model.discriminator.model_dump(mode="json")
        return self.discriminator is not None and self.model.get("discriminator") == ours
