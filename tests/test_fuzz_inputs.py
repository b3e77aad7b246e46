"""Bad-input fuzzing, short version: a few hundred Hypothesis cases per surface, and the
regressions that the long runs of ``scripts/fuzz_inputs.py`` found.

The generators, the independent reference readings and the numpy oracles are those of the
script (loaded from its path, so the test and the long run check the same things):

- box-set JSON: ``BoxSet.from_json`` raises ``InvalidBoxes`` or parses what the reference
  reads; ``Catalog.select`` and the ``to_sql`` text run in DuckDB equal the oracle;
- refine and search arguments: every call raises a ``CatalogError`` or returns ids and scores
  equal to the oracle, with a ``result.sql`` that DuckDB answers identically;
- the image decoder: every input decodes to RGB or raises ``UnreadableImage``, within 2 s,
  and unmutated files give their exact pixels.
"""

from __future__ import annotations

import contextlib
import io
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from support import load_script

from engine import BoxSet, CatalogError, InvalidArgument, InvalidBoxes
from engine.ingest.imageio import UnreadableImage, decode_image

fuzz = load_script("fuzz_inputs")

SETTINGS = settings(database=None, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """(box-set catalog, refine catalog), read-only, with their codes in position order."""
    boxes_path, refine_path = fuzz.build_catalogs(tmp_path_factory.mktemp("fuzz"), 0)
    boxes, refine = fuzz.CatalogView.open(boxes_path), fuzz.CatalogView.open(refine_path)
    yield boxes, refine
    boxes.cat.close()
    refine.cat.close()


@pytest.fixture(scope="module")
def bases():
    found = fuzz.make_bases()
    return found, {b.name: b for b in found}


# -- fuzz --------------------------------------------------------------------------------------
@settings(SETTINGS, max_examples=300)
@given(case=fuzz.box_cases())
def test_box_json_fuzz(views, case):
    fuzz.check_box_case(views[0], fuzz.Tally(), case)


@settings(SETTINGS, max_examples=40)
@given(case=fuzz.refine_cases())
def test_refine_and_search_fuzz(views, case):
    fuzz.check_refine_case(views[1], fuzz.Tally(), case)


@pytest.mark.e2e
@settings(SETTINGS, max_examples=250)
@given(case=fuzz.refine_cases())
def test_refine_and_search_fuzz_longer(views, case):
    fuzz.check_refine_case(views[1], fuzz.Tally(), case)


def _decode(case, by_name, tmp_path, index):
    arg = fuzz.materialize(case.value, np.random.default_rng(index), tmp_path, index)
    status, label, _, detail = fuzz.run_decoder_case(case, arg, by_name)
    assert status != "crash", f"{case.desc}: {label}: {detail}"


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on the broken files
@settings(SETTINGS, max_examples=300)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(10**6, 10**9))
def test_decoder_fuzz(bases, tmp_path_factory, seed, index):
    found, by_name = bases
    case = fuzz.make_case(seed, index, found, [])
    if isinstance(case.value, tuple):  # a large valid picture: seconds each, run by the script
        return
    _decode(case, by_name, tmp_path_factory.getbasetemp(), index)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on the broken files
def test_decoder_special_cases(bases, tmp_path):
    """Every hand-made case of the script but the large pictures: each base file (decoded to
    its exact pixels, and refused one pixel below its size), huge and empty declared sizes,
    compressed-text bombs, empty input, bytearray, memoryview and path inputs."""
    found, by_name = bases
    for i, case in enumerate(fuzz.special_cases(found)):
        if not isinstance(case.value, tuple):
            _decode(case, by_name, tmp_path, i)


# -- regressions: box-set JSON -------------------------------------------------------------------
@pytest.mark.parametrize("dim", ["f07", " 7 ", "007", 7, np.int64(7)])
def test_dim_spellings(dim):
    assert BoxSet.from_json([{dim: [1, 2]}]) == BoxSet([{7: (1, 2)}])


@pytest.mark.parametrize("dim", [" f07", "f07 ", "F07", "f7", "+7", "\u0667", "f\u0660\u0667"])
def test_odd_dim_spellings_are_invalid(dim):
    with pytest.raises(InvalidBoxes):
        BoxSet.from_json([{dim: [1, 2]}])


def test_column_name_with_trailing_newline():
    """ "f07\n" parses as dim 7, while " f07" and "f07 " are refused."""
    with pytest.raises(InvalidBoxes):
        BoxSet.from_json([{"f07\n": [1, 2]}])


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, '{"boxes": ' + "[" * 50_000 + "]" * 50_000 + "}"]
)
def test_deeply_nested_json(text):
    with pytest.raises(InvalidBoxes):
        BoxSet.from_json(text)


def test_json_number_with_thousands_of_digits():
    with pytest.raises(InvalidBoxes):
        BoxSet.from_json('{"boxes": [{"3": [1' + "0" * 5000 + ", 200]}]}")


def test_unknown_keys_of_mixed_types():
    with pytest.raises(InvalidBoxes):
        BoxSet.from_json({"boxes": [], 1: 2, "x": 3})


def test_zero_dimensional_array_as_bounds():
    with pytest.raises(InvalidBoxes):
        BoxSet([{3: np.array(5)}])


# -- regressions: refine and search arguments ----------------------------------------------------
@pytest.fixture(scope="module")
def catalog(views):
    return views[1].cat


@pytest.mark.parametrize(
    "labels", ["1,2,3", " 1 , 2 ,", b"1,2", [1.0, "2", np.int8(3)], np.array([1, 2], np.uint64)]
)
def test_label_spellings(catalog, labels):
    result = catalog.refine(labels, model="tree", random_state=0)
    assert result.stats["positives"] == len(set(fuzz.reference_ids(labels)))


@pytest.mark.parametrize(
    "labels", [[True], [None], [[1]], ["1.5"], [1.5], [float("nan")], "x", "1;2", 7, {3.5}]
)
def test_labels_that_are_not_ids(catalog, labels):
    with pytest.raises(InvalidArgument):
        catalog.refine(labels, model="tree")


def test_labels_bytes_not_utf8(catalog):
    with pytest.raises(CatalogError):
        catalog.refine(b"\xff1", model="tree")


@pytest.mark.parametrize(
    "labels", [[2**63], [-(2**63) - 1], ["9999999999999999999"], [1e300], np.array([2**64 - 1], np.uint64)]
)
def test_labels_beyond_int64(catalog, labels):
    with pytest.raises(InvalidArgument):
        catalog.refine(labels, model="tree")


@pytest.mark.parametrize("image_id", [2**63, -(2**63) - 1, 2**64])
def test_search_id_beyond_int64(catalog, image_id):
    with pytest.raises(InvalidArgument):
        catalog.search(id=image_id)


@pytest.mark.parametrize("label", ["--5", "\u00b2", "-\u00b9"])
def test_labels_digit_like_strings(catalog, label):
    with pytest.raises(InvalidArgument):
        catalog.refine([label], model="tree")


def test_negative_weight_huge_int(catalog):
    with pytest.raises(InvalidArgument):
        catalog.refine([1, 2], model="tree", negative_weight=10**400)


@pytest.mark.parametrize("model", [np.array([1, 2]), np.array(["tree"])])
def test_model_given_as_array(catalog, model):
    with pytest.raises(InvalidArgument):
        catalog.refine([1, 2], model=model)


@pytest.mark.parametrize(
    "random_state",
    [-1, 2**32, 2**40, "abc", 1.5, True, np.random.RandomState(0)],
    ids=["-1", "2**32", "2**40", "str", "float", "bool", "RandomState"],
)
@pytest.mark.parametrize("model", ["ensemble", "branch", "tree", "forest"])
def test_bad_random_state(catalog, model, random_state):
    """Every model takes the same seeds (None, 0..2**32-1, a numpy Generator); anything else
    (the web form's ``seed`` field included) is an InvalidArgument, whichever model."""
    with pytest.raises(InvalidArgument):
        catalog.refine([1, 2], model=model, random_state=random_state)


@pytest.mark.parametrize("model", ["tree", "forest"])
def test_generator_random_state_sklearn_models(catalog, model):
    """A numpy Generator, accepted for "ensemble" and "branch", must give a result or a typed
    error for "tree" and "forest" too."""
    with contextlib.suppress(CatalogError):
        catalog.refine([1, 2], model=model, random_state=np.random.default_rng(0))


@pytest.mark.parametrize("kwargs", [{"text": "a shoe"}, {"image": b"\x89PNG"}])
def test_search_without_encoder(catalog, kwargs):
    with pytest.raises(CatalogError, match="no encoder"):
        catalog.search(**kwargs)


@pytest.mark.parametrize("k", [0, -1, 100_001, 2**64, 5.0, True, "5", None, np.uint64(2**64 - 1)])
def test_search_bad_k(catalog, k):
    with pytest.raises(InvalidArgument):
        catalog.search(id=1, k=k)


# -- regressions: the image decoder --------------------------------------------------------------
def test_huge_declared_png_is_refused_before_decoding(monkeypatch):
    data = fuzz.png_file(100_000, 100_000, chunks=[(b"IDAT", zlib.compress(bytes(1000)))])

    def load(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(UnreadableImage, match="too many pixels"):
        decode_image(data)


@pytest.mark.parametrize("width, height", [(1, 1000), (1, 89_000_000)])
def test_png_with_missing_rows(width, height):
    """1000 bytes of image data for a header that needs more: the rows that are not there come
    back black instead of the file being refused as truncated (a 1 KB file passes as 89 MP)."""
    data = fuzz.png_file(width, height, chunks=[(b"IDAT", zlib.compress(bytes(1000)))])
    with pytest.raises(UnreadableImage):
        decode_image(data)


def test_sixteen_bit_grey_memory():
    """Peak memory numpy allocates to convert 16-bit grey to RGB, per pixel. It is 24 bytes
    now: at the default limit of 89 MP a 160 KB PNG takes 2.2 GB and about 10 s to decode."""
    n = 1000
    grey = (np.arange(n * n, dtype=np.uint32) % 65536).astype(np.uint16).reshape(n, n)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", compress_level=1)
    tracemalloc.start()
    try:
        decode_image(buf.getvalue())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / (n * n) <= 8
