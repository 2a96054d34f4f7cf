"""HTTP service over the ONNX predictor: ``create_app`` / ``app_from_env`` in ``app``."""
