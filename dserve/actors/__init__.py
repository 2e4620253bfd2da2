"""What runs on Dask workers: the replica actor and dserve's worker plugin."""
