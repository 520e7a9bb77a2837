"""engines.native: compile once, load from the cache, clear errors without a compiler."""
from __future__ import annotations

import ctypes

import pytest

from engines import native

SRC = "long add_one(long x) { return x + 1; }\n"
SIG = {"add_one": ([ctypes.c_long], ctypes.c_long)}


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
def test_compile_load_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    src = SRC + f"/* {tmp_path.name} */\n"  # a source no other test has loaded in this process
    lib = native.load_library("t_native", src, SIG)
    assert lib.add_one(41) == 42
    built = list(tmp_path.glob("t_native-*.so"))
    assert len(built) == 1
    assert native.load_library("t_native", src, SIG) is lib  # loaded once per process
    # extra flags are part of the key: a second build beside the first
    assert native.load_library("t_native", src, SIG, extra_flags=("-DX=1",)).add_one(1) == 2
    assert len(list(tmp_path.glob("t_native-*.so"))) == 2


def test_no_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        native.load_library("t_native", SRC + "/* none */\n", SIG)
    monkeypatch.setattr(native, "compiler", lambda: str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="cannot run"):
        native.load_library("t_native", SRC + "/* missing */\n", SIG)
