"""OPT (Omni-Perception Pre-Trainer) for MindSpore 2.x."""
import os

# MindSpore's CPU convolutions (the image tokenizer, the audio encoder's stem) run on oneDNN. On an AVX-512 CPU
# (measured on a 2-core AMD EPYC, Zen 4) oneDNN picks a reference-speed kernel for their float32 NCHW layout: a
# 16x32x64x64 3x3 convolution took 2.6 s, and 28 ms with oneDNN capped at AVX2 (its GEMM kernel); matrix products are
# unaffected. oneDNN reads the cap when the first convolution runs, so setting it on import is early enough. Set
# ONEDNN_MAX_CPU_ISA yourself to choose another ISA.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
