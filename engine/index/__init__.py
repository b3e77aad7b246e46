"""Index and query: the catalog's codes in k-d block order with zone maps, and the queries over them.

:mod:`~engine.index.layout` orders rows into blocks and computes zone maps;
:mod:`~engine.index.build` sorts and writes a catalog's index; :mod:`~engine.index.scan` and
:mod:`~engine.index.knn` are the numba kernels (box pruning and scanning, exact top-k);
:mod:`~engine.index.query` selects a box set's rows from a :class:`~engine.index.query.BlockIndex`;
:mod:`~engine.index.snapshot` holds one loaded state of a catalog; :mod:`~engine.index.search`
answers ``Catalog.select``, ``refine`` and ``search`` over it. This package imports the storage
layer (:mod:`engine.store`), the learners (:mod:`engine.learn`), the codes' head and quantizer and
the query-image decoder, never the catalog or the web app.
"""
