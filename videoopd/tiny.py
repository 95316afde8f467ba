"""``python -m videoopd.tiny``: write a tiny randomly initialised Qwen-VL checkpoint (model,
tokenizer, processor) for dry runs (:func:`videoopd.qwen.tiny.save_tiny_checkpoint`); no downloads.

    python -m videoopd.tiny --out DIR [--family qwen2_5_vl|qwen3_vl] [--seed S]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from videoopd.qwen.tiny import FAMILIES, save_tiny_checkpoint
from videoopd.training.config import ConfigError, Options, fail, opt, parse_config
from videoopd.training.setup import check_output_dir

__all__ = ["main"]

PROG = "python -m videoopd.tiny"


@dataclass
class TinyConfig(Options):
    """tiny checkpoint"""

    out: str | None = opt("checkpoint folder to write", required=True)
    family: Literal[FAMILIES] = opt("model family", "qwen2_5_vl")
    seed: int = opt("random seed of the weights", 0)

    def validate(self) -> None:
        super().validate()
        check_output_dir(self.out, "--out")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(
            TinyConfig,
            argv,
            prog=PROG,
            description="Write a tiny randomly initialised Qwen-VL checkpoint; no downloads.",
        )
    except ConfigError as exc:
        return fail(PROG, exc)
    print(f"wrote {save_tiny_checkpoint(cfg.out, cfg.family, seed=cfg.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
