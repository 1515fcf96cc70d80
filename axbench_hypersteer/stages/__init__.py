"""The standalone pipeline on AxBench's file formats: data, splits, the run config, the stages
(train, the factor sweep, evaluate, the judge-free steering loss, plan), the report and plots.
Builds on ``model``, ``train`` and ``judge``."""
