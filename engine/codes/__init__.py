"""Codes: the 32-byte code of an image, from its raw embedding.

:mod:`~engine.codes.head` is the small head that reduces an embedding to 32 dims (contrastive
plus KoLeo, or distilled), :mod:`~engine.codes.quantize` the 8-bit quantizer,
:mod:`~engine.codes.prompts` the vocabulary small heads are distilled with, and
:mod:`~engine.codes.pipeline` trains a catalog's head and encodes its embeddings into codes.
Head and quantizer import only numpy (and torch while training); the pipeline goes through
:class:`engine.Catalog`.
"""
