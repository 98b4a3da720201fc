"""Coverage of ``schoolvision estimate``'s 95% interval on the demo, against a top-probability review.

One scan of the demo towns with ``--registry`` (or ``--scan DIR``, a scan made so), then ``--reviews``
seeded stratified samples of its windows (``review build --sample``, budget ``--budget-share`` of the
windows), each answered by the simulated mapper from the demo's true footprints
(:data:`~schoolvision.book.simulate_sample.WINDOW_RULE`) and estimated as ``schoolvision estimate``
does. For each measure: how many 95% intervals cover the true value over the whole frame, the mean
error of the estimate (bias), its RMSE and the intervals' mean width. Target: the interval for the
number of unlisted schools covers the truth in at least 18 of 20 reviews.

Beside it, the naive count: the distinct unlisted schools (candidates and near misses no registry row
confirms) that a review of the same number of items in ``review build --order probability`` order
finds, with the simulated mapper of the ranked queue; its bias against the true number of unlisted
schools is what a ranking cannot tell.

Images and pages are not made (the sample is drawn and answered in memory, as ``review build
--sample`` draws it). Needs a demo (``schoolvision demo --out DIR``: ``scenes/``, ``schools.geojson``,
``registry.csv``) and a run trained on its chips (default ``runs/quick`` and ``data/demo``, what the
book's chapters make). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

MEASURES = ("unlisted_schools", "registry_not_at_school", "schools", "recall", "precision")


def make_scan(args) -> Path:
    """The scan of the demo's towns with its registry (or ``--scan`` as it is)."""
    if args.scan:
        return Path(args.scan)
    from schoolvision.scan.runner import ScanConfig, run_scan

    demo, out = Path(args.demo), Path(args.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_scan(ScanConfig(run=Path(args.run), imagery=[demo / "scenes"], out_dir=out,
                            schools=demo / "schools.geojson", registry=demo / "registry.csv", stride=args.stride,
                            device=args.device, make_map=False, progress=False, overwrite=True))
    return out


def summarise(values: list[dict], truth: float) -> dict:
    """Coverage, bias, RMSE and width of a measure's estimates over the reviews."""
    est = [v["estimate"] for v in values]
    errors = [e - truth for e in est]
    widths = [v["high"] - v["low"] for v in values]
    return {"truth": truth, "covered": sum(v["low"] <= truth <= v["high"] for v in values), "reviews": len(values),
            "bias": round(sum(errors) / len(errors), 4),
            "rmse": round(math.sqrt(sum(e * e for e in errors) / len(errors)), 4),
            "mean_width": round(sum(widths) / len(widths), 4), "min_estimate": round(min(est), 4),
            "max_estimate": round(max(est), 4)}


def schools_by_stratum(frame, truth) -> dict[str, int]:
    """True schools per stratum of the frame (by the window holding their centroid)."""
    from schoolvision.book.simulate_sample import school_windows

    at = school_windows(frame, truth)
    return frame.windows.loc[at[at >= 0], "stratum"].value_counts().sort_index().to_dict()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="data/demo", help="demo folder (scenes/, schools.geojson, registry.csv)")
    parser.add_argument("--run", default="runs/quick", help="a run trained on the demo's chips")
    parser.add_argument("--scan", default=None, help="reuse this scan (made with --registry) instead of scanning")
    parser.add_argument("--out", default="runs/estimate_coverage_scan", help="where the scan goes")
    parser.add_argument("--stride", type=int, default=None, help="scan stride in pixels (default: half a chip)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reviews", type=int, default=20, help="seeded simulated reviews (seeds 0..N-1)")
    parser.add_argument("--budget-share", type=float, default=0.10, help="items reviewed, as a share of the windows")
    parser.add_argument("--floor", type=float, default=0.05, help="lowest P(school) of a near miss")
    args = parser.parse_args(argv)

    import geopandas as gpd
    import pandas as pd

    from schoolvision.book.simulate_sample import answer_sample, top_probability_count, true_measures
    from schoolvision.io.folders import ScanFolder
    from schoolvision.io.schools import read_schools
    from schoolvision.review.estimate import estimate_measures
    from schoolvision.review.sample import SampleConfig, build_frame, draw_sample

    start = time.perf_counter()
    scan = make_scan(args)
    scan_seconds = time.perf_counter() - start
    info = ScanFolder(scan).read_summary()
    names = [s["scene"] for s in info["scenes"]]
    truth = read_schools(Path(args.demo) / "schools.geojson", point_buffer_m=None)
    truth = gpd.GeoDataFrame(truth[truth["scene"].isin(names)], crs=truth.crs)
    frame = build_frame(scan, args.floor)
    true = true_measures(frame, truth)
    budget = max(1, round(args.budget_share * len(frame.windows)))
    runs, allocation = {m: [] for m in MEASURES}, None
    start = time.perf_counter()
    for seed in range(args.reviews):
        items, design = draw_sample(frame, SampleConfig(size=budget, seed=seed, floor=args.floor))
        items = pd.DataFrame(items)
        measures = estimate_measures(design, items, answer_sample(frame, items, truth))
        for m in MEASURES:
            runs[m].append(measures[m])
        allocation = {s: {"N": v["N"], "n": v["n"]} for s, v in design["strata"].items()}
    review_seconds = time.perf_counter() - start
    top = top_probability_count(frame, truth, budget, float((info.get("registry") or {}).get("match_distance_m", 50.0)),
                                args.floor)
    result = {
        "demo": str(args.demo), "run": str(info.get("run", args.run)), "scenes": names,
        "scan": {"candidates": info.get("candidates"), "threshold": info.get("threshold"),
                 "seconds": round(scan_seconds, 1)},
        "frame": {"windows": int(len(frame.windows)), "window_m": frame.window_m},
        "budget": budget, "budget_share": round(budget / len(frame.windows), 4), "allocation": allocation,
        "truth": true,
        "sample": {m: summarise(runs[m], float(true[m])) for m in MEASURES},
        "sample_vs_schools_one_by_one": summarise(runs["unlisted_schools"], float(true["unlisted_schools_one_by_one"])),
        "top_probability": {**top, "bias": top["unlisted_schools_found"] - true["unlisted_schools_one_by_one"]},
        "schools_by_stratum": schools_by_stratum(frame, truth),
        "target": "unlisted_schools covered >= 18 of 20",
        "seconds_per_review": round(review_seconds / max(args.reviews, 1), 3),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
