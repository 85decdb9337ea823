"""The check of the `slow` marker: a test is marked `slow` exactly when it trains a model, launches a process, runs
a notebook (itself or through a fixture it uses) or takes long: more than CPU_LIMIT_S seconds of CPU, its fixtures'
setup included. A pytest plugin; tests/conftest.py imports its hooks.

Recording: four entry points are wrapped, once per process, to note that they were called and then call through:
`transformers.Trainer.train` and `Trainer.training_step` (every training run, sft.core.train.train's and the
Trainer's, and the optimizer steps tests make by hand through the Trainer's own code),
`subprocess.Popen.__init__` (subprocess.run/check_output, torchrun, accelerate, the scripts, a notebook's kernel,
and lm-eval's evaluate, which runs `git describe` and torch's collect_env (`pip list`, ...) for its logs),
`multiprocessing.process.BaseProcess.start` (multiprocessing and torch.multiprocessing workers) and
`papermill.execute_notebook` (the Trainer's and papermill's when their modules are first imported, so that the check
itself imports neither). Each fixture's setup is recorded on its own (the events between the start and the end
of pytest_fixture_setup), so a session- or module-scoped fixture that trains counts for every test that uses it,
not only for the first one that happened to build it. A test's events are those of its setup and call, plus those of
every fixture in its closure.

Time: CPU time (time.process_time: every thread of the worker), not wall time, which a busy machine stretches
several-fold (a test took 83 s of wall time and 17 s of CPU on 2 cores shared by 8 jobs). A test's CPU is that of
its setup and call, where a shared fixture's setup is replaced by what it cost when it was built, counted for every
test that uses it (as its events are): a test is as slow as what it needs, whichever test happened to build it.

Checking: once a test has passed, a test that did any of these without the marker, or used more than CPU_LIMIT_S,
or carries the marker and did none of them in less than CPU_FLOOR_S, is turned into a failure that says which and
why (skipped and failed tests are left as they are). The run then exits non-zero and the failures are listed in
pytest's short summary; the tests that used the most CPU are listed after it. tests/test_markers.py proves the check
can fail, on test files of its own in pytester runs.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import time

import pytest

EVENTS: list[str] = []  # everything recorded in this process, in order; indexes delimit a test's or a fixture's share
_FIXTURE_EVENTS: dict[tuple[str, str], set[str]] = {}  # (fixture name, its baseid) -> what its setup did
_FIXTURE_CPU: dict[tuple[str, str], float] = {}  # (name, baseid) -> CPU seconds of a shared fixture's setup
_EXCLUDED = [0.0]  # CPU seconds of this process not charged to the test that spent them: first imports of modules,
# and shared (module, class, package, session) fixtures' setups, which are charged to every test that uses them
_PATCHED = False
_STARTED = pytest.StashKey[int]()
_CPU_START = pytest.StashKey[tuple[float, float]]()

TRAINS, LAUNCHES, NOTEBOOK = "trains a model", "launches a process", "runs a notebook"
CPU_LIMIT_S = 5.0  # a test not marked slow uses at most this much CPU, fixtures included (see docs/testing.md)
CPU_FLOOR_S = 1.0  # a test marked slow for its time alone uses at least this much: between the two, either is right


def _record(kind: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        EVENTS.append(kind)
        return fn(*args, **kwargs)

    wrapper.__recorded__ = True
    return wrapper


def _wrap_trainer(module) -> None:
    module.Trainer.train = _record(TRAINS, module.Trainer.train)
    module.Trainer.training_step = _record(TRAINS, module.Trainer.training_step)  # a step by hand: forward, backward


def _wrap_papermill(module) -> None:
    module.execute_notebook = _record(NOTEBOOK, module.execute_notebook)


# Entry points wrapped when their module is first imported, not at start: importing them costs 2.7 s of CPU
# (transformers.trainer) and 1.6 s (papermill) in every xdist worker and in the controller, which run no test
# that needs them unless a test file imports them.
_ON_IMPORT = {"transformers.trainer": _wrap_trainer, "papermill": _wrap_papermill}
_FILE_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader,
                 importlib.machinery.ExtensionFileLoader)
_IMPORTING = [0]  # module executions in progress (an import runs the imports at its top)


class _WatchImports(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders find each module, then times its first execution (a module is
    imported once per process, by whichever test needs it first: that cost is not the test's, and counting it would
    make a test's time depend on the order the tests ran in) and wraps the entry points of _ON_IMPORT."""

    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                if isinstance(spec.loader, _FILE_LOADERS):  # one loader per module: safe to wrap
                    spec.loader.exec_module = self.timed(spec.loader.exec_module, _ON_IMPORT.get(name))
                return spec
        return None

    @staticmethod
    def timed(run, wrap):
        def exec_module(module):
            start = time.process_time()
            _IMPORTING[0] += 1
            try:
                run(module)
            finally:
                _IMPORTING[0] -= 1
                if not _IMPORTING[0]:  # the outermost import: the nested ones are part of it
                    _EXCLUDED[0] += time.process_time() - start
            if wrap is not None:
                wrap(module)

        return exec_module


def install() -> None:
    """Wrap the entry points (once per process; the Trainer and papermill when they are first imported)."""
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    import multiprocessing.process
    import subprocess

    subprocess.Popen.__init__ = _record(LAUNCHES, subprocess.Popen.__init__)
    multiprocessing.process.BaseProcess.start = _record(LAUNCHES, multiprocessing.process.BaseProcess.start)
    for name, wrap in _ON_IMPORT.items():
        if name in sys.modules:  # imported before the check started (a conftest, a plugin)
            wrap(sys.modules[name])
    sys.meta_path.insert(0, _WatchImports())


def mismatch(marked_slow: bool, events, cpu_s: float = 0.0, fixtures: dict[str, float] | None = None) -> str | None:
    """Why a test's `slow` marker is wrong, given what it did and the CPU seconds it used; None when it is right."""
    did = sorted(set(events))
    if did and not marked_slow:
        return f"not marked slow, but it {' and '.join(did)} (itself or through a fixture): add @pytest.mark.slow"
    if cpu_s > CPU_LIMIT_S and not marked_slow:
        costly = sorted((fixtures or {}).items(), key=lambda kv: -kv[1])
        shared = "".join(f"{', ' if k else ': '}{name} {s:.1f} s" for k, (name, s) in enumerate(costly) if s >= 0.1)
        return (f"not marked slow, but it used {cpu_s:.1f} s of CPU (itself and its fixtures{shared}; a fast test "
                f"uses at most {CPU_LIMIT_S:g} s): add @pytest.mark.slow, or make it cheaper (a smaller input, a "
                "fixture built once per session or cached on disk)")
    if marked_slow and not did and cpu_s < CPU_FLOOR_S:
        return ("marked slow, but it neither trains a model, nor launches a process, nor runs a notebook (nor does "
                f"any fixture it uses), and it used {cpu_s:.1f} s of CPU (under {CPU_FLOOR_S:g} s): "
                "remove @pytest.mark.slow")
    return None


def _closure_events(item) -> set[str]:
    out: set[str] = set()
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return out
    for name in item.fixturenames:
        for fixturedef in info.name2fixturedefs.get(name, ()):
            out |= _FIXTURE_EVENTS.get((fixturedef.argname, fixturedef.baseid), set())
    return out


def pytest_configure(config) -> None:
    install()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    start, cpu, excluded = len(EVENTS), time.process_time(), _EXCLUDED[0]
    yield
    key = (fixturedef.argname, fixturedef.baseid)
    _FIXTURE_EVENTS[key] = _FIXTURE_EVENTS.get(key, set()) | set(EVENTS[start:])
    if fixturedef.scope != "function":  # a function-scoped fixture is set up in each test's own time
        spent = (time.process_time() - cpu) - (_EXCLUDED[0] - excluded)  # less imports and nested shared fixtures
        _FIXTURE_CPU[key] = max(_FIXTURE_CPU.get(key, 0.0), spent)
        _EXCLUDED[0] += spent


def _closure_cpu(item) -> dict[str, float]:
    """The CPU seconds of each shared fixture in the test's closure (as recorded when it was set up)."""
    info = getattr(item, "_fixtureinfo", None)
    out: dict[str, float] = {}
    for name in item.fixturenames if info is not None else ():
        for fixturedef in info.name2fixturedefs.get(name, ()):
            key = (fixturedef.argname, fixturedef.baseid)
            if key in _FIXTURE_CPU:
                out[fixturedef.argname] = out.get(fixturedef.argname, 0.0) + _FIXTURE_CPU[key]
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.stash[_STARTED] = len(EVENTS)
    item.stash[_CPU_START] = (time.process_time(), _EXCLUDED[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed or _STARTED not in item.stash:
        return
    events = set(EVENTS[item.stash[_STARTED]:]) | _closure_events(item)
    cpu0, excluded0 = item.stash[_CPU_START]
    own = (time.process_time() - cpu0) - (_EXCLUDED[0] - excluded0)  # the shared fixtures are added back below
    fixtures = _closure_cpu(item)
    cpu_s = own + sum(fixtures.values())
    report.user_properties.append(("cpu_s", cpu_s))
    why = mismatch(item.get_closest_marker("slow") is not None, events, cpu_s, fixtures)
    if why:
        report.outcome = "failed"
        report.longrepr = f"slow marker check: {item.nodeid} is {why}"


_CPU_REPORTS: list[tuple[float, str]] = []


def pytest_runtest_logreport(report) -> None:
    if report.when == "call":
        for name, value in report.user_properties:
            if name == "cpu_s":
                _CPU_REPORTS.append((value, report.nodeid))


def pytest_terminal_summary(terminalreporter) -> None:
    """The tests that used the most CPU, beside pytest's --durations (wall time, which a busy machine inflates)."""
    if not _CPU_REPORTS:
        return
    cpu = sorted(c for c, _ in _CPU_REPORTS)
    at = lambda q: cpu[min(len(cpu) - 1, int(q * len(cpu)))]  # noqa: E731
    terminalreporter.write_sep("=", f"CPU per test (itself and its fixtures): {len(cpu)} tests, sum {sum(cpu):.1f} s, "
                                    f"median {at(0.5):.3f} s, 90% {at(0.9):.2f} s, max {cpu[-1]:.2f} s")
    for seconds, nodeid in sorted(_CPU_REPORTS, reverse=True)[:10]:
        terminalreporter.write_line(f"{seconds:.2f}s {nodeid}")
