"""Pre-training validation: every task's mean loss on data.val, for the Trainer's evaluator hook.

The batches are those of epoch 0 of `data.val`, built by the training pipeline (same masking and matching rules), so
every evaluation of a run sees exactly the same masked batches and the losses are comparable from one evaluation to
the next. Each task runs its loss Cell forward only (in eval mode: no dropout). The score the Trainer keeps the best
model by is minus the mean of the task losses. Under data parallelism every rank evaluates its share of data.val and
the losses are averaged over all ranks' batches.
"""
import numpy as np

from src.engine.distributed import all_gather_numpy
from src.errors import UserError


def validation_evaluator(tasks, make_dataset, val_batches):
    """evaluator(step) -> {"score": -mean loss, "val_loss/<task>": mean loss, ...}.

    `tasks`: name -> loss Cell (with `input_names`); `make_dataset(name)`: that task's epoch-0 batches of data.val
    on this rank. At most `val_batches` batches per task.
    """
    if val_batches < 1:
        raise UserError(f"pretrain.val_batches must be >= 1 to validate, got {val_batches}")

    def evaluate(step):
        import mindspore as ms
        metrics = {}
        for name, task in tasks.items():
            total, count = 0.0, 0
            for batch in make_dataset(name).create_dict_iterator(num_epochs=1, output_numpy=True):
                if count == val_batches:
                    break
                total += float(task(*[ms.Tensor(batch[n]) for n in task.input_names]).asnumpy())
                count += 1
            total, count = (sum(x) for x in zip(*all_gather_numpy(np.array([total, count], np.float64))))
            if count == 0:
                raise UserError(f"data.val holds no full batch for pre-training task {name!r}; give more "
                                f"validation samples than train.batch_size or lower it")
            metrics[f"val_loss/{name}"] = total / count
        metrics["val_loss"] = float(np.mean(list(metrics.values())))
        return {"score": -metrics["val_loss"], **metrics}
    return evaluate
