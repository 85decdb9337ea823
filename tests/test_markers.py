"""The check of the `slow` marker (tests/markers.py) can fail: on its classification, on the entry points it wraps,
and on a test file of its own run by pytest, where it fails exactly the tests whose marker is wrong."""


import pytest

import markers
from helpers import TESTS
from markers import LAUNCHES, NOTEBOOK, TRAINS, mismatch


@pytest.mark.parametrize("marked, events, wrong", [
    (False, [], False), (True, [TRAINS], False), (True, [LAUNCHES, LAUNCHES], False), (True, [NOTEBOOK], False),
    (False, [TRAINS], True), (False, [LAUNCHES], True), (False, [NOTEBOOK], True), (True, [], True),
])
def test_mismatch_is_a_wrong_marker_either_way(marked, events, wrong):
    why = mismatch(marked, events)
    assert (why is not None) == wrong
    if wrong and marked:
        assert "remove @pytest.mark.slow" in why
    if wrong and not marked:
        assert "add @pytest.mark.slow" in why and all(e in why for e in events)


def test_the_entry_points_are_wrapped():
    import multiprocessing.process
    import subprocess

    import papermill
    from transformers import Trainer

    for fn in (Trainer.train, subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start,
               papermill.execute_notebook):
        assert getattr(fn, "__recorded__", False), fn


def test_recording_counts_a_call(monkeypatch):
    calls = []
    wrapped = markers._record(TRAINS, lambda x: calls.append(x) or x)
    start = len(markers.EVENTS)
    assert wrapped(3) == 3 and calls == [3]  # it calls through
    assert markers.EVENTS[start:] == [TRAINS]
    del markers.EVENTS[start:]


INNER = '''
import multiprocessing
import subprocess
import sys

import pytest


def launch():
    subprocess.run([sys.executable, "-c", ""], check=True)


@pytest.fixture(scope="module")
def launched():
    launch()


def test_plain_ok():
    pass


@pytest.mark.slow
def test_launches_marked_ok():
    launch()


def test_launches_unmarked_wrong():
    launch()


@pytest.mark.slow
def test_idle_marked_wrong():
    pass


@pytest.mark.slow
def test_builds_the_fixture_ok(launched):
    pass


def test_reuses_the_fixture_unmarked_wrong(launched):
    pass  # the fixture launched during the test before: it still counts for this one


def test_multiprocessing_unmarked_wrong():
    p = multiprocessing.get_context("spawn").Process(target=print)
    p.start()
    p.join()


@pytest.mark.slow
def test_skipped_is_left_alone():
    pytest.skip("nothing ran")
'''


@pytest.mark.slow
def test_the_check_fails_exactly_the_wrong_markers(pytester):
    pytester.makeini('[pytest]\nmarkers =\n    slow: trains, launches or runs a notebook\n')
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
                          "from markers import pytest_configure, pytest_fixture_setup, pytest_runtest_makereport, "
                          "pytest_runtest_setup\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfs")
    result.assert_outcomes(passed=3, failed=4, skipped=1)
    assert result.ret != 0
    failed = sorted(line.split("::")[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED"))
    assert failed == ["test_idle_marked_wrong", "test_launches_unmarked_wrong", "test_multiprocessing_unmarked_wrong",
                      "test_reuses_the_fixture_unmarked_wrong"]
    result.stdout.fnmatch_lines(["*test_launches_unmarked_wrong is not marked slow, but it launches a process*",
                                 "*test_idle_marked_wrong is marked slow, but it neither trains*"], consecutive=False)



@pytest.mark.parametrize("marked, cpu_s, wrong", [
    (False, 0.0, False), (False, markers.CPU_LIMIT_S, False), (False, markers.CPU_LIMIT_S + 0.1, True),
    (True, markers.CPU_LIMIT_S + 0.1, False), (True, markers.CPU_FLOOR_S, False),
    (True, markers.CPU_FLOOR_S - 0.1, True),
])
def test_mismatch_by_cpu_time_alone(marked, cpu_s, wrong):
    why = mismatch(marked, [], cpu_s, {"built_once": cpu_s / 2})
    assert (why is not None) == wrong
    if wrong and not marked:
        assert "add @pytest.mark.slow" in why and f"used {cpu_s:.1f} s of CPU" in why and "built_once" in why
    if wrong and marked:
        assert "remove @pytest.mark.slow" in why


# The duration rule with its limits lowered (0.3 s, floor 0.1 s) so that the run takes a second: a test's CPU
# time, not its wall time, counts (a sleep is free, so a busy machine cannot fail a test), and a shared fixture's
# setup counts for every test that uses it.
TIMED = '''
import time

import pytest


def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.fixture(scope="module")
def costly():
    burn(0.5)


def test_quick_ok():
    pass


def test_sleeps_unmarked_ok():
    time.sleep(0.5)


def test_burns_unmarked_wrong():
    burn(0.5)


@pytest.mark.slow
def test_burns_marked_ok():
    burn(0.5)


@pytest.mark.slow
def test_sleeps_marked_wrong():
    time.sleep(0.5)


def test_builds_the_costly_fixture_unmarked_wrong(costly):
    pass


def test_reuses_the_costly_fixture_unmarked_wrong(costly):
    pass  # the fixture was built during the test before: its CPU still counts for this one
'''


@pytest.mark.slow
def test_the_check_fails_exactly_the_long_unmarked_tests(pytester):
    pytester.makeini('[pytest]\nmarkers =\n    slow: trains, launches, runs a notebook or takes long\n')
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport markers\n"
                          "markers.CPU_LIMIT_S, markers.CPU_FLOOR_S = 0.3, 0.1\n"
                          "from markers import pytest_configure, pytest_fixture_setup, pytest_runtest_makereport, "
                          "pytest_runtest_setup\n")
    pytester.makepyfile(test_timed=TIMED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    failed = sorted(line.split("::")[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED"))
    assert failed == ["test_builds_the_costly_fixture_unmarked_wrong", "test_burns_unmarked_wrong",
                      "test_reuses_the_costly_fixture_unmarked_wrong", "test_sleeps_marked_wrong"]
    result.assert_outcomes(passed=3, failed=4)
    result.stdout.fnmatch_lines(["*test_burns_unmarked_wrong is not marked slow, but it used 0.* s of CPU*"
                                 "add @pytest.mark.slow*",
                                 "*test_sleeps_marked_wrong is marked slow, but it neither trains*",
                                 "*test_reuses_the_costly_fixture_unmarked_wrong is not marked slow, but it used "
                                 "0.* s of CPU (itself and its fixtures: costly 0.5 s*"], consecutive=False)
