"""`catto.io`: every file catto writes is written whole or not at all, with the mode a plain `open()` gives."""

from __future__ import annotations

import json
import os
import stat

import pytest

from catto.io import atomic_directory, atomic_write, cached_json, write_json_atomic

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
def test_new_files_and_folders_get_the_umask_mode_not_tempfiles_private_one(tmp_path, umask_027):
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert _mode(tmp_path / "r.json") == 0o640  # 0o666 & ~0o027; tempfile alone gives 0o600
    with atomic_directory(tmp_path / "ckpt") as folder:
        (open(os.path.join(folder, "w.bin"), "wb")).close()
    assert _mode(tmp_path / "ckpt") == 0o750  # 0o777 & ~0o027; tempfile alone gives 0o700


@posix_only
def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{}")
    os.chmod(path, 0o604)
    write_json_atomic(path, [1, 2])
    assert _mode(path) == 0o604 and json.loads(path.read_text()) == [1, 2]


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["r.txt"]


def test_a_folder_is_not_replaced_unless_asked(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass
    assert (target / "keep").read_text() == "x"
    with atomic_directory(target, replace=True) as folder:
        (open(os.path.join(folder, "new"), "w")).close()
    assert sorted(os.listdir(target)) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_cached_json_recomputes_only_for_another_key_and_returns_json_types(tmp_path):
    path = tmp_path / "cache.json"
    calls = []

    def compute():
        calls.append(1)
        return {1: (0.5, 0.25)}

    first = cached_json(path, {"records": "abc", "n": 200}, compute)
    assert first == {"1": [0.5, 0.25]}  # as JSON gives it back, so cached and fresh calls agree
    assert cached_json(path, {"records": "abc", "n": 200}, compute) == first and len(calls) == 1
    assert cached_json(path, {"records": "abd", "n": 200}, compute) == first and len(calls) == 2
    assert json.loads(path.read_text())["key"] == {"records": "abd", "n": 200}
