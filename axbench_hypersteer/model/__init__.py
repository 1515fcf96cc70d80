"""The model: config, hypernetwork, steering intervention, HyperSteer, its loss, batch collation
and base-model loading. Imports torch, transformers, safetensors and yaml only: nothing of the
pipeline, the judge, AxBench or pandas (tests/test_layers.py checks), so the model can be used,
saved and loaded without the benchmark around it."""
