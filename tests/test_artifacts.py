"""Atomic artifact writes: all or nothing under the final name, durable before the rename."""

from __future__ import annotations

import os

import pytest

from geoconcept_cli import artifacts
from geoconcept_cli.artifacts import atomic_path, write_json


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

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    monkeypatch.setattr(artifacts.os, "replace", replace)
    write_json(tmp_path / "b.json", [1, 2])
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1] == calls[1][1] and calls[2][1] == str(tmp_path)  # the data, the folder
    assert (tmp_path / "b.json").read_text() == "[\n  1,\n  2\n]\n"
