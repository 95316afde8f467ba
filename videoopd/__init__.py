"""videoopd: on-policy distillation for video LLMs on temporal video grounding.

Packages, lowest first; a module imports only from its own package or from one below it, and
the command modules (``videoopd.train``, ``sft``, ``eval``, ``compare``, ...) sit above them
all (``tests/videoopd/test_layers.py`` holds the code to this):

- ``grounding``: answer parsing, temporal IoU, R1@m / mIoU, rewards (pure Python);
- ``data``: annotation loaders, video decoding, datasets of decoded videos, synthetic videos;
- ``qwen``: Qwen-VL models, processors, prompts, collators, generation, LoRA, tiny models;
- ``algo``: the objectives (OPD, GRPO, SFT) and TVDF's round selection;
- ``evaluation``: batched evaluation, predictions files, run comparisons;
- ``training``: config, the one loop, checkpoints, engines, the post-training run;
- ``demo``: the CPU demo and how its models are made.
"""

__all__: list[str] = []  # nothing here is promised: docs/api.md lists the stable modules

LAYERS = ("grounding", "data", "qwen", "algo", "evaluation", "training", "demo")
