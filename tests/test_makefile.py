"""The README's entry points: every target the Makefile declares has a recipe, and runs what the README says."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(target: str) -> list[str]:
    """The commands ``make TARGET`` would run (``make -n``), without running them."""
    result = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout.splitlines()


def test_every_declared_target_has_a_recipe() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (declared,) = re.findall(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE)
    targets = declared.split()
    assert {"demo", "test", "airflow-stop", "db-stop"} <= set(targets)
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.MULTILINE), f"{target} has no rule"
    # a declared target without commands is silently "nothing to be done": each of these runs something
    assert _dry_run("airflow-stop") == [".venv/bin/cbm airflow stop"]
    assert _dry_run("db-stop") == [".venv/bin/cbm db stop"]
    assert _dry_run("demo")[-1] == ".venv/bin/cbm demo run"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert _dry_run("test")[-1] == ".venv/bin/pytest -q"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make test") < readme.index("##")  # among the README's first commands
