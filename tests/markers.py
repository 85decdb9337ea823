"""The check of the `slow` marker: a test is marked `slow` exactly when it trains a model, launches a process or runs
a notebook, itself or through a fixture it uses. A pytest plugin; tests/conftest.py imports its hooks.

Recording: four entry points are wrapped, once per process, to note that they were called and then call through:
`transformers.Trainer.train` and `Trainer.training_step` (every training run, sft.core.train.train's and the
Trainer's, and the optimizer steps tests make by hand through the Trainer's own code),
`subprocess.Popen.__init__` (subprocess.run/check_output, torchrun, accelerate, the scripts, a notebook's kernel,
and lm-eval's evaluate, which runs `git describe` and torch's collect_env (`pip list`, ...) for its logs),
`multiprocessing.process.BaseProcess.start` (multiprocessing and torch.multiprocessing workers) and
`papermill.execute_notebook`. Each fixture's setup is recorded on its own (the events between the start and the end
of pytest_fixture_setup), so a session- or module-scoped fixture that trains counts for every test that uses it,
not only for the first one that happened to build it. A test's events are those of its setup and call, plus those of
every fixture in its closure.

Checking: once a test has passed, a test that did any of these without the marker, or carries the marker and did
none of them, is turned into a failure that says which and why (skipped and failed tests are left as they are). The
run then exits non-zero and the failures are listed in pytest's short summary. tests/test_markers.py proves the check
can fail, on a test file of its own in a pytester run.
"""

from __future__ import annotations

import functools

import pytest

EVENTS: list[str] = []  # everything recorded in this process, in order; indexes delimit a test's or a fixture's share
_FIXTURE_EVENTS: dict[tuple[str, str], set[str]] = {}  # (fixture name, its baseid) -> what its setup did
_PATCHED = False
_STARTED = pytest.StashKey[int]()

TRAINS, LAUNCHES, NOTEBOOK = "trains a model", "launches a process", "runs a notebook"


def _record(kind: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        EVENTS.append(kind)
        return fn(*args, **kwargs)

    wrapper.__recorded__ = True
    return wrapper


def install() -> None:
    """Wrap the entry points (once per process; an entry point that cannot be imported is left out)."""
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    import multiprocessing.process
    import subprocess

    subprocess.Popen.__init__ = _record(LAUNCHES, subprocess.Popen.__init__)
    multiprocessing.process.BaseProcess.start = _record(LAUNCHES, multiprocessing.process.BaseProcess.start)
    try:
        from transformers import Trainer

        Trainer.train = _record(TRAINS, Trainer.train)
        Trainer.training_step = _record(TRAINS, Trainer.training_step)  # a step by hand: forward, backward
    except ImportError:  # pragma: no cover - the project pins transformers
        pass
    try:
        import papermill

        papermill.execute_notebook = _record(NOTEBOOK, papermill.execute_notebook)
    except ImportError:  # pragma: no cover - the project pins papermill
        pass


def mismatch(marked_slow: bool, events) -> str | None:
    """Why a test's `slow` marker is wrong, given what it did; None when it is right."""
    did = sorted(set(events))
    if did and not marked_slow:
        return f"not marked slow, but it {' and '.join(did)} (itself or through a fixture): add @pytest.mark.slow"
    if marked_slow and not did:
        return ("marked slow, but it neither trains a model, nor launches a process, nor runs a notebook "
                "(nor does any fixture it uses): remove @pytest.mark.slow")
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
    start = len(EVENTS)
    yield
    key = (fixturedef.argname, fixturedef.baseid)
    _FIXTURE_EVENTS[key] = _FIXTURE_EVENTS.get(key, set()) | set(EVENTS[start:])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.stash[_STARTED] = len(EVENTS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed or _STARTED not in item.stash:
        return
    events = set(EVENTS[item.stash[_STARTED]:]) | _closure_events(item)
    why = mismatch(item.get_closest_marker("slow") is not None, events)
    if why:
        report.outcome = "failed"
        report.longrepr = f"slow marker check: {item.nodeid} is {why}"
