"""``hypersteer train`` for subprocess tests: ``python tests/run_train_stage.py ARGS`` (or under
``torchrun``) runs :func:`axbench_hypersteer.stages.train_stage.main` with one intra-op thread,
so that CPU results are bit-reproducible across processes.

With ``HYPERSTEER_TEST_RANK_DIR`` set, every rank also writes its own trained hypernetwork to
``$HYPERSTEER_TEST_RANK_DIR/{Method}.rank{r}.safetensors`` (only rank 0 saves in the package),
so a test can check that DDP kept the ranks in sync.
"""

import os
import sys

import torch

torch.set_num_threads(1)

from axbench_hypersteer.model.fileio import save_tensors  # noqa: E402
from axbench_hypersteer.stages import train_stage  # noqa: E402

rank_dir = os.environ.get("HYPERSTEER_TEST_RANK_DIR")
if rank_dir:
    original_train = train_stage.Trainer.train

    def train_and_dump(self, *args, **kwargs):
        result = original_train(self, *args, **kwargs)
        name = self.out_dir.name
        save_tensors(os.path.join(rank_dir, f"{name}.rank{self.dist.rank}.safetensors"),
                     self.model.hypernet.state_dict())
        return result

    train_stage.Trainer.train = train_and_dump

if __name__ == "__main__":
    raise SystemExit(train_stage.main(sys.argv[1:]))
