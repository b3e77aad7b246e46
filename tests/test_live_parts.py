"""The pieces of a served catalog's writer, in one process: the gate between requests and the
writer, the inbox, handing concept changes over, and the writer swapping the catalog."""

import json
import os
import threading
import time

import numpy as np
import pytest

import engine
from engine.errors import CatalogError, InvalidArgument, ServerBusy
from engine.live import Inbox, apply_op, apply_pending, served_by, submit_op
from web.settings import Settings
from web.state import SwapGate


def test_readers_share_the_gate_and_the_writer_waits_for_them():
    gate = SwapGate()
    entered = threading.Event()
    release = threading.Event()

    def reader():
        with gate.reading(5):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=reader)
    t.start()
    entered.wait(5)
    with gate.reading(1):  # a second reader is not held back by the first
        pass
    assert not gate.acquire_alone(0.2)  # the reader is still in: the writer gives up
    with gate.reading(1):  # and readers come in again
        pass
    threading.Timer(0.3, release.set).start()
    t0 = time.monotonic()
    assert gate.acquire_alone(5)  # waits for the reader to finish
    assert time.monotonic() - t0 >= 0.2
    with (
        pytest.raises(ServerBusy, match="new images"),
        gate.reading(0.2),
    ):  # held back while the writer has it
        pass
    gate.release_alone()
    with gate.reading(1):
        pass
    t.join()


def test_a_waiting_writer_holds_new_readers_back():
    gate = SwapGate()
    inside = threading.Event()
    leave = threading.Event()
    order = []

    def long_reader():
        with gate.reading(5):
            inside.set()
            leave.wait(5)
        order.append("reader 1 out")

    def writer():
        assert gate.acquire_alone(5)
        order.append("writer in")
        gate.release_alone()

    def late_reader():
        with gate.reading(5):
            order.append("reader 2 in")

    threads = [threading.Thread(target=long_reader)]
    threads[0].start()
    inside.wait(5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    time.sleep(0.1)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    time.sleep(0.1)
    leave.set()
    for t in threads:
        t.join(5)
    assert order.index("writer in") < order.index("reader 2 in")


def test_the_inbox_holds_whole_items_only_and_clears_debris(tmp_path):
    inbox = Inbox.of(tmp_path / "c.duckdb")
    item = inbox.new_item()
    (item / "job.json").write_text("{}")
    assert inbox.pending() == []  # still being written
    name = inbox.submit(item)
    assert [p.name for p in inbox.pending()] == [name]
    # An unfinished item of a process that is gone is debris; one of a live process is not.
    dead = inbox.dir / ".writing-999999999-abc"
    dead.mkdir()
    alive = inbox.dir / f".writing-{os.getppid()}-abc"
    alive.mkdir()
    assert inbox.remove_debris() == 1
    assert not dead.exists() and alive.exists()


def test_a_record_of_a_dead_server_is_ignored(tmp_path):
    path = tmp_path / "c.duckdb"
    side = tmp_path / "c.duckdb.d"
    side.mkdir()
    record = {"pid": 999999999, "url": "", "catalog": str(path.resolve())}
    (side / "serve.json").write_text(json.dumps(record))
    assert served_by(path) is None
    (side / "serve.json").write_text(json.dumps({**record, "pid": os.getppid()}))
    assert served_by(path)["pid"] == os.getppid()
    # A record copied along with the side folder names the file it was written for.
    (side / "serve.json").write_text(
        json.dumps({**record, "pid": os.getppid(), "catalog": "/elsewhere.duckdb"})
    )
    assert served_by(path) is None
    (side / "serve.json").write_text("not json")
    assert served_by(path) is None


@pytest.fixture
def small(make_catalog, codegen):
    rng = np.random.default_rng(3)
    return make_catalog(codegen.clustered(rng, 1500, n_clusters=5), block_size=64)


def test_concept_changes_are_applied_from_the_inbox(small):
    result = small.refine(small.search(id=0, k=6).ids.tolist(), sampled_negatives=200, random_state=0)
    from engine.concepts import export, from_result

    concept = from_result("first", result)
    submit_op(small.path, {"op": "save", "doc": export(concept)})
    submit_op(small.path, {"op": "rename", "name": "first", "new_name": "second"})
    submit_op(small.path, {"op": "delete", "name": "nope"})
    submit_op(small.path, {"op": "explode"})
    reports = apply_pending(small, Inbox.of(small.path))
    assert [r.get("name") for r in reports[:2]] == ["first", "second"]
    assert "no concept named 'nope'" in reports[2]["error"]
    assert "unknown concept change" in reports[3]["error"]
    assert Inbox.of(small.path).pending() == []
    assert all(Inbox.of(small.path).report_path(r["item"]).exists() for r in reports)
    assert np.array_equal(small.concepts.result("second").ids, result.ids)


def test_a_concept_fitted_before_the_codes_changed_is_saved_stale(small):
    result = small.refine(small.search(id=0, k=6).ids.tolist(), sampled_negatives=200, random_state=0)
    from engine.concepts import export, from_result

    doc = export(from_result("late", result))  # fitted when the catalog recorded no codes space
    small.save_concept("other", result)  # records one
    ids = small.sql("SELECT id FROM codes").column("id").to_numpy()
    small.build_index(codes=small.codes(ids)[:, ::-1].copy(), ids=ids)  # new codes since the fit
    assert apply_op(small, {"op": "save", "doc": doc})["stale"]
    with pytest.raises(InvalidArgument, match="concept name"):
        apply_op(small, {"op": "delete", "name": "Bad Name"})
    with pytest.raises(CatalogError, match="unknown concept change"):
        apply_op(small, {"op": None})


def test_the_writer_swaps_the_served_catalog(small):
    from web.app import create_app

    path = small.path
    small.close()
    app = create_app([path], Settings(), warm_up=False)
    state = app.state.cb
    served = next(iter(state.catalogs.values()))
    try:
        before = served.cat
        rows = served.rows
        ids = state.writer.submit(served, lambda cat: cat.add_codes(np.zeros((3, 32), np.uint8)).tolist())
        assert len(ids) == 3
        assert served.cat is not before and served.cat.read_only and served.version == 1
        assert served.rows == rows + 3
        with served.reading():
            assert set(ids) <= set(served.cat.select(engine.BoxSet([{0: (0, 0)}])).ids.tolist())
        with pytest.raises(InvalidArgument):
            state.writer.submit(served, lambda cat: cat.concepts.delete("missing"))
        assert served.cat.read_only  # opened again after a failed change too
    finally:
        state.writer.stop()
        state.close()
