"""`vmxlab demo`: every step of the tour is an experiment whose expected outcome is checked here.

The rows' checks are computed from the runs (see vmxlab/explain/demo.py); this test fails if any
experiment stops showing what the tour claims.
"""

from __future__ import annotations

import pytest

from vmxlab.explain.demo import tour


@pytest.fixture(scope="module")
def rows():
    return {r.step: r for r in tour()}


@pytest.mark.parametrize("step", ["1", "2a", "2b", "3", "4", "5", "6a", "6b", "7", "8", "9"])
def test_tour_step_shows_what_it_claims(rows, step: str) -> None:
    row = rows[step]
    assert row.checks, f"step {step} checks nothing"
    failed = [name for name, ok in row.checks.items() if not ok]
    assert not failed, f"step {step}: {failed}: {row.happened}"


def test_demo_command_exit_status(capsys) -> None:
    from vmxlab.cli import main

    assert main(["demo", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"step": "2b"' in out
