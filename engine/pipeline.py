"""From raw embeddings to indexed codes: train the head, fit the quantizer, write the codes.

    ingest  ->  train_head  ->  index_embeddings
    (raw float16 embeddings)  (head + quantizer stored in the catalog)  (codes, k-d order)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from . import head as head_mod
from . import quantize
from .catalog import Catalog
from .errors import CatalogError, StaleIndexError
from .prompts import vocabulary

METHODS = ("auto", "contrastive", "distill", "pca")


def _load_embeddings(cat: Catalog) -> tuple[np.ndarray, np.ndarray]:
    from .embeddings import load_embeddings

    ids, emb = load_embeddings(cat)
    if len(ids) == 0:
        raise CatalogError(f"{cat.path} has no embeddings yet; run `clip-branches ingest {cat.path} SOURCE` first")
    return ids, emb


def train_head(
    cat: Catalog,
    *,
    method: str = "auto",
    out_dim: int = head_mod.DEFAULT_OUT_DIM,
    koleo: float = head_mod.DEFAULT_KOLEO,
    epochs: int = 10,
    seed: int = 0,
    prompts: Sequence[str] | None = None,
    encoder=None,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Train the head on the catalog's raw embeddings and fit the quantizer on its outputs.

    ``method``: ``contrastive`` needs a ``caption`` column in ``images``; ``distill`` uses a
    prompt vocabulary (``prompts``, default :func:`engine.prompts.vocabulary`) encoded by the
    catalog's encoder; ``pca`` is the baseline; ``auto`` picks contrastive when captions exist.
    Returns a summary; the head and quantizer are stored in the catalog.
    """
    if method not in METHODS:
        raise CatalogError(f"unknown head method {method!r}; choose one of {', '.join(METHODS)}")
    cat._check_writable()
    t0 = time.perf_counter()
    ids, emb = _load_embeddings(cat)
    has_captions = "caption" in cat.image_columns()
    if method == "auto":
        method = "contrastive" if has_captions else "distill"
    if method == "contrastive" and not has_captions:
        raise CatalogError("contrastive training needs a `caption` column in images (from a manifest); "
                           "use --method distill instead")
    if method in ("contrastive", "distill") and encoder is None:
        encoder = _catalog_encoder(cat)
    if method == "pca":
        head = head_mod.fit_pca(emb, out_dim)
    elif method == "contrastive":
        caps = cat.con.execute("SELECT id, caption FROM images WHERE caption IS NOT NULL").fetchall()
        cap_of = dict(caps)
        keep = np.array([i in cap_of for i in ids.tolist()])
        texts = encoder.encode_texts([str(cap_of[i]) for i in ids[keep].tolist()])
        head = head_mod.train_contrastive(emb[keep], texts, out_dim=out_dim, koleo=koleo, epochs=epochs,
                                          seed=seed, log=log)
    else:
        vocab = list(prompts) if prompts is not None else vocabulary()
        head = head_mod.train_distill(emb, encoder.encode_texts(vocab), out_dim=out_dim, koleo=koleo,
                                      epochs=epochs, seed=seed, log=log)
    t1 = time.perf_counter()
    head.info["encoder"] = cat.setting("encoder")
    quant = quantize.fit_affine(head.apply(emb))
    digest = cat.store_head(head, quant)
    return {"method": method, "rows": int(len(ids)), "in_dim": head.in_dim, "out_dim": head.out_dim,
            "koleo": koleo if method != "pca" else None, "sha256": digest, "time_train_s": t1 - t0}


def _catalog_encoder(cat: Catalog):
    from .encoders import load_encoder

    enc_id = cat.setting("encoder")
    if not enc_id:
        raise CatalogError(f"{cat.path} records no encoder; ingest images first")
    return load_encoder(enc_id)


def index_embeddings(cat: Catalog, *, block_size: int | None = None) -> dict:
    """Encode every image's raw embedding with the stored head and quantizer, and replace the
    codes and the block index in one transaction. Returns a summary."""
    cat._check_writable()
    t0 = time.perf_counter()
    head = cat.head()
    quant = cat.quantizer()
    if head.info.get("encoder") != cat.setting("encoder"):
        raise StaleIndexError(f"the head was trained on embeddings of {head.info.get('encoder')!r} but the images "
                              f"are now embedded by {cat.setting('encoder')!r}; run `clip-branches train-head "
                              f"{cat.path}` again")
    # Images whose part is newer than this were re-embedded after their codes were computed.
    part_max = int(cat.con.execute("SELECT coalesce(max(part_id), 0) FROM embedding_parts").fetchall()[0][0])
    ids, emb = _load_embeddings(cat)
    if emb.shape[1] != head.in_dim:
        raise StaleIndexError(f"the embeddings are {emb.shape[1]}-d but the head expects {head.in_dim}-d; "
                              f"run `clip-branches train-head {cat.path}` again")
    codes = quant.encode(head.apply(emb))
    if codes.shape[1] != 32:
        raise CatalogError(f"the head outputs {codes.shape[1]} dims; the catalog stores 32")
    t1 = time.perf_counter()
    stats = cat.build_index(**({} if block_size is None else {"block_size": block_size}), codes=codes, ids=ids,
                            index_info={"head_sha256": head.sha256, "embedding_part_max": part_max})
    return {"rows": int(len(ids)), "time_encode_s": t1 - t0, **stats}
