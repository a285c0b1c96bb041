"""Models for onnxslim's tests and benchmarks: small built graphs and gathered real ones."""
