"""The registry's pyfunc entry point (MLflow "models from code"): MLflow runs this file when
someone calls `mlflow.pyfunc.load_model(uri)`. It only hands the model's two files to
gan-dist's own loader, which reads JSON and safetensors.

    model = mlflow.pyfunc.load_model("models:/quickstart-repair@champion")
    repaired = model.predict({"image": pixels, "mask": mask})   # HxWxC uint8/uint16, HxW

`predict` also takes a list of such dicts and then returns a list.
"""

from __future__ import annotations

from pathlib import Path

import mlflow


class RepairPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from gan_dist.models import load_files

        folder = Path(context.artifacts["spec"]).parent
        model = load_files(folder, f"pyfunc model at {folder}")
        # the precision `gan-dist repair` picks by default, so both give the same pixels
        self.model = model.use_precision("auto")

    def predict(self, context, model_input, params=None):  # no hints: MLflow would validate
        """Tiles of the spec's tile size; gan-dist repair lets you choose them."""
        from gan_dist.repair import repair_array

        items = model_input if isinstance(model_input, list) else [model_input]
        tile = int(self.model.spec["tile_size"])
        out = [repair_array(self.model, item["image"], item.get("mask"), tile) for item in items]
        return out if isinstance(model_input, list) else out[0]


mlflow.models.set_model(RepairPyfunc())
