"""ITM negatives from the global batch: under 2-worker msrun data parallelism at batch 2 per rank, the matching loss
of every step (with audio: 5-way three-modal plus 2-way text-image) equals that of one process over the same 4
samples, and so do the parameters after the steps. The pairs of a step are drawn over the whole global batch (as one
process draws them) and each rank gathers every rank's images and audio to build its texts' pairs, so a text's
negative image or audio can come from the other rank. With per-rank negatives the drawn pairs, hence the losses,
would differ (and a per-rank batch of 2 could not even hold a three-modal negative).

The matching heads' gains stay frozen at their initial 0: the heads' `centre` is a running mean of each rank's own
batch (a per-rank batch statistic, like BatchNorm's), which reaches the loss and the gradients only through the gain,
so with the gain trained the parameters would part from the single process's after the first step for that reason
alone. The centres themselves are left out of the comparison."""
import pytest

from tests.distributed.test_itc_global import assert_msrun_is_one_process

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_itm_loss_is_the_global_batch_loss(tmp_path_factory, tmp_path):
    assert_msrun_is_one_process("itm", tmp_path_factory, tmp_path,
                                extra=["train.freeze=[pair_head.gain, itm_head.gain]"],
                                per_rank_buffers=["pair_head.centre_sum", "itm_head.centre_sum"])
