"""The one place that makes torchvision (and so open_clip and transformers) importable on CPU torch.

PyPI's torchvision wheels are CUDA builds. On a CPU-only torch their C++ extension fails to load,
and `import torchvision` dies in `torchvision/_meta_registrations.py` with
``RuntimeError: operator torchvision::nms does not exist``: the module registers fake kernels for
``nms``/``qnms`` without checking that the operators exist. We define the two operator schemas
(no kernels) and import again. The pure-Python parts that open_clip uses (transforms) work;
calling the detection ops raises torch's usual "no kernel" error.

Where torchvision imports normally (a matching CPU/CUDA build), this does nothing.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_patched_library = None  # keeps the torch.library fragment alive


def ensure_torchvision() -> bool:
    """Import torchvision, patching the missing operator schemas if needed. Returns True if patched."""
    global _patched_library
    with _lock:
        if "torchvision" in sys.modules and _patched_library is None:
            return False
        try:
            import torchvision  # noqa: F401

            return _patched_library is not None
        except RuntimeError as err:
            if "torchvision::" not in str(err):
                raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            try:
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # already defined (a partial extension load)
        _patched_library = lib
        import torchvision  # noqa: F401,F811

        return True


def import_open_clip():
    """Return the `open_clip` module, importable on CPU torch (see module docstring)."""
    ensure_torchvision()
    import open_clip

    return open_clip
