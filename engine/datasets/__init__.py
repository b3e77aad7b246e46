"""Datasets for the demo, tests and benchmarks: the Fashion-MNIST demo images
(:mod:`~engine.datasets.demodata`) and synthetic catalogs of clustered codes
(:mod:`~engine.datasets.synth`). They build catalogs through :class:`engine.Catalog`."""
