"""Shared fixtures. Real text comes from ../shared/corpora (beside the checkout), else from the sample
bundled in tests/data/corpora; the demo corpus is demo/data."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings at import: give the whole test session a private, quiet home. Under
# pytest-xdist the controller sets it first and its workers inherit it: each worker gets a home of its
# own instead (its own database and temporary server, as a serial session has).
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("PREFECT_HOME") == os.environ.get("CURATE_TEST_PREFECT_HOME"):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"curate-prefect-{os.environ['PYTEST_XDIST_WORKER']}-")
elif "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = os.environ["CURATE_TEST_PREFECT_HOME"] = tempfile.mkdtemp(prefix="curate-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("CURATE_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
# Real text: the shared corpora beside the checkout (CI) or named by CURATE_CORPORA; else the sample
# bundled with the repository (tests/data/corpora/README.md), so a clone runs its own tests.
SHARED = Path(os.environ.get("CURATE_CORPORA") or REPO.parent / "shared" / "corpora")
SAMPLE = REPO / "tests" / "data" / "corpora"
CORPORA = SHARED if (SHARED / "wiki_en.parquet").exists() else SAMPLE
FULL = CORPORA.resolve() != SAMPLE.resolve()


# Modules whose tests start Ray (a private instance or a two-node cluster): one scheduling unit, so they
# run one after another in one worker, as in a serial session.
RAY_MODULES = {"test_ray_executor.py", "test_ray_map.py", "test_ray_vllm.py"}


# Slow units that read no model result, scheduled between the full demo run and Ray (see
# pytest_collection_modifyitems): together a few minutes longer than test_flow_e2e's first run (with
# the first four alone, a lone clone's run started Ray 30 s before the demo's results were there).
BEFORE_RAY = ("test_concurrent_runs.py", "test_crash_resume.py", "heuristics/test_parity.py", "test_serve.py",
              "test_release_faults.py")


def _unit(nodeid: str) -> str:
    """The pytest-xdist scheduling unit of a test: its file, or "ray" for the Ray modules."""
    path = nodeid.split("::", 1)[0]
    return "ray" if path.rsplit("/", 1)[-1] in RAY_MODULES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under ``--dist loadfile`` (pyproject's addopts) each test file is one unit, so its module and
    session fixtures are built once, in one worker; the Ray modules share one unit. (Not
    ``--dist loadgroup`` with marks: pytest 9.2 keeps node ids in ``Node._id``, and pytest-xdist
    3.8 still appends the group to ``_nodeid``, so every test became a unit of its own.)"""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrRay(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return FileOrRay(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Units (see ``_unit``) in this order: the full demo run first (``test_flow_e2e``: it leaves
    the model results other modules read, see the ``model_results`` fixture), then ``BEFORE_RAY``
    (slow units that read no model result: the other worker's first ~15 minutes, a little longer
    than the demo run takes to leave its results), then Ray (the longest unit, whose reference run
    then finds the rewrites made instead of generating them again), then the other units with slow
    tests, then the quick ones, so that no long unit starts last and runs alone
    (``--no-loadscope-reorder`` keeps this order instead of sorting by test count). The tests of a
    unit keep their order."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_unit(item.nodeid), []).append(item)

    def rank(unit: str) -> tuple[int, bool]:
        group = (0 if unit.endswith("tests/test_flow_e2e.py") else
                 1 if any(unit.endswith(f"tests/{name}") for name in BEFORE_RAY) else
                 2 if unit == "ray" else 3)
        return group, not any(i.get_closest_marker("slow") for i in units[unit])

    items[:] = [i for u in sorted(units, key=rank) for i in units[u]]


def pytest_report_header(config: pytest.Config) -> str:
    if FULL:
        return f"real text: the full shared corpora at {CORPORA}"
    why = (f"CURATE_CORPORA={os.environ['CURATE_CORPORA']}" if os.environ.get("CURATE_CORPORA")
           else f"no shared corpora at {SHARED}")
    return (f"real text: the bundled sample at {SAMPLE} (about 4 MB; {why}); tests that need the full "
            "corpora are skipped")


@pytest.fixture(scope="session")
def corpora() -> Path:
    """Real text: the full shared corpora where present, else the bundled sample (same file names,
    fewer rows: the first rows of each file)."""
    if os.environ.get("CURATE_CORPORA") and not (SHARED / "wiki_en.parquet").exists():
        pytest.fail(f"CURATE_CORPORA={os.environ['CURATE_CORPORA']} holds no wiki_en.parquet; point it at "
                    "the shared/corpora folder, or unset it to use the bundled sample")
    return CORPORA


@pytest.fixture(scope="session")
def full_corpora(corpora: Path) -> Path:
    """The full shared corpora; skips (saying so) where only the bundled sample is available."""
    if not FULL:
        pytest.skip("needs the full shared corpora (../shared/corpora or CURATE_CORPORA); "
                    "this run has the bundled sample only")
    return corpora


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def model_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's demo runs leave their model results for the modules that share them
    (tests/helpers.py ``session_results``)."""
    from tests.helpers import session_results
    return session_results(tmp_path_factory)


@pytest.fixture(scope="session")
def s3_server():
    """A live S3-protocol server (moto's standalone server) for the whole session; its client
    variables (AWS_ENDPOINT_URL, credentials) are set in this process and inherited by children.
    Make a fresh bucket per test with ``s3_server.bucket()``."""
    from tests.s3server import S3Server
    server = S3Server().start()
    old = server.apply_env()
    try:
        yield server
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
