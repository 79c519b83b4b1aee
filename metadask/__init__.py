"""metadask: gene-grouped splice-site meta-models trained out of core on Dask."""

__version__ = "0.1.0"
