"""The README's service examples, run as written against a live server, checked against the answers it shows.

    .venv/bin/python -m tests.readme_examples http://127.0.0.1:8000     # exit 1 on a different answer

The "Examples" part of README.md's Service section is a sequence of ```bash blocks, each followed
by a ```json block with one answer per line. Each bash block runs in one shell (variables carry over
to the next, as in a terminal) from the repository root, with `localhost:8000` replaced by the
server's address. The answers must agree with the README's: the same order of indices, labels and
texts, the same `holds`, and scores and probabilities within `TOLERANCE`.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTION_START = "Examples, run from the repository root"
TOLERANCE = 2e-3


def examples(readme: Path = README) -> list[tuple[str, list[dict]]]:
    """(bash code, expected answers) of each example in the README's service examples."""
    text = readme.read_text()
    start = text.index(SECTION_START)
    end = min(text.index(mark, start) for mark in ("\n## ", "\n### ") if mark in text[start:])
    blocks = re.findall(r"```(bash|json)\n(.*?)```", text[start:end], re.S)
    out = []
    for (kind, code), (next_kind, answers) in zip(blocks, blocks[1:]):
        if kind == "bash" and next_kind == "json":
            out.append((code, [json.loads(line) for line in answers.splitlines() if line.strip()]))
    return out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=TOLERANCE)


def differences(expected, got, where: str = "") -> list[str]:
    """Where `got` departs from `expected`: keys, list lengths, strings/bools exactly, floats within TOLERANCE."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{where}: expected an object, got {got!r}"]
        return [d for k in expected for d in (differences(expected[k], got[k], f"{where}.{k}") if k in got else [f"{where}.{k}: missing"])]
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return [f"{where}: expected {len(expected)} items, got {got!r}"]
        return [d for i, (e, g) in enumerate(zip(expected, got)) for d in differences(e, g, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if _close(expected, float(got)) else [f"{where}: expected {expected}, got {got}"]
    return [] if expected == got else [f"{where}: expected {expected!r}, got {got!r}"]


def run_examples(base_url: str, timeout_s: float = 120) -> list[str]:
    """Run every example against `base_url`; the list of differences (empty: the README holds)."""
    host = re.sub(r"^https?://", "", base_url.rstrip("/"))
    script = ['curl() { command curl "$@"; echo; }']  # curl -s prints no newline after a body: one answer a line
    checks = []
    problems = []
    for code, expected in examples():
        script.append(code.replace("localhost:8000", host))
        checks.append(expected)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout_s)
    if result.returncode != 0:
        return [f"the examples failed (exit {result.returncode}): {result.stderr[-2000:]}"]
    answers = [line for line in result.stdout.splitlines() if line.strip()]
    expected_all = [e for group in checks for e in group]
    if len(answers) != len(expected_all):
        return [f"expected {len(expected_all)} answers, got {len(answers)}: {result.stdout[-2000:]}"]
    for i, (expected, line) in enumerate(zip(expected_all, answers)):
        try:
            got = json.loads(line)
        except ValueError:
            problems.append(f"answer {i} is not JSON: {line[:300]}")
            continue
        problems += differences(expected, got, f"answer {i}")
    return problems


if __name__ == "__main__":
    found = run_examples(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
    for line in found:
        print(line)
    print(f"README examples: {'OK' if not found else f'{len(found)} differences'}")
    sys.exit(1 if found else 0)
