"""Dataset plugins: one module per family, each registering its datasets in
:data:`eebench.data.spec.DATASETS` with :func:`eebench.data.spec.register_dataset`. Every module here is
imported the first time a dataset name is looked up; adding a dataset is adding a module."""
