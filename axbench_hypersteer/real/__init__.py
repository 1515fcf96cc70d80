"""``hypersteer real``: the paper's held-out experiment in miniature on a real pretrained
instruction LM (SmolLM2-135M-Instruct, CPU), with unsteered, prompting and DiffMean baselines in
the same table. Entry point: :func:`.run.run_real`."""
