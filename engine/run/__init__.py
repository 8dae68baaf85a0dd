"""Running the analysis over a dataset: plan, sweep, result store, run record, Dask shards, env report."""
