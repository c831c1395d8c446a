"""The README's results table against the benchmark JSON it quotes, so the two cannot drift."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _quickstart(name: str):
    def get(d: dict) -> dict:
        m = d["summary"]["models"][name]
        return {"minutes": d["summary"]["stages"][f"train {name}"] / 60, "steps": m["steps"], "sampler": m["sampler"],
                "psnr": m["psnr"], "over_copy": m["over_copy"], "psnr_moving": m["psnr_moving"],
                "over_copy_moving": m["over_copy_moving"]}
    return get


def _copy(d: dict) -> dict:
    return {"psnr": d["summary"]["copy"]["psnr"], "psnr_moving": d["summary"]["copy"]["psnr_moving"]}


# Each row of the table (its first cell) and where its numbers come from.
SOURCES = {
    "`cpu-world`": ("quickstart.json", _quickstart("cpu-world")),
    "`cpu`": ("quickstart.json", _quickstart("cpu")),
    "copy the current frame": ("quickstart.json", _copy),
}
COLUMNS = {"minutes": "minutes", "steps": "steps", "sampler": "sampler", "PSNR": "psnr", "over copy": "over_copy", "PSNR moving": "psnr_moving",
           "over copy, moving": "over_copy_moving"}


def results_table(readme: str) -> tuple[list[str], list[list[str]]]:
    section = readme[readme.index("## What you get"):]
    section = section[: section.index("\n## ", 1)]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|")]
    return rows[0], [r for r in rows[2:]]


def _number(cell: str) -> float:
    found = re.search(r"[+-]?\d[\d,]*(?:\.\d+)?", cell.replace("**", ""))
    assert found, f"no number in {cell!r}"
    return float(found.group().replace(",", ""))


def drift(readme: str) -> list[str]:
    header, rows = results_table(readme)
    problems = []
    for row in rows:
        label = row[0]
        assert label in SOURCES, f"README results row {label!r} names no source in tests/test_readme.py"
        name, get = SOURCES[label]
        truth = get(json.loads((RESULTS / name).read_text()))
        for column, key in COLUMNS.items():
            if key not in truth:
                continue
            cell = row[header.index(column)]
            want = truth[key]
            if isinstance(want, str):
                if cell != want:
                    problems.append(f"{label} / {column}: README {cell!r}, {name} {want!r}")
                continue
            tolerance = {"steps": 0.5, "minutes": 0.5}.get(key, 0.006)  # budgets in whole minutes; dB to 2 decimals
            if abs(_number(cell) - want) > tolerance:
                problems.append(f"{label} / {column}: README {cell!r}, {name} {want:.2f}")
    return problems


def test_the_readme_results_table_matches_the_benchmark_json():
    readme = (ROOT / "README.md").read_text()
    assert drift(readme) == []
    _, rows = results_table(readme)
    assert {r[0] for r in rows} == set(SOURCES)  # every row is there, and checked


def test_a_drifted_figure_is_caught():
    readme = (ROOT / "README.md").read_text()
    header, rows = results_table(readme)
    cell = rows[0][header.index("PSNR")]
    changed = readme.replace(f"| {cell} |", f"| {_number(cell) + 0.1:.2f} |", 1)
    assert changed != readme
    assert len(drift(changed)) == 1


def test_the_table_names_its_pair_set():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What you get"):]
    summary = json.loads((RESULTS / "quickstart.json").read_text())["summary"]
    pairs = re.search(r"all ([\d,]+) test pairs", summary["pairs"]).group(1)
    assert f"all {pairs} test pairs" in section[: section.index("\n## ", 1)]


def test_the_quick_starts_minutes_and_the_shuffled_actions_figure_match_the_benchmark():
    readme = (ROOT / "README.md").read_text()
    summary = json.loads((RESULTS / "quickstart.json").read_text())["summary"]
    section = readme[readme.index("## Quick start"):readme.index("## What you get")]
    rows = [line for line in section.splitlines() if re.match(r"^\|[^-]", line)][1:]  # the table, below its header
    minutes = [_number(row.split("|")[-2]) for row in rows]
    assert minutes == pytest.approx([v / 60 for v in summary["stages"].values()] + [summary["seconds"] / 60], abs=0.051)
    assert f"it took {summary['seconds'] / 60:.1f} minutes" in section
    cost = summary["models"]["cpu-world"]["shuffled_actions_cost_moving"]
    assert re.search(rf"score\s+{cost:.2f} dB lower", readme[readme.index("## What you get"):])
