"""docs/tutorial.md is generated from docs/tutorial.src.md by running its commands (issue 6): it must be
current, and the generator must show what the commands printed, no more and no less."""

from __future__ import annotations

import difflib

import pytest

from vmxlab.explain.tutorial import SOURCE, TARGET, Marker, Output, TutorialError, render, run_command


def fake(stdout: str, stderr: str = "", status: int = 0):
    return lambda _command: Output(stdout, stderr, status)


def test_tutorial_is_current() -> None:
    fresh = render(SOURCE.read_text())
    current = TARGET.read_text()
    if fresh != current:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True),
                                                 "docs/tutorial.md", "regenerated"))[:60])
        pytest.fail("docs/tutorial.md is stale: run `python -m vmxlab.explain.tutorial`\n" + diff)


def test_marker_becomes_the_command_and_its_output() -> None:
    text = render("before\n<!-- run: vmxlab explain sgdt -->\nafter\n", fake("line 1\nline 2\n", "note\n"))
    assert "```console\n$ vmxlab explain sgdt\nline 1\nline 2\nnote\n```" in text
    assert text.endswith("before\n```console\n$ vmxlab explain sgdt\nline 1\nline 2\nnote\n```\nafter\n")


def test_head_and_tail_say_how_much_was_left_out() -> None:
    out = "".join(f"l{i}\n" for i in range(10))
    head = render("<!-- run: vmxlab x | head=3 -->", fake(out))
    assert "l0\nl1\nl2\n[… 7 more lines]\n```" in head and "l3" not in head
    tail = render("<!-- run: vmxlab x | tail=2 -->", fake(out))
    assert "[… 8 lines before]\nl8\nl9\n```" in tail and "l7" not in tail


def test_a_failing_command_shows_its_exit_status() -> None:
    assert "[exit status 1]\n```" in render("<!-- run: vmxlab check-vmcs f -->", fake("bad\n", status=1))


def test_markdown_output_is_stdout_only_and_must_succeed() -> None:
    text = render("<!-- run: vmxlab demo --markdown | markdown -->", fake("| a |\n", "progress\n"))
    assert "`$ vmxlab demo --markdown`\n\n| a |" in text and "progress" not in text and "```" not in text
    with pytest.raises(TutorialError, match="exit status 2"):
        render("<!-- run: vmxlab demo --markdown | markdown -->", fake("", "boom", status=2))


@pytest.mark.parametrize("line", ["<!-- run: ls / -->", "<!-- run: vmxlab x | lines=3 -->"])
def test_bad_markers_are_refused(line: str) -> None:
    with pytest.raises(TutorialError):
        render(line, fake(""))


def test_only_wall_clock_figures_are_masked() -> None:
    out = run_command("vmxlab run guests/hello.asm")
    assert "in … s (… M instr/s)" in out.stderr + out.stdout
    assert Marker.parse("vmxlab run x", "head=2 markdown") == Marker("vmxlab run x", head=2, markdown=True)
