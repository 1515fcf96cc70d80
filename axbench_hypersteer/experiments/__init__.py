"""The paper's experiments and analyses, one module and one command each.

    python -m axbench_hypersteer.experiments scaling   --config C --data_dir D --out_dir O ...
    python -m axbench_hypersteer.experiments ablations --config sweep_configs/ablations --data_dir D --out_dir O ...
    python -m axbench_hypersteer.experiments ablations --write-configs
    python -m axbench_hypersteer.experiments geometry  --config C --data_dir D --out_dir O ...
    python -m axbench_hypersteer.experiments attention --config C --data_dir D --out_dir O ...

| name        | paper                  | writes (under ``--out_dir``)                                     |
|-------------|------------------------|------------------------------------------------------------------|
| ``scaling``   | Fig. 2                 | ``scaling.{md,csv,png}``: held-out loss (and judge) vs #concepts  |
| ``ablations`` | Table 2                | ``ablations.{md,csv,png}``: held-in / held-out loss per ablation  |
| ``geometry``  | Fig. 4-6 (App. A.7.1)  | ``pca.png``, ``tsne.png``, ``cosine.png``, ``geometry.{md,csv}``  |
| ``attention`` | Fig. 9-12 (App. A.7.2) | ``attention.png``: cross-attention per layer and head            |

Every command runs on AxBench-format data with any base model: the tiny CPU model in tests, a
Gemma-2 on a GPU for the paper's numbers (``docs/RUNBOOK.md`` has the full-scale commands and costs).
Trained hypernetworks are ordinary dumps (``<run>/train/<Method>/``), so a re-run skips every run
that is already trained.
"""

EXPERIMENTS = {
    "scaling": "axbench_hypersteer.experiments.scaling",
    "ablations": "axbench_hypersteer.experiments.ablations",
    "geometry": "axbench_hypersteer.experiments.geometry",
    "attention": "axbench_hypersteer.experiments.attention",
}
