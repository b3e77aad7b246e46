"""The 32-d head: KoLeo, PCA baseline, contrastive and distillation training, storage."""

import numpy as np
import pytest

import engine
from engine.codes import head as H
from engine.codes import pipeline, quantize

torch = pytest.importorskip("torch")


def _clustered(seed=0, n=3000, d=64, k=12, noise=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    labels = rng.integers(0, k, n)
    x = centres[labels] + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return x.astype(np.float32), labels, c.astype(np.float32)


def _nn_label_accuracy(y, labels):
    s = y @ y.T
    np.fill_diagonal(s, -np.inf)
    return float(np.mean(labels[np.argmax(s, axis=1)] == labels))


def test_koleo_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 8))
    d = np.linalg.norm(y[:, None] - y[None], axis=2)
    np.fill_diagonal(d, np.inf)
    expected = -np.mean(np.log(d.min(axis=1)))
    got = H.koleo_loss(torch.from_numpy(y)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_pca_head_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    x, _, _ = _clustered()
    head = H.fit_pca(x, 16)
    ref = PCA(16, svd_solver="full").fit_transform(x)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got = head.apply(x)
    signs = np.sign((got * ref).sum(axis=0))
    assert np.allclose(got, ref * signs, atol=1e-4)


def test_numpy_apply_matches_the_torch_network():
    x, _, _ = _clustered(n=600)
    captured = {}
    orig = H._export

    def spy(net, info):
        captured["net"] = net
        return orig(net, info)

    H._export = spy
    try:
        head = H.train_distill(x, out_dim=8, epochs=1, batch_size=128)
    finally:
        H._export = orig
    with torch.no_grad():
        ref = captured["net"](torch.from_numpy(x)).numpy()
    assert np.allclose(head.apply(x), ref, atol=1e-5)
    assert np.allclose(np.linalg.norm(head.apply(x), axis=1), 1, atol=1e-5)


@pytest.mark.e2e
def test_training_is_deterministic_for_a_seed():
    x, _, c = _clustered(n=800)
    a = H.train_distill(x, c, out_dim=8, epochs=2, seed=3)
    b = H.train_distill(x, c, out_dim=8, epochs=2, seed=3)
    other = H.train_distill(x, c, out_dim=8, epochs=2, seed=4)
    assert a.sha256 == b.sha256
    assert a.sha256 != other.sha256


@pytest.mark.e2e
def test_distillation_keeps_neighbourhoods_and_prompt_rankings():
    x, labels, centres = _clustered(n=2000)
    head = H.train_distill(x, centres, out_dim=8, epochs=5, seed=0)
    y = head.apply(x)
    assert _nn_label_accuracy(x, labels) > 0.95  # the task is solvable in full dimension
    assert _nn_label_accuracy(y, labels) > 0.9
    # zero-shot through the head: each image's nearest centre prompt is its own cluster
    zs = np.mean(np.argmax(y @ head.apply(centres).T, axis=1) == labels)
    assert zs > 0.9


@pytest.mark.e2e
def test_koleo_spreads_the_outputs():
    x, _, c = _clustered(n=1500, noise=0.3)
    plain = H.train_distill(x, c, out_dim=8, epochs=3, koleo=0.0, seed=0).apply(x)
    spread = H.train_distill(x, c, out_dim=8, epochs=3, koleo=1.0, seed=0).apply(x)

    def mean_nn_dist(y):
        d = np.linalg.norm(y[:500, None] - y[None, :500], axis=2)
        np.fill_diagonal(d, np.inf)
        return d.min(axis=1).mean()

    assert mean_nn_dist(spread) > 1.2 * mean_nn_dist(plain)


@pytest.mark.e2e
def test_contrastive_head_aligns_pairs():
    rng = np.random.default_rng(1)
    img, _, _ = _clustered(n=2000, k=40, noise=0.2)
    txt = img + 0.1 * rng.normal(size=img.shape).astype(np.float32)
    head = H.train_contrastive(img, txt, out_dim=16, epochs=15, seed=0)
    a, b = head.apply(img[:300]), head.apply(txt[:300])
    top1 = np.mean(np.argmax(a @ b.T, axis=1) == np.arange(300))
    pca = H.fit_pca(img, 16)
    pa, pb = pca.apply(img[:300]), pca.apply(txt[:300])
    pca_top1 = np.mean(np.argmax(pa @ pb.T, axis=1) == np.arange(300))
    # pairs are hard to tell from their cluster mates; training on them beats a plain projection
    assert top1 > 1.2 * pca_top1 and top1 > 0.15  # chance is 1/300
    assert head.info["method"] == "contrastive"


def test_bytes_round_trip_and_checksum():
    x, _, _ = _clustered(n=500)
    for head in (H.fit_pca(x, 8), H.train_distill(x, out_dim=8, epochs=1)):
        back = H.Head.from_bytes(head.to_bytes())
        assert back.sha256 == head.sha256
        assert np.array_equal(back.apply(x), head.apply(x))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(10, np.float32), "2-d"),
        (np.zeros((10, 64), np.float32), "more than 32"),
        (np.full((100, 64), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_embeddings_are_refused(bad, match):
    with pytest.raises(H.HeadError, match=match):
        H.fit_pca(bad, 32)


def test_wrong_width_at_apply_time():
    x, _, _ = _clustered(n=200)
    with pytest.raises(H.HeadError, match=r"\(n, 64\)"):
        H.fit_pca(x, 8).apply(np.zeros((3, 10), np.float32))


def test_corrupt_blob_is_refused():
    with pytest.raises(H.HeadError, match="train it again"):
        H.Head.from_bytes(b"not an npz file")


def test_catalog_stores_the_head_and_checks_its_checksum(tmp_path):
    x, _, _ = _clustered(n=400)
    head = H.fit_pca(x, 32)
    q = quantize.fit_affine(head.apply(x))
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        with pytest.raises(engine.CatalogError, match="train-head"):
            cat.head()
        digest = cat.store_head(head, q)
    with engine.Catalog.open(path, read_only=True) as cat:
        assert cat.head().sha256 == digest == head.sha256
        assert np.array_equal(cat.quantizer().encode(head.apply(x)), q.encode(head.apply(x)))
    with engine.Catalog.open(path) as cat:
        cat.store.con.execute("UPDATE artifacts SET data = ? WHERE name = 'head'", [b"tampered"])
        with pytest.raises(engine.CorruptCatalog, match="checksum"):
            cat.head()


@pytest.mark.e2e
@pytest.mark.parametrize("n", [1, 2, 5, 20, 32, 33, 50, 200, 512])
def test_small_catalogs_train_a_head(n):
    """Up to 512 rows are one batch an epoch: 10 epochs were 10 steps, too few for the
    learning-rate schedule, and training failed with ZeroDivisionError. The trained heads need
    no more rows than one (PCA needs more than out_dim)."""
    img, _, _ = _clustered(n=n, d=64, k=4)
    txt = img + 0.05 * np.random.default_rng(n).normal(size=img.shape).astype(np.float32)
    for head in (
        H.train_contrastive(img, txt, out_dim=32, epochs=10, seed=0),
        H.train_distill(img, None, out_dim=32, epochs=10, seed=0),
    ):
        y = head.apply(img)
        assert y.shape == (n, 32) and np.isfinite(y).all()
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
        assert head.info["rows"] == n


def test_prompt_prompt_keeps_the_prompts_geometry_and_changes_nothing_when_off():
    x, _, centres = _clustered(n=5, k=12)
    rng = np.random.default_rng(3)
    prompt_labels = np.concatenate([np.arange(12), rng.integers(0, 12, 200)])
    prompts = centres[prompt_labels] + np.concatenate([np.zeros((12, 64)), 0.12 * rng.normal(size=(200, 64))])
    prompts = (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).astype(np.float32)
    plain = H.train_distill(x, prompts, out_dim=8, seed=0)
    again = H.train_distill(x, prompts, out_dim=8, seed=0, prompt_prompt=False)
    assert plain.sha256 == again.sha256 and "prompt_prompt" not in plain.info
    pp = H.train_distill(x, prompts, out_dim=8, seed=0, prompt_prompt=True)
    assert pp.info["prompt_prompt"] is True and pp.info["rows"] == 5
    # five images say little about the space; the prompts' own similarities say the rest
    assert _nn_label_accuracy(prompts, prompt_labels) == 1.0
    assert _nn_label_accuracy(pp.apply(prompts), prompt_labels) > 0.95
    assert _nn_label_accuracy(plain.apply(prompts), prompt_labels) < 0.9


def test_progress_counts_every_training_step():
    x, _, c = _clustered(n=40)
    seen = []
    H.train_distill(x, c, out_dim=8, epochs=1, progress=lambda d, t: seen.append((d, t)))
    total = H.train_steps(40, 1, 512)
    assert seen == [(i, total) for i in range(1, total + 1)] and total == H.MIN_TRAIN_STEPS


def test_quantizer_with_a_minimum_range_fits_one_row():
    one = np.full((1, 32), 0.1, np.float32)
    with pytest.raises(quantize.QuantizerError, match="at least 2 rows"):
        quantize.fit_affine(one)
    q = quantize.fit_affine(one, min_range=quantize.sphere_range(32))
    np.testing.assert_allclose(q.step * 255, 4 / np.sqrt(32), rtol=1e-5)
    assert np.all(q.encode(one) == 128)  # the one row sits in the middle of its range
    wide = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
    assert quantize.fit_affine(wide, min_range=0.1).to_json() == quantize.fit_affine(wide).to_json()


@pytest.mark.parametrize("method", ["nope", "PCA", "", None, 3])
def test_unknown_head_method_is_an_invalid_argument(tmp_path, method):
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(np.zeros((3, 32), np.uint8))
        with pytest.raises(
            engine.InvalidArgument,
            match=f"unknown head method {method!r}; choose one of auto, contrastive, distill, pca",
        ) as e:
            pipeline.train_head(cat, method=method)
        assert isinstance(e.value, engine.CatalogError)
        assert cat.setting("head") is None and len(cat) == 3
