"""edgetl_exporters: ONNX export, quantization, TensorRT engines and bundle writing."""

__version__ = "0.1.0"
