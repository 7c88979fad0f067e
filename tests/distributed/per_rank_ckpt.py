"""train_pretrain.py with `checkpoint.dir=BASE_<rank>` added: each msrun worker (rank from MS_NODE_ID) sees its own
checkpoint folder, as ranks on servers without shared storage do (for test_resume_msrun.py).

    OPT_TRAIN_CMD="python tests/distributed/per_rank_ckpt.py BASE" bash scripts/run_msrun.sh pretrain CONFIG ...
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from src.utils.cli import run_main
    from train_pretrain import main
    base, argv = sys.argv[1], sys.argv[2:]
    rank = os.environ.get("MS_NODE_ID", "scheduler")  # msrun also runs the script as its scheduler
    sys.exit(run_main(main, argv + [f"checkpoint.dir={base}_{rank}"]))
