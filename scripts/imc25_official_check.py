"""Check ``imgsim score --official`` against a local copy of the IMC 2025 hosts' ``metric.py``.

``python scripts/imc25_official_check.py METRIC_PY [--cases 200] [--write-reference]``

The official code (``imc25-utils`` version 6, a Kaggle dataset of the competition hosts) has no
licence that allows committing it, so it is not in this repository. This script scores seeded
random cases (``tests/test_imc.py::write_case``: shuffled rows, outliers, split and merged
clusters, scenes sharing no image with any cluster, small scenes) with both and reports the
largest difference; where the official code fails (``LinAlgError``), imgsim must have warned.
``--write-reference`` rewrites ``tests/reference/imc25_official_scores.json`` (40 cases, seed 7),
which the test suite checks without the official code.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from test_imc import write_case  # noqa: E402

from imgsim.imc import score  # noqa: E402

SOURCE = ("imc25-utils metric.py, version 6 (the IMC 2025 hosts' Kaggle dataset; stored public copy: "
          "yangyefd/IMC2025 imc25-utils/versions/6/metric.py), score(gt_csv, user_csv, thresholds_csv) "
          "with its defaults; run outside the repository, not committed")


def official_score(metric, gt, sub, th):
    """The official (final, {dataset: score}) in percent, or None where it raises LinAlgError."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            (final, *_), (per, *_) = metric.score(gt_csv=gt, user_csv=sub, thresholds_csv=th)
        except np.linalg.LinAlgError:
            return None
    return float(final), {k: float(v) for k, v in per.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metric", help="path of the official metric.py")
    parser.add_argument("--cases", type=int, default=200, help="random cases to compare")
    parser.add_argument("--seed", type=int, default=2025, help="seed of the random cases")
    parser.add_argument("--write-reference", action="store_true",
                        help="rewrite tests/reference/imc25_official_scores.json (40 cases, seed 7)")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("imc25_metric", args.metric)
    metric = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metric)
    n, seed = (40, 7) if args.write_reference else (args.cases, args.seed)
    rng, worst, failed, cases = np.random.default_rng(seed), 0.0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            gt, sub, th = write_case(__import__("pathlib").Path(tmp), rng, i)
            theirs = official_score(metric, gt, sub, th)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = score(gt, sub, th, official=True)
            if theirs is None:
                failed += 1
                assert any("LinAlgError" in w for w in ours["warnings"]), f"case {i}: no warning"
                continue
            final, per = theirs
            worst = max([worst, abs(ours["score"] - final)]
                        + [abs(100 * ours["datasets"][k]["score"] - v) for k, v in per.items()])
            if args.write_reference:
                cases.append({"gt": gt.read_text(), "submission": sub.read_text(), "thresholds": th.read_text(),
                              "official": {"score": final, "datasets": per}})
    print(f"{n} cases: largest |imgsim --official - official| = {worst:.3g}; official code failed on {failed}")
    if args.write_reference:
        path = os.path.join(REPO, "tests", "reference", "imc25_official_scores.json")
        with open(path, "w") as f:
            f.write(json.dumps({"source": SOURCE, "cases": cases}, indent=1) + "\n")
        print(f"wrote {path}")
    return 0 if worst <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
