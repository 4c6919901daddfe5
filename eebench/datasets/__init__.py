"""Dataset plugins: one module per family, each registering its datasets in
:data:`eebench.data.DATASETS` with :func:`eebench.data.register_dataset`. Every module here is
imported the first time a dataset name is looked up; adding a dataset is adding a module."""
