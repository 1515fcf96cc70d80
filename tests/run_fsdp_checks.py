"""The 2-rank half of tests/test_fsdp.py, run once under ``torchrun --nproc_per_node=2``:
every check that needs a process group shares one (each torchrun start costs seconds).

    torchrun --standalone --nproc_per_node=2 tests/run_fsdp_checks.py BASE_DIR DATA_DIR TARGETS \
        CONFIG KILLED_DUMP OUT_DIR

1. short trainings of the same hypernetwork on the same data (fsdp_helpers.TRAININGS): losses,
   exported weights, per-rank parameter/gradient/optimizer bytes and whether the optimizer
   holds state for the token embedding table;
2. the uninterrupted FSDP run of CONFIG (``hypersteer train``'s code, under dump ``OUT_DIR/ref``)
   and the ``--resume`` of the run SIGKILLed in KILLED_DUMP.

Rank r writes ``OUT_DIR/rank{r}.json``; rank 0 also the exported weights of each training.
"""

import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from axbench_hypersteer.model.fileio import save_tensors  # noqa: E402
from axbench_hypersteer.model.loading import load_base  # noqa: E402
from axbench_hypersteer.stages.data import load_train_frame  # noqa: E402
from axbench_hypersteer.train.distributed import setup_distributed, teardown  # noqa: E402
from axbench_hypersteer.stages.run_config import load_run_config  # noqa: E402
from axbench_hypersteer.stages.train_stage import train_method  # noqa: E402
from axbench_hypersteer.train.trainer import Trainer  # noqa: E402

from fsdp_helpers import TRAININGS, fsdp_train_cfg, make_wide_hs  # noqa: E402


def main(base_dir, data_dir, targets, config, killed_dump, out_dir) -> None:
    out_dir = Path(out_dir)
    info = setup_distributed()
    model, tokenizer = load_base(base_dir)
    frame = load_train_frame(data_dir, max_num_of_examples=2, seed=0)
    report: dict = {}
    for name, overrides in TRAININGS.items():
        hs = make_wide_hs(model, tokenizer)
        trainer = Trainer(hs, frame, fsdp_train_cfg(targets, **overrides), out_dir / name, info,
                          progress=False)
        result = trainer.train()
        table = hs.hypernet.body.get_input_embeddings().weight
        report[name] = {"losses": result.losses, "memory": trainer.state_bytes(),
                        "table_in_optimizer": table in trainer.optimizer.state
                        or any(p is table for p in trainer.params)}
        weights = trainer.strategy.full_state_dict()
        if info.is_main:
            save_tensors(out_dir / f"{name}.safetensors", weights)

    run = load_run_config(config)
    spec = run.method()
    train_method(run, spec, data_dir, out_dir / "ref", progress=False)
    resumed = train_method(run, spec, data_dir, killed_dump, resume=True, progress=False)
    report["resumed_from"] = resumed.resumed_from
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(report))
    teardown(info)


if __name__ == "__main__":
    main(*sys.argv[1:])
