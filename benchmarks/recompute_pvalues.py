"""Recompute every p-value the study publishes from the raw per-seed numbers in its JSON, and check the text.

    python benchmarks/recompute_pvalues.py     # every benchmarks/results/mimo_study*.json, its .md and the READMEs

For each study JSON: the t-test over seeds of every arm against the baseline (scipy's paired
`ttest_rel` of the per-seed final values, not the report's code path), its Holm adjustment over the
table, each seed's paired t-test over clips, and the same for the robustness curves. Then every
`p = X` printed in the study's markdown, and in the "Does MiMo help?" section of each README that has one
(benchmarks/results/README.md holds the study's narrative), must be one of
those numbers at the precision it is printed with. Exits 1, naming the p-values that are not.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from scipy import stats

from mimo_study import HIGHER_IS_BETTER, PER_CLIP, RESULTS, ROOT, per_clip, scalar_metrics
from study_statistics import holm

PRINTED_P = re.compile(r"p = ([0-9.]+(?:e-?[0-9]+)?)")
README_SECTION = "## Does MiMo help?"


def recompute(payload: dict) -> dict[str, float]:
    """{what was tested: p} from the JSON's raw evaluations and per-seed robustness curves."""
    final = str(payload["settings"]["eval_steps"][-1])
    evaluations, p_values = payload["evaluations"], {}
    baseline = evaluations["baseline"]
    seed_tests = {}
    for arm, seeds in evaluations.items():
        paired = [s for s in seeds if arm != "baseline" and final in seeds[s] and final in baseline.get(s, {})]
        for metric in HIGHER_IS_BETTER if paired else ():
            ours = [scalar_metrics(seeds[s][final])[metric] for s in paired]
            theirs = [scalar_metrics(baseline[s][final])[metric] for s in paired]
            seed_tests[f"{arm} {metric}"] = stats.ttest_rel(ours, theirs).pvalue if len(paired) > 1 else math.nan
            for s in paired if metric in PER_CLIP else ():
                clips = per_clip(seeds[s][final], metric), per_clip(baseline[s][final], metric)
                p_values[f"{arm} {metric} seed {s} over clips"] = stats.ttest_rel(*clips).pvalue
    p_values |= _with_holm(seed_tests)
    robustness = payload.get("robustness_per_seed", {})
    robust_baseline = robustness.get("baseline", {})
    robust_tests = {}
    for arm, seeds in robustness.items():
        paired = [s for s in seeds if arm != "baseline" and s in robust_baseline]
        for kind, rows in next(iter(seeds.values())).items() if paired else ():
            for index, row in enumerate(rows):
                if row["strength"] > 0:
                    ours = [seeds[s][kind][index]["velocity_error_change"] for s in paired]
                    theirs = [robust_baseline[s][kind][index]["velocity_error_change"] for s in paired]
                    robust_tests[f"{arm} {kind} {row['strength']:g}"] = stats.ttest_rel(ours, theirs).pvalue
    return p_values | _with_holm(robust_tests)


def _with_holm(tests: dict[str, float]) -> dict[str, float]:
    adjusted = holm(list(tests.values()))
    return tests | {f"{name} (Holm)": p for name, p in zip(tests, adjusted, strict=True)}


def unmatched(text: str, p_values: dict[str, float]) -> list[str]:
    """Every `p = X` in `text` that no recomputed p-value rounds to at X's printed precision."""
    values = [p for p in p_values.values() if not math.isnan(p)]
    missing = []
    for printed in PRINTED_P.findall(text):
        digits = len(printed.split("e")[0].replace(".", "").lstrip("0")) or 1
        if not any(float(f"{p:.{digits}g}") == float(printed) for p in values):
            missing.append(printed)
    return missing


def readme_section(readme: Path) -> str:
    text = readme.read_text()
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    return text[start : end if end > 0 else None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, nargs="+", default=[ROOT / "README.md", RESULTS / "README.md"])
    args = parser.parse_args(argv)
    everything, failures = {}, []
    for path in sorted(args.results.glob("mimo_study*.json")):
        p_values = recompute(json.loads(path.read_text()))
        everything |= {f"{path.stem}: {name}": p for name, p in p_values.items()}
        for name, p in p_values.items():
            print(f"{path.stem}: {name}: p = {p:.3g}")
        report = path.with_suffix(".md")
        failures += [f"{report.name}: p = {p}" for p in unmatched(report.read_text(), p_values)]
    for readme in args.readme:
        if readme.is_file() and README_SECTION in readme.read_text():
            failures += [f"{readme}: p = {p}" for p in unmatched(readme_section(readme), everything)]
    for failure in failures:
        print(f"not recomputable from the published JSON: {failure}", file=sys.stderr)
    print(f"{len(everything)} p-values recomputed; {len(failures)} printed ones match none", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
