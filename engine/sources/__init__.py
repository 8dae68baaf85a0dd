"""Feature sources: what turns a batch of images into encoder features and decoder outputs.

`base.SourceBatch` is the contract everything downstream reads; the sources are SAM3
itself (`sam3/`), the simulated stand-in (`simulated`) and the feature cache (`cache`,
written by one run and read back by another). `factory.build_source` picks one for a run.
"""
