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


def _gather_from(other_ranks):
    """A stand-in for all_gather_numpy: this rank's value first, then the given other ranks' steps."""
    return lambda mine: [mine] + [np.array([s], np.int64) for s in other_ranks]


def test_ranks_must_agree_on_the_resume_step(tmp_path):
    from src.engine.trainer import agreed_resume
    manager = CheckpointManager(str(tmp_path / "checkpoints"), keep_last=2)
    path = manager.save(6, {"w": np.ones(3, np.float32)}, {})
    auto = Config({"resume": "auto"})
    assert agreed_resume(auto, manager, _gather_from([6, 6])) == path
    with pytest.raises(UserError, match=r"the ranks disagree on where to resume \(rank 0: step 6, rank 1: no "
                                        r"checkpoint, rank 2: step 6\); every rank must see the same checkpoint "
                                        r"folder"):
        agreed_resume(auto, manager, _gather_from([0, 6]))
    empty = CheckpointManager(str(tmp_path / "elsewhere"), keep_last=2)  # rank 1's own, unshared folder
    with pytest.raises(UserError, match=r"rank 0: no checkpoint, rank 1: step 6"):
        agreed_resume(auto, empty, _gather_from([6]))
    assert agreed_resume(auto, empty, _gather_from([0])) is None


def test_a_rank_that_cannot_resolve_still_joins_the_gather(tmp_path):
    from src.engine.trainer import agreed_resume
    manager = CheckpointManager(str(tmp_path / "checkpoints"), keep_last=2)
    seen = []

    def gather(mine):
        seen.append(int(mine[0]))
        return [mine, np.array([6], np.int64)]
    with pytest.raises(UserError, match="does not exist"):
        agreed_resume(Config({"resume": str(tmp_path / "absent")}), manager, gather)
    assert seen == [-1]   # the other ranks are not left waiting in the collective
