"""From raw embeddings to indexed codes: train the head, fit the quantizer, write the codes.

    ingest  ->  train_head  ->  index_embeddings
    (raw float16 embeddings)  (head + quantizer stored in the catalog)  (codes, k-d order)

A catalog of a few hundred images or fewer describes its embedding space poorly: PCA cannot
find 32 directions in 32 rows, a head distilled on five images maps the next images ingested
anywhere, and quantiles of two rows send every other vector, text queries above all, to code 0
or 255. Below :data:`SMALL_CATALOG_ROWS` images the prompt vocabulary's text embeddings fill in:
the distilled head also keeps the prompts' similarities among themselves, PCA of at most 32
images is fitted on the images and the prompts, and the quantizer's ranges on the outputs of both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from ..catalog import Catalog
from ..errors import CatalogError, InvalidArgument, StaleIndexError
from ..index import layout
from ..limits import DEFAULT_BLOCK_SIZE
from ..progress import Progress, reporter
from ..store import tables
from . import head as head_mod
from . import quantize
from .prompts import vocabulary

METHODS = ("auto", "contrastive", "distill", "pca")
# Catalogs of fewer images take the vocabulary's help (see the module docstring); larger ones train
# exactly as before (the tests' catalogs of 300 and 1000 images among them). Chosen with
#   python scripts/eval_small_heads.py --catalog demo/fashion.duckdb --seeds 3
# (random subsets of the demo catalog, 2000 other images held out as if ingested later, scored on
# 8-bit codes; held-out neighbour recall@10 / text precision@10, distill with the prompt-prompt
# term and the quantizer fitted on images and prompts, against both on the images alone, which
# took at least 33 of them): 1 image 0.81 / 0.84 (no quantizer fits one row), 5: 0.77 / 0.88
#   (0.65 / 0.52), 20: 0.84 / 0.97
#   (0.80 / 0.75), 50: 0.87 / 0.99 (0.86 / 0.98), 200: 0.89 / 0.997 (0.87 / 0.997); searches
#   within the subset gain too (20 images: neighbour recall 0.90 against 0.84, text top-1 0.92
#   against 0.88). PCA heads gain most from the quantizer: 100 images 0.88 / 0.998 (0.59 / 0.79).
SMALL_CATALOG_ROWS = 256


def _load_embeddings(cat: Catalog) -> tuple[np.ndarray, np.ndarray]:
    from ..ingest.embeddings import load_embeddings

    ids, emb = load_embeddings(cat)
    if len(ids) == 0:
        raise CatalogError(
            f"{cat.path} has no embeddings yet; run `clip-branches ingest {cat.path} SOURCE` first"
        )
    return ids, emb


def code_new_images(cat: Catalog) -> int:
    """Give images ingested since the last index build their codes from the stored head and
    quantizer, appended after the indexed rows, so they are searchable before the next
    ``index``; returns how many. Nothing happens unless the catalog's codes were computed by
    that head and quantizer (the ``codes_space`` setting): codes of two heads never mix."""
    from ..ingest.embeddings import read_part

    cat.store.check_writable()
    head_meta, quantizer = cat.setting("head"), cat.setting("quantizer")
    if not head_meta or not quantizer:
        return 0
    space, expected = cat.setting("codes_space"), tables.head_space(head_meta["sha256"], quantizer)
    if space is None and (cat.setting("index") or {}).get("head_sha256") == head_meta["sha256"]:
        cat.store.set_settings({"codes_space": expected})  # built before builds recorded it
        space = expected
    if space != expected:
        return 0
    rows = cat.store.arrow(
        "SELECT i.id, p.file, p.dim FROM images i JOIN embedding_parts p ON p.part_id = i.embedding_part "
        "WHERE NOT EXISTS (SELECT 1 FROM codes c WHERE c.id = i.id) ORDER BY i.id"
    )
    if rows.num_rows == 0:
        return 0
    head, quant = cat.head(), cat.quantizer()
    ids = rows.column("id").to_numpy()
    files = rows.column("file").to_pylist()
    dims = rows.column("dim").to_numpy()
    codes = np.empty((len(ids), head.out_dim), np.uint8)
    for name in sorted(set(files)):
        at = np.flatnonzero(np.asarray(files, dtype=object) == name)
        emb = read_part(cat.side_dir / "embeddings" / name, ids[at], int(dims[at[0]]))
        if emb.shape[1] != head.in_dim:
            return 0  # embeddings of another encoder: `index` after `train-head` codes them
        codes[at] = quant.encode(head.apply(emb))
    tables.append_codes(cat.store, codes, ids)
    return int(len(ids))


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
    progress: Progress = None,
) -> dict:
    """Train the head on the catalog's raw embeddings and fit the quantizer on its outputs.

    ``method``: ``contrastive`` needs a ``caption`` column in ``images``; ``distill`` uses a
    prompt vocabulary (``prompts``, default :func:`engine.codes.prompts.vocabulary`) encoded by the
    catalog's encoder; ``pca`` is the baseline; ``auto`` picks contrastive when captions exist.
    Catalogs of fewer than :data:`SMALL_CATALOG_ROWS` images take the vocabulary's help (see the
    module docstring; every method), so any size from one image up works.
    ``progress`` (see :mod:`engine.progress`) counts steps: loading the embeddings, encoding the
    texts, each optimiser step (or the PCA fit), fitting the quantizer and storing.
    Returns a summary; the head and quantizer are stored in the catalog.
    """
    if method not in METHODS:
        raise InvalidArgument(f"unknown head method {method!r}; choose one of {', '.join(METHODS)}")
    cat.store.check_writable()
    with reporter("train-head", "steps", progress) as report:
        t0 = time.perf_counter()
        ids, emb = _load_embeddings(cat)
        n = len(ids)
        small = n < SMALL_CATALOG_ROWS
        has_captions = "caption" in cat.image_columns()
        if method == "auto":
            method = "contrastive" if has_captions else "distill"
        if method == "contrastive" and not has_captions:
            raise CatalogError(
                "contrastive training needs a `caption` column in images (from a manifest); "
                "use --method distill instead"
            )
        captions = None
        if method == "contrastive":
            cap_of = dict(cat.store.read("SELECT id, caption FROM images WHERE caption IS NOT NULL"))
            keep = np.array([i in cap_of for i in ids.tolist()])
            if not keep.any():
                raise CatalogError(
                    "no image has a caption to train on; fill the `caption` column or use --method distill"
                )
            captions = [str(cap_of[i]) for i in ids[keep].tolist()]
        use_vocab = method == "distill" or small
        vocab = list(prompts) if prompts is not None else vocabulary() if use_vocab else []
        pca_rows = n + (len(vocab) if n <= out_dim else 0)
        if method == "pca" and pca_rows <= out_dim:
            raise CatalogError(
                f"a {out_dim}-d PCA head needs more than {out_dim} rows to fit on, and this catalog's "
                f"{n} images and {len(vocab)} prompts are {pca_rows}; use the default prompts "
                "or --method distill"
            )
        if (method != "pca" or use_vocab) and encoder is None:
            encoder = _catalog_encoder(cat)
        # load, encode the texts, each optimiser step (one PCA fit), fit the quantizer and store
        fit_steps = 1 if method == "pca" else head_mod.train_steps(len(captions or ids), epochs, 512)
        encode_steps = int(use_vocab or captions is not None)
        total = 1 + encode_steps + fit_steps + 1
        done = 1
        report(done, total)

        vocab_emb = _encode(encoder, vocab) if use_vocab else None
        caption_emb = _encode(encoder, captions) if captions is not None else None
        done += encode_steps
        report(done, total)
        train_progress = (lambda d, t: report(done + d, total)) if report.active else None
        train = dict(out_dim=out_dim, koleo=koleo, epochs=epochs, seed=seed, log=log, progress=train_progress)
        if method == "pca":
            head = head_mod.fit_pca(emb if pca_rows == n else np.concatenate([emb, vocab_emb]), out_dim)
            if pca_rows > n:
                head.info.update(rows=n, prompts=pca_rows - n)
        elif method == "contrastive":
            head = head_mod.train_contrastive(emb[keep], caption_emb, **train)
        else:
            head = head_mod.train_distill(emb, vocab_emb, prompt_prompt=small, **train)
        done += fit_steps
        report(done, total)
        t1 = time.perf_counter()
        head.info["encoder"] = cat.setting("encoder")
        outputs = head.apply(emb)
        if small and len(vocab):
            outputs = np.concatenate([outputs, head.apply(vocab_emb)])
        quant = quantize.fit_affine(outputs, min_range=quantize.sphere_range(head.out_dim) if small else 0.0)
        digest = cat.store_head(head, quant)
        report(total, total)
    return {
        "method": method,
        "rows": n,
        "in_dim": head.in_dim,
        "out_dim": head.out_dim,
        "koleo": koleo if method != "pca" else None,
        "sha256": digest,
        "time_train_s": t1 - t0,
        "small_catalog": small,
        "quantizer_rows": int(len(outputs)),
    }


def _encode(encoder, texts: Sequence[str]) -> np.ndarray:
    """float32 (len(texts), encoder.dim) text embeddings, in one call, as before progress: the
    encoders batch internally, and other batch boundaries could change the last bits."""
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    return np.asarray(encoder.encode_texts(list(texts)), dtype=np.float32)


def _catalog_encoder(cat: Catalog):
    from ..encoders import load_encoder

    enc_id = cat.setting("encoder")
    if not enc_id:
        raise CatalogError(f"{cat.path} records no encoder; ingest images first")
    return load_encoder(enc_id)


def index_embeddings(
    cat: Catalog,
    *,
    block_size: int | None = None,
    compact: bool = True,
    mapped: bool | None = None,
    progress: Progress = None,
) -> dict:
    """Encode every image's raw embedding with the stored head and quantizer, and replace the
    codes and the block index in one transaction. ``progress`` (see :mod:`engine.progress`)
    counts steps: loading the embeddings, each :data:`engine.codes.head.APPLY_BATCH_ROWS` rows
    encoded, then the steps of :meth:`Catalog.build_index`, which compacts the file as its
    ``compact`` says and writes the mapped copy of the codes as ``mapped`` says. Returns a summary."""
    cat.store.check_writable()
    block_size = layout.check_block_size(DEFAULT_BLOCK_SIZE if block_size is None else block_size)
    with reporter("index", "steps", progress) as report:
        t0 = time.perf_counter()
        head = cat.head()
        quant = cat.quantizer()
        if head.info.get("encoder") != cat.setting("encoder"):
            raise StaleIndexError(
                f"the head was trained on embeddings of {head.info.get('encoder')!r} but the "
                f"images are now embedded by {cat.setting('encoder')!r}; run `clip-branches "
                f"train-head {cat.path}` again"
            )
        # Images whose part is newer than this were re-embedded after their codes were computed.
        part_max = int(cat.store.value("SELECT coalesce(max(part_id), 0) FROM embedding_parts"))
        ids, emb = _load_embeddings(cat)
        if emb.shape[1] != head.in_dim:
            raise StaleIndexError(
                f"the embeddings are {emb.shape[1]}-d but the head expects {head.in_dim}-d; "
                f"run `clip-branches train-head {cat.path}` again"
            )
        if head.out_dim != 32:
            raise CatalogError(f"the head outputs {head.out_dim} dims; the catalog stores 32")
        n = len(ids)
        batch = head_mod.APPLY_BATCH_ROWS
        n_batches = -(-n // batch)
        done, total = 1, 1 + n_batches + layout.build_steps(n, block_size, load=False)
        report(done, total)
        codes = np.empty((n, head.out_dim), np.uint8)
        for s in range(0, n, batch):
            codes[s : s + batch] = quant.encode(head.apply(emb[s : s + batch]))
            done += 1
            report(done, total)
        t1 = time.perf_counter()
        build_progress = (lambda d, t: report(done + d, total)) if report.active else None
        stats = cat.build_index(
            block_size,
            codes=codes,
            ids=ids,
            progress=build_progress,
            compact=compact,
            mapped=mapped,
            index_info={
                "head_sha256": head.sha256,
                "embedding_part_max": part_max,
                "codes_space": tables.head_space(head.sha256, cat.setting("quantizer")),
            },
        )
    return {"rows": int(n), "time_encode_s": t1 - t0, **stats}
