"""Measurements a user runs on the host (``edgetl bench latency``, ``edgetl bench fewshot``): latency across
backends against torch and the machine's GEMM peak (``latency_*``, ``roofline``), and the few-shot protocol
on bundle features (``fewshot``). Device-side timing pieces live in the runtime (``edgetl_runtime.measure.timing``,
``op_profile``); this repository's acceptance targets live in ``benchmarks/targets``."""
