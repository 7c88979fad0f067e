"""Kernels of our own in C++ for what MindSpore runs slowly on CPU, built on first use (src.native.kernels)."""
