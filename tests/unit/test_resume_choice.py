"""Which checkpoint `checkpoint.resume` picks, and the refusal to silently start over."""
import os

import numpy as np
import pytest

from src.config import Config
from src.weights.checkpoint import CheckpointManager
from src.engine.trainer import resolve_resume
from src.errors import UserError


def test_auto_resume_refuses_when_every_checkpoint_is_corrupt(tmp_path):
    manager = CheckpointManager(str(tmp_path / "checkpoints"), keep_last=2)
    auto = Config({"resume": "auto"})
    assert resolve_resume(auto, manager) is None                      # nothing yet: start from scratch
    path = manager.save(3, {"w": np.ones((64, 64), np.float32)}, {})
    assert resolve_resume(auto, manager) == path
    weights = os.path.join(path, "weights.ckpt")
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="every checkpoint .* is corrupt"):
        resolve_resume(auto, manager)
    assert resolve_resume(Config({"resume": None}), manager) is None
