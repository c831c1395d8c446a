"""The README's results table against the benchmark JSON it quotes, so the two cannot drift."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _quickstart(name: str):
    def get(d: dict) -> dict:
        m = d["summary"]["models"][name]
        return {"steps": m["steps"], "psnr": m["psnr"], "over_copy": m["over_copy"], "psnr_moving": m["psnr_moving"],
                "over_copy_moving": m["over_copy_moving"]}
    return get


def _regression(d: dict) -> dict:
    reg, copy = d["final"]["methods"]["regression"], d["final"]["methods"]["copy"]
    return {"steps": d["regression"]["steps"], "psnr": reg["psnr"], "over_copy": reg["psnr"] - copy["psnr"],
            "psnr_moving": reg["psnr_moving"], "over_copy_moving": reg["psnr_moving"] - copy["psnr_moving"]}


def _copy(d: dict) -> dict:
    return {"psnr": d["summary"]["copy"]["psnr"], "psnr_moving": d["summary"]["copy"]["psnr_moving"]}


# Each row of the table (its first cell) and where its numbers come from.
SOURCES = {
    "`cpu-world`": ("quickstart.json", _quickstart("cpu-world")),
    "`cpu`": ("quickstart.json", _quickstart("cpu")),
    "`cpu-world`, regression twin": ("quality-cpu-world.json", _regression),
    "copy the current frame": ("quickstart.json", _copy),
}
COLUMNS = {"steps": "steps", "PSNR": "psnr", "over copy": "over_copy", "PSNR moving": "psnr_moving",
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
            got = _number(cell)
            tolerance = 0.5 if key == "steps" else 0.006  # the README rounds to 2 decimals
            if abs(got - want) > tolerance:
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


def test_the_table_names_its_pair_set_and_every_source_scored_the_same_pairs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What you get"):]
    summary = json.loads((RESULTS / "quickstart.json").read_text())["summary"]
    pairs = re.search(r"all ([\d,]+) test pairs", summary["pairs"]).group(1)
    assert f"all {pairs} test pairs" in section[: section.index("\n## ", 1)]
    regression = json.loads((RESULTS / "quality-cpu-world.json").read_text())
    assert regression["final"]["pairs"] == int(pairs.replace(",", ""))
