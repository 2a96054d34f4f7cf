"""Inference artifacts: one predictor over .onnx / .keras / SavedModel, export, INT8 quantisation."""
