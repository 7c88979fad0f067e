"""The pre-training validation evaluator: per-task mean loss over at most val_batches batches, score = -mean."""
import mindspore as ms
import numpy as np
import pytest

from src.errors import UserError
from src.evaluation.pretrain import validation_evaluator


class _Batches:
    def __init__(self, values):
        self.values = values

    def create_dict_iterator(self, num_epochs, output_numpy):
        return iter({"x": np.array([v], np.float32)} for v in self.values)


class _Loss:
    """A 'task' whose loss is twice its input."""
    input_names = ("x",)

    def __call__(self, x):
        return ms.Tensor(2 * x.asnumpy()[0])


def test_means_per_task_and_the_batch_limit():
    data = {"mlm": [1.0, 2.0, 3.0, 100.0], "itc": [5.0]}
    evaluate = validation_evaluator({"mlm": _Loss(), "itc": _Loss()}, lambda name: _Batches(data[name]), 3)
    metrics = evaluate(10)
    # mlm: 2 * mean(1, 2, 3) = 4 (the 4th batch is past val_batches); itc: 2 * 5 = 10
    assert metrics["val_loss/mlm"] == pytest.approx(4.0) and metrics["val_loss/itc"] == pytest.approx(10.0)
    assert metrics["val_loss"] == pytest.approx(7.0) and metrics["score"] == pytest.approx(-7.0)
    assert evaluate(20) == metrics   # the same batches every time


def test_no_full_batch_and_zero_batches_are_user_errors():
    with pytest.raises(UserError, match="holds no full batch for pre-training task 'mlm'"):
        validation_evaluator({"mlm": _Loss()}, lambda name: _Batches([]), 2)(1)
    with pytest.raises(UserError, match="val_batches must be >= 1"):
        validation_evaluator({"mlm": _Loss()}, lambda name: _Batches([1.0]), 0)
