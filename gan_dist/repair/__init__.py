"""Using a trained model: the model file and its safe loader, the MLflow model registry
(look-ups and publishing), tiled repair of images of any size, files in and out, serving,
the pyfunc entry point and `gan-dist eval` on files."""
