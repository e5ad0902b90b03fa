"""The torchvision-on-CPU-torch fix: one place, works here, no-op where torchvision imports."""

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)


def test_open_clip_imports_through_the_compat_module():
    proc = _run(
        "from models._compat import import_open_clip, ensure_torchvision;"
        "oc = import_open_clip(); import torchvision.transforms as T;"
        "print('patched' if ensure_torchvision() else 'native', oc.__version__)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] in ("patched", "native")


def test_compat_is_a_no_op_when_torchvision_already_works():
    # After a successful import (patched or native), calling it again changes nothing.
    proc = _run(
        "from models._compat import ensure_torchvision; import torch;"
        "a = ensure_torchvision(); b = ensure_torchvision(); import torchvision;"
        "assert a == b; print('ok')"
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
