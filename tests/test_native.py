"""The build-time kernels (engines.native): built by the install, no compiler at run time, SIMD
paths chosen by CPU and forced by CURATE_SIMD, typed arguments, fallbacks with clear warnings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engines import native
from filters.heuristics import chunking
from filters.minhash import kernels as mk
from scorers.ppl_corr import kernels as pk

REPO = Path(__file__).resolve().parents[1]
BUILT = mk.ext() is not None and pk.ext() is not None


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_install_built_the_extensions():
    """Where a compiler exists, `pip install -e .` must have built both extensions (a missing one
    means the build failed quietly: setup.py marks them optional)."""
    assert mk.ext() is not None, native.missing_reason(mk.EXTENSION)
    assert pk.ext() is not None, native.missing_reason(pk.EXTENSION)
    assert chunking.ext() is not None, native.missing_reason(chunking.EXTENSION)
    assert native.paths()[0] in ("scalar", "neon")


@pytest.mark.skipif(not BUILT, reason="compiled kernels not built")
def test_no_compiler_is_needed_at_run_time(tmp_path):
    """With no compiler reachable (empty PATH, CC pointing nowhere) and an empty cache, the kernels
    still load and compute: nothing compiles at run time."""
    code = (
        "import json, numpy as np, polars as pl\n"
        "from filters.minhash.signatures import SignatureComputer, MinHashParams\n"
        "from scorers.ppl_corr import estimators as est\n"
        "from engines import native\n"
        "keys = SignatureComputer(MinHashParams()).compute(pl.Series(['a b c d e f g', 'x y']))[0]\n"
        "r = est.spearmanr(np.random.default_rng(0).random((20, 300)), np.linspace(0, 1, 20), kind='error')\n"
        "print(json.dumps({'path': native.active_path(), 'keys': keys[:, 0].tolist(), 'r': float(r.sum())}))\n"
    )
    res = _run(code, PATH=str(tmp_path), CC=str(tmp_path / "no-cc"), CURATE_CACHE=str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["path"] == native.active_path()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.so"))
    assert "warning" not in res.stderr.lower()


@pytest.mark.skipif(not BUILT, reason="compiled kernels not built")
def test_simd_env_forces_a_path():
    best = native.paths()[-1]
    code = "from engines import native; print(native.active_path())"
    for path in native.paths():
        res = _run(code, CURATE_SIMD=path)
        assert res.returncode == 0 and res.stdout.strip() == path, res.stderr
    res = _run(code, CURATE_SIMD="quantum")
    assert res.stdout.strip() == best and "not a SIMD path" in res.stderr
    if best != "avx512":  # a path this CPU lacks falls back to the widest it has
        res = _run(code, CURATE_SIMD="avx512")
        assert res.stdout.strip() == best and "not supported by this CPU" in res.stderr
    res = _run(code, CURATE_NATIVE="0")
    assert res.stdout.strip() == "numpy"


@pytest.mark.skipif(not BUILT, reason="compiled kernels not built")
def test_use_path_switches_and_restores():
    before = native.active_path()
    with native.use_path(native.paths()[0]):
        assert mk.ext().path() == pk.ext().path() == native.paths()[0]
    assert native.active_path() == before
    with pytest.raises(ValueError, match="not available"), native.use_path("sve9"):
        pass
    assert "CPU:" in native.describe() and before in native.describe()


@pytest.mark.skipif(not BUILT, reason="compiled kernels not built")
def test_typed_arguments_reject_bad_input_without_crashing():
    mod = mk.ext()
    data = np.frombuffer(b"hello world", dtype=np.uint8)
    out = np.empty(1, dtype=np.uint64)
    with pytest.raises(TypeError, match="data"):
        mod.fnv_strings(np.zeros(11, dtype=np.float64), np.array([0, 11]), out)
    with pytest.raises(TypeError, match="offsets"):
        mod.fnv_strings(data, np.array([0, 11], dtype=np.int32), out)
    with pytest.raises(ValueError, match="past the end"):
        mod.fnv_strings(data, np.array([0, 99]), out)
    with pytest.raises(ValueError, match="non-decreasing"):
        mod.fnv_strings(data, np.array([0, 5, 3]), np.empty(2, np.uint64))
    with pytest.raises(TypeError, match="writable"):
        ro = np.empty(1, dtype=np.uint64)
        ro.flags.writeable = False
        mod.fnv_strings(data, np.array([0, 11]), ro)
    with pytest.raises(IndexError):
        mod.union(np.arange(3), np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="too small"):
        mod.bucket_pairs(np.zeros(4, np.uint64), np.arange(4), 8, np.empty(2, np.int64), np.empty(2, np.int64))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        mod.fnv_strings(data)
    pmod = pk.ext()
    X = np.random.default_rng(0).random((5, 10))
    with pytest.raises(TypeError, match="float64"):
        pmod.weighted_sum(X.astype(np.float32), np.ones(5), 0, 10, np.empty(10))
    with pytest.raises(ValueError, match="out of bounds"):
        pmod.weighted_sum(X, np.ones(5), 0, 11, np.empty(10))
    with pytest.raises(ValueError, match="lim"):
        pmod.pairs(X, np.array([0, 2, 0, 0, 0]), None, None, 0, 10, np.empty(10), np.empty(10, np.uint8))


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    """No extension (no compiler at install time): MinHash warns with the fix and runs NumPy."""
    import polars as pl

    from filters.minhash.signatures import MinHashParams, SignatureComputer

    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native, "_MISSING", {mk.EXTENSION: "the extension is not built (test)"})
    monkeypatch.setattr(mk, "_warned", False)
    texts = pl.Series(["one two three four five six", "seven eight"])
    with pytest.warns(RuntimeWarning, match="NumPy fallback.*pip install"):
        got = SignatureComputer(MinHashParams(threads=1)).compute(texts)
    assert mk.backend() == "numpy"
    monkeypatch.setattr(native, "_MISSING", {})
    if mk.ext() is not None:
        want = SignatureComputer(MinHashParams(threads=1)).compute(texts)
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


def test_stale_extension_is_not_used(monkeypatch):
    class Old:
        ABI = -1

        @staticmethod
        def paths():
            return ("scalar",)

    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native, "_MISSING", {})
    monkeypatch.setattr(native.importlib, "import_module", lambda name: Old)
    assert native.load("filters.minhash._minhash", 1) is None
    assert "stale" in native.missing_reason("filters.minhash._minhash")


def _clean_copy(dest: Path) -> Path:
    """The files git tracks (and untracked, not ignored ones) copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_builds_without_a_compiler(tmp_path):
    """The extensions are optional: with no working C compiler a wheel still builds (pure Python),
    and the package in it runs MinHash on the NumPy fallback."""
    src = _clean_copy(tmp_path / "src")  # as a fresh clone: no build/ folder, no in-place .so
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"}
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "curate: could not compile filters.minhash._minhash" in res.stdout + res.stderr
    wheel = next((tmp_path / "dist").glob("curate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    assert "filters/minhash/numpy_kernels.py" in names and "engines/native.py" in names


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_fresh_clone_wheel_holds_the_extensions(tmp_path):
    """Built from a clean copy of the checkout (as a fresh clone), the wheel holds all three
    extensions, and the build log says so in one line each."""
    src = _clean_copy(tmp_path / "src")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("curate-*.whl"))).namelist()
    for ext in ("filters.minhash._minhash", "scorers.ppl_corr._pplcorr", "filters.heuristics._chunks"):
        assert f"curate: built compiled kernels {ext}" in log
        assert any(n.startswith(ext.replace(".", "/")) and n.endswith(".so") for n in names), names
