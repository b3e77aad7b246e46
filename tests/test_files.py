"""engine.store.files: a file appears whole under its name or not at all."""

from __future__ import annotations

import os
import threading

import pytest

from engine.store.files import atomic_path, link_or_copy, write_bytes


def _debris(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("durable", [True, False])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, durable):
    path = tmp_path / "sub" / "f.bin"
    write_bytes(path, b"old", durable=durable)
    with pytest.raises(RuntimeError), atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and _debris(path.parent) == []
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not yet in place
    assert path.read_bytes() == b"new" and _debris(path.parent) == []


def test_a_block_that_writes_nothing_fails_and_changes_nothing(tmp_path):
    path = tmp_path / "f.bin"
    write_bytes(path, b"old")
    with pytest.raises(FileNotFoundError), atomic_path(path):
        pass
    assert path.read_bytes() == b"old" and _debris(tmp_path) == []


def test_threads_writing_one_file_never_mix(tmp_path):
    path = tmp_path / "thumb.jpg"
    payloads = [bytes([i]) * 100_000 for i in range(8)]
    errors = []

    def write(data):
        try:
            for _ in range(20):
                write_bytes(path, data, durable=False)
        except Exception as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_bytes() in payloads and _debris(tmp_path) == []


def test_link_or_copy_links_on_one_file_system_and_keeps_the_source(tmp_path):
    src = tmp_path / "src.parquet"
    src.write_bytes(b"part")
    dst = tmp_path / "parts" / "part-00000001.parquet"
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"part" and src.exists()
    assert os.stat(dst).st_ino == os.stat(src).st_ino
    with pytest.raises(FileNotFoundError):
        link_or_copy(tmp_path / "missing", tmp_path / "other")
    assert not (tmp_path / "other").exists() and _debris(tmp_path) == []
