"""Export of trained runs to ONNX / TensorRT and the Triton model repository."""
