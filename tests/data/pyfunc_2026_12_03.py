"""The registry's pyfunc entry point (MLflow "models from code"): MLflow runs this file when
someone calls `mlflow.pyfunc.load_model(uri)` or `mlflow models serve`. It only hands the
model's two files to gan-dist's own loader, which reads JSON and safetensors.

Input: a table with one row per image, the columns of `models.SIGNATURE`: `image`, the
bytes of an image file (PNG, JPEG, TIFF, BMP, WebP or DICOM), and `mask`, the bytes of its
mask file (white = hole; optional for a restoration model). Over REST the bytes are base64.
Output: a table with `image` (the repaired file's bytes, empty when the row failed),
`format` (its suffix), `status` and `detail`, as `gan-dist repair` reports each file. Each
row is repaired exactly as `gan-dist repair` repairs that file with the same settings
(params `format`, `tile`, `overlap`, `batch`, defaulting to the command's defaults).

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

        folder = Path(context.artifacts["spec"]).parent
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_files(folder, f"pyfunc model at {folder}", device)
        # the precision `gan-dist repair` picks by default, so both give the same pixels
        self.model = model.use_precision("auto")

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from gan_dist.repair_files import BATCH, OVERLAP, TILE, repair_bytes

        settings = params or {}
        rows = []
        for image, mask in zip(
            model_input["image"],
            model_input["mask"] if "mask" in model_input else [None] * len(model_input),
            strict=True,
        ):
            result, data = repair_bytes(
                self.model,
                bytes(image),
                bytes(mask) if isinstance(mask, bytes | bytearray) and mask else None,
                str(settings.get("format", "same")),
                int(settings.get("tile", TILE)),
                int(settings.get("overlap", OVERLAP)),
                int(settings.get("batch", BATCH)),
            )
            suffix = result.output.suffix if result.output is not None else ""
            rows.append(
                {"image": data, "format": suffix, "status": result.status, "detail": result.detail}
            )
        return pd.DataFrame(rows, columns=["image", "format", "status", "detail"])


mlflow.models.set_model(RepairPyfunc())
