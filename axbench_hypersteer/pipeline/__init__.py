"""The standalone pipeline on AxBench's file formats: data, splits, training, the factor sweep,
evaluation, the judge-free steering loss, the report and the demo. Builds on ``core`` and ``judge``."""
