"""Training the hypernetwork: the loop, its strategies (DDP, FSDP2), optimizers, checkpoints and
resume, length-bucketed batching, the frozen-prefix cache and the memory planner. Builds on
``model`` alone: it takes rows of (concept, instruction, answer), not AxBench files."""
