"""Atomic artifact writes: all or nothing under the final name, durable before the rename."""

from __future__ import annotations

import os

import pytest

from geoconcept_cli import _files  # where io's atomic writes live
from geoconcept_cli.io.artifacts import atomic_path, write_json


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "fsync", fsync)
    monkeypatch.setattr(_files.os, "replace", replace)
    write_json(tmp_path / "b.json", [1, 2])
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1] == calls[1][1] and calls[2][1] == str(tmp_path)  # the data, the folder
    assert (tmp_path / "b.json").read_text() == "[\n  1,\n  2\n]\n"


def test_artifacts_get_ordinary_permissions_whoever_writes_them(tmp_path):
    import torch
    from safetensors.torch import save_file

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "t.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
        write_json(tmp_path / "m.json", {})
    finally:
        os.umask(umask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {
        "t.safetensors": "0o644",
        "m.json": "0o644",
    }
