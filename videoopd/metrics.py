"""Answer parsing and grounding metrics; kept at this path for existing imports. The home is
:mod:`videoopd.evaluation.metrics`."""
from videoopd.evaluation.metrics import *  # noqa: F401,F403
from videoopd.evaluation.metrics import __all__  # noqa: F401
