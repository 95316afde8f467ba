"""Environment shared by every test folder (tests/opd_kernels, tests/videoopd).

Triton kernels run on the CPU through the interpreter when no CUDA device exists. It must be
set before triton decorates any kernel, i.e. before opd_kernels is imported, which is why it
lives here, above both folders, rather than in tests/opd_kernels/conftest.py.
"""

import os

try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
