"""The data layer: what a dataset is (:mod:`~eebench.data.spec`), where its rows come from
(:mod:`~eebench.data.sources`), its four seeded splits (:mod:`~eebench.data.splits`), datasets derived
and cached from others (:mod:`~eebench.data.derived`), superpixel graphs (:mod:`~eebench.data.graphs`)
and the pipelines that turn rows into backbone inputs (:mod:`~eebench.data.pipelines`). It imports
only the core (``errors``, ``params``, ``registry``, ``paths``); the dataset plugins of
:mod:`eebench.datasets` and everything above build on it.
"""
