"""docs/threat-model.md names the test covering each threat: those names, and the corpus cases and size it
gives, must be real."""

from __future__ import annotations

from ._support import REPO


def test_the_threat_model_names_only_tests_that_exist() -> None:
    """docs/threat-model.md lists each threat with the test covering it: every test and corpus case it names must
    exist, and the corpus size it states must be the real one."""
    import ast
    import re

    text = (REPO / "docs" / "threat-model.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`", text))
    assert len(named) >= 20, "the threat model should name the tests that cover each threat"
    missing = []
    for file, test in sorted(named):
        path = REPO / "tests" / "reliability" / file
        tree = ast.parse(path.read_text(encoding="utf-8")) if path.exists() else None
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} if tree else set()
        if test not in names:
            missing.append(f"{file}::{test}")
    assert missing == [], missing
    from .test_bad_input_corpus import CASES

    kinds = "bundle|image|label|remove|predict|state|option|cli"
    cases = set(re.findall(rf'"((?:{kinds})-[A-Za-z0-9._-]+)"', text))
    assert len(cases) >= 100 and sorted(cases - set(CASES)) == [], sorted(cases - set(CASES))
    counts = re.findall(r"\b(\d+) cases\b", text)
    assert str(len(CASES)) in counts, f"the threat model gives the corpus size as {counts}, it has {len(CASES)}"
