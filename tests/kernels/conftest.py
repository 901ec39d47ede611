"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it is set here, at import time,
before any kernel module is imported. It only changes how Triton kernels launch; nothing else in the test
suite looks at it. Kernel modules imported earlier (by another test) are reloaded so they pick it up.
"""
import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

for _name in [m for m in sys.modules if m.startswith("sketchtune_kernels.triton_")]:
    importlib.reload(sys.modules[_name])
