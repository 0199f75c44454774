"""Suite-wide: counts of fuzz inputs run, printed in the terminal summary."""

from __future__ import annotations

from collections import Counter

import pytest

FUZZ_INPUTS: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_INPUTS:
        terminalreporter.section("fuzz inputs run")
        for name, count in sorted(FUZZ_INPUTS.items()):
            terminalreporter.write_line(f"{name}: {count}")
        terminalreporter.write_line(f"total: {sum(FUZZ_INPUTS.values())}")


def pytest_report_header() -> str:
    # CI-visible: which Debian, containerd, runc and Python this run used.
    from tests.e2e.containerd_versions import platform_summary

    return platform_summary()
