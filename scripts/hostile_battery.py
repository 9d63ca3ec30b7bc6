"""Run the hostile-input battery against a checkout and print one row per case.

    PYTHON scripts/hostile_battery.py [--only GLOB ...] [--skip GLOB ...] [--json OUT.json] > rows.jsonl

PYTHON is the interpreter of the checkout to test: its ``imgsim`` is the one
imported (this script only adds ``tests/`` of *this* checkout to the path, for
the case table). ``--compare BEFORE.json AFTER.json`` prints the before → after
table in Markdown instead of running anything.
"""

import argparse
import fnmatch
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def run(args):
    import imgsim

    import hostile_cases as hc

    rows = []
    root = tempfile.mkdtemp(prefix="hostile-")
    resources = hc.Resources(os.path.join(root, "shared"))
    print(f"imgsim from {os.path.dirname(imgsim.__file__)}", file=sys.stderr)
    started = args.start_at is None
    for i, case in enumerate(hc.CASES):
        started = started or case.id == args.start_at
        if not started or args.only and not any(fnmatch.fnmatch(case.id, g) for g in args.only):
            continue
        if args.skip and any(fnmatch.fnmatch(case.id, g) for g in args.skip):
            row = {"id": case.id, "item": case.item, "code": "not run", "changed": [],
                   "message": "(skipped: --skip)", "problems": [], "seconds": 0}
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        ctx = hc.Ctx(os.path.join(root, f"{i:03d}-{case.id}"), resources)
        start = time.time()
        try:
            results = hc.run_case(case, ctx, timeout=args.timeout)
        except Exception as exc:  # a setup that this imgsim cannot do
            results = [("", hc.Result("setup failed", "", f"{type(exc).__name__}: {exc}"))]
        finally:
            ctx.close()
        for suffix, result in results:
            expected = hc.CUSTOM_EXPECT.get(case.id + suffix)
            code, names = expected if expected else (None, None)
            problems = hc.verdict(case, result, ctx, expected_code=code, names=names)
            row = {"id": case.id + suffix, "item": case.item, "code": result.code,
                   "message": result.message()[:300], "changed": result.changed[:5],
                   "problems": problems, "seconds": round(time.time() - start, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def read_rows(path):
    """Rows from a --json file or from the JSON lines the script prints."""
    text = open(path).read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


CASE_DIR = re.compile(r"/tmp/[\w.-]*hostile-[^/\s]*/(\d+-[^/\s]+/)?")


def cell(text, width=160):
    """A table cell: the case's temporary folder left out, cut to ``width``, pipes escaped."""
    text = CASE_DIR.sub("", str(text)).replace("\n", " ")
    text = text if len(text) <= width else text[:width - 1] + "…"
    return text.replace("|", "\\|")


def verdict_cell(row):
    if row.get("code") in ("skipped", "not run"):
        return str(row["code"])
    problems = row.get("problems") or []
    if not problems:
        return "ok"
    changed = row.get("changed") or []
    text = "; ".join(p for p in problems if not p.startswith("files changed"))
    if changed:
        stubs = sorted({"/".join(c.split("/")[:2]) for c in changed})
        text += ("; " if text else "") + "left behind: " + ", ".join(stubs[:3])
    return cell(text, 120)


def compare(before_path, after_path):
    before = {r["id"]: r for r in read_rows(before_path)}
    after = read_rows(after_path)
    print("| case | item | before: exit, message | before | after: exit, message | after |")
    print("|---|---|---|---|---|---|")
    for r in after:
        b = before.get(r["id"], {"code": "–", "message": "(not run)", "problems": ["not run"]})
        print(f"| {r['id']} | {r['item']} | {cell(b['code'])}: {cell(b['message'])} | {verdict_cell(b)} | "
              f"{cell(r['code'])}: {cell(r['message'])} | {verdict_cell(r)} |")
    def passed(rows):
        return sum(1 for x in rows if not x.get("problems") and x.get("code") not in ("skipped", "not run"))

    skipped = sum(1 for r in after if r.get("code") == "skipped")
    print(f"\n{len(after)} cases ({skipped} skipped here); pass before: "
          f"{passed(before.get(r['id'], {'problems': [1]}) for r in after)}, after: {passed(after)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="case id patterns")
    parser.add_argument("--skip", nargs="+", help="case id patterns not to run (e.g. a case that "
                        "makes old code allocate 30 GB)")
    parser.add_argument("--start-at", help="the first case to run (resuming a killed battery)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per case")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print the table")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        run(args)


if __name__ == "__main__":
    main()
