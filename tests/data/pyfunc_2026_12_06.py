"""The registry's pyfunc entry point (MLflow "models from code"): MLflow runs this file when
someone calls `mlflow.pyfunc.load_model(uri)` or `mlflow models serve`. It only hands the
model's two files to gan-dist's own loader, which reads JSON and safetensors.

Input: a table with one row per image, the columns of `models.signature()`: `image`, the
bytes of an image file (PNG, JPEG, TIFF, BMP, WebP or DICOM), and `mask`, the bytes of its
mask file (white = hole; optional for a restoration model). Over REST the bytes are base64.
Output: a table with `image` (the repaired file's bytes, empty when the row failed),
`format` (its suffix), `status` and `detail`, as `gan-dist repair` reports each file. Each
row is repaired exactly as `gan-dist repair` repairs that file with the same settings
(params `format`, `tile`, `overlap`, `batch`, defaulting to the command's defaults). What
a cell may hold, and the time a served request may take: `gan_dist.serving`, which this
file hands each table to (so versions registered with this file get its later fixes).

    model = mlflow.pyfunc.load_model("models:/quickstart-repair@champion")
    out = model.predict(pd.DataFrame({"image": [photo_bytes], "mask": [mask_bytes]}))
    Path("fixed" + out["format"][0]).write_bytes(out["image"][0])
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd


class RepairPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from gan_dist.models import load_files
        from gan_dist.serving import RepairService

        folder = Path(context.artifacts["spec"]).parent
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_files(folder, f"pyfunc model at {folder}", device)
        # the precision `gan-dist repair` picks by default, so both give the same pixels
        self.service = RepairService(model.use_precision("auto"))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return self.service.predict(model_input, params)


mlflow.models.set_model(RepairPyfunc())
