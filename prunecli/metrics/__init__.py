"""Measurements: MACs/params (ptflops), latency, per-layer widths and sparsity."""
