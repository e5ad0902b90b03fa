"""scripts/compose_e2e.sh on a real Docker engine: only with PCCLIP_DOCKER_TESTS=1 (builds images; minutes)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.deploy.conftest import REPO_ROOT


@pytest.mark.skipif(os.environ.get("PCCLIP_DOCKER_TESTS") != "1", reason="needs a Docker engine (PCCLIP_DOCKER_TESTS=1)")
@pytest.mark.timeout(5400)
def test_compose_stack_end_to_end():
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts/compose_e2e.sh")], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=5400)
    steps = "\n".join(line for line in result.stdout.splitlines() if line.startswith("[e2e"))
    assert result.returncode == 0, steps + "\n" + result.stdout[-3000:] + result.stderr[-2000:]
    assert "PASS" in steps
