"""``evaluate`` of the tiny Qwen2.5-VL model on however many processes this is launched with
(``python``, or ``accelerate launch --num_processes 2``); used by test_distributed_eval.py.

Writes to OUT: ``predictions.jsonl`` (what ``evaluate`` writes, main process) and
``rank{r}.json`` per process: the rows and metrics ``evaluate`` returned there.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="annotations JSONL")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=5, help="the first N records")
    args = parser.parse_args()

    import torch
    from accelerate import Accelerator

    from videoopd.data.annotations import load_annotations
    from videoopd.data.video import DecodeConfig
    from videoopd.evaluation.evaluate import evaluate
    from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer
    from videoopd.training.distributed import leave_process_group

    # cpu=True: under accelerate launch without a GPU, the processes join one gloo group
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = build_tiny_tokenizer("qwen2_5_vl")
    processor = build_tiny_processor("qwen2_5_vl", tokenizer)
    model = build_tiny_model("qwen2_5_vl", tokenizer, seed=0).eval()
    records, _ = load_annotations(args.data)
    out = Path(args.out)
    result = evaluate(
        model,
        processor,
        records[: args.limit],
        progress=False,
        accelerator=accelerator,
        decode_config=DecodeConfig.for_processor(processor, min_pixels=56 * 56, max_pixels=64 * 96),
        max_new_tokens=8,
        on_video_error="report",
        predictions_path=out / "predictions.jsonl",
    )
    rank = accelerator.process_index
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": accelerator.num_processes,
                "rows": result.predictions,
                "metrics": result.metrics,
                "failed": result.failed_videos,
            }
        ),
        encoding="utf-8",
    )
    leave_process_group()  # as the commands do
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
