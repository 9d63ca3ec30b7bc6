"""The hostile-input battery (``tests/hostile_cases.py``), one test per case.

Each case asserts the exit code, that the one-line message names the file or
argument, that no traceback is printed and that nothing that existed before
changed. Cases run in-process (``imgsim.cli.main``), sharing one tiny trained
run; only the lock/SIGKILL cases start a second process.
"""

import pytest

import hostile_cases as hc


@pytest.fixture(scope="session")
def resources(tmp_path_factory):
    return hc.Resources(tmp_path_factory.mktemp("hostile-shared"))


@pytest.mark.parametrize("case", hc.CASES, ids=hc.IDS)
def test_hostile_input(case, resources, tmp_path):
    ctx = hc.Ctx(tmp_path / "case", resources)
    try:
        results = hc.run_case(case, ctx, timeout=240)
    finally:
        ctx.close()
    problems = []
    for suffix, result in results:
        if result.code == "skipped":
            pytest.skip(result.err)
        expected = hc.CUSTOM_EXPECT.get(case.id + suffix)
        code, names = expected if expected else (None, None)
        found = hc.verdict(case, result, ctx, expected_code=code, names=names)
        problems += [f"{case.id}{suffix}: {p}" for p in found]
    assert not problems, "\n".join(problems) + "\n--- stderr ---\n" + results[-1][1].err[-3000:]


def test_every_verb_is_covered():
    verbs = {c.id.split("-")[0] for c in hc.CASES}
    assert {"train", "embed", "evaluate", "sweep", "serve", "demo", "reconstruct", "score",
            "api", "cli"} <= verbs
    assert len(hc.CASES) >= 120
