"""bench.suite_conmon's report rows: ratios against conmon, paired per round, and issue 12's
targets applied to pyshim (pure logic, no podman)."""

from __future__ import annotations

import pytest

from bench.suite_conmon import MONITORS, ConmonResults, rows
from bench.suite_report import markdown_table


def results() -> ConmonResults:
    return ConmonResults(
        run_ms={"conmon": [100.0, 200.0, 100.0], "pyshim": [105.0, 240.0, 130.0],
                "pyshim-cold": [150.0, 300.0, 150.0]},
        exec_ms={"conmon": [50.0, 50.0, 50.0], "pyshim": [50.0, 55.0, 60.0],
                 "pyshim-cold": [75.0, 75.0, 75.0]},
        throughput_mibs={"conmon": [300.0, 400.0, 350.0], "pyshim": [330.0, 400.0, 420.0],
                         "pyshim-cold": [270.0, 360.0, 315.0]},
        pss_kib={"conmon": 400.0, "pyshim": 1800.0, "pyshim-cold": 4000.0},
    )


def test_ratios_are_paired_against_conmon_and_targets_judge_pyshim() -> None:
    pss, run, exec_, throughput = rows(results(), count=20, size_mib=512)
    assert pss.values == pytest.approx({"conmon": 400 / 1024, "pyshim": 1800 / 1024,
                                        "pyshim-cold": 4000 / 1024})
    assert pss.ratio == pytest.approx(4.5)
    assert pss.target is not None and pss.target.met(pss.values["pyshim"], pss.ratio)
    # Per-round ratios 1.05, 1.2, 1.3: the median is 1.2 (not 125 / 100 of the medians).
    assert run.ratio == pytest.approx(1.2)
    assert run.values["pyshim"] == pytest.approx(130.0)
    assert run.target is not None and run.target.met(run.values["pyshim"], run.ratio) is False
    assert exec_.ratio == pytest.approx(1.1)
    assert exec_.target is not None and exec_.target.met(exec_.values["pyshim"], exec_.ratio)
    assert throughput.ratio == pytest.approx(1.1)
    assert throughput.ratio_cold == pytest.approx(0.9)
    assert throughput.higher_is_better
    assert throughput.target is not None
    assert throughput.target.met(None, throughput.ratio) is True
    assert throughput.target.met(None, throughput.ratio_cold) is False


def test_the_pss_target_applies_from_twenty_containers() -> None:
    assert rows(results(), count=5, size_mib=64)[0].target is None


def test_the_table_has_the_monitors_as_columns() -> None:
    table = markdown_table(rows(results(), count=20, size_mib=512), MONITORS)
    header = table.splitlines()[0]
    assert header == ("| figure | conmon | pyshim | pyshim-cold | ratio | ratio cold | "
                      "target |")
    assert "runc-v2" not in table
    assert "| `podman run --rm` /bin/true (ms) | 100.0 | 130.0 | 150.0 | 1.20 | 1.50 |" in table
