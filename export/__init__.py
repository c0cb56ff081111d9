"""hetsearch.export — ONNX / TFLite / Core ML bundles, parity and compatibility checks, latency profiles."""
