"""OPT (Omni-Perception Pre-Trainer) for MindSpore 2.x."""
