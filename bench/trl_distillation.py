"""``python -m bench.trl_distillation``: one TRL DistillationTrainer loss step (beta = 1), TRL's
own path against ``opd_kernels.integrations.trl.FusedDistillationTrainer``, each in its own
processes; prints a markdown table.

    python -m bench.trl_distillation [--completion 2048] [--vocab 32768] [--repeats 1] [--json PATH]

A step is what the trainer runs per micro-batch after generation: ``compute_loss`` (both
backbones, the loss inside the student's forward) and its backward, on one sequence of
``--prompt`` + ``--completion`` tokens, every completion token in the loss. The models are tiny
Qwen2 configs (random weights, ``--student-dim`` / ``--teacher-dim``, 2 layers) so that the loss
head dominates, as it does for a real vocabulary. TRL 1.16 computes the loss with fp32 tiles
of up to 4,096 tokens x 32,768 vocabulary rows per model, so at these defaults its tiles are
the whole [tokens, vocab] of the sequence; the backward recomputes both projections.

Per path and repeat one fresh process runs (through ``bench.isolated``'s child runner, glibc's
mmap threshold pinned so that freed tensors leave the RSS): the peak RSS growth of the first
step (one-time costs included; it is also the warm-up) and of a second one, gradients included,
then the median time of ``--calls`` more steps, and the loss, which must agree between the
paths. One process per path (not bench.isolated's two) keeps the run under 2 minutes on a
2-core CPU. CPU only (/proc); a figure names its command, machine and date.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.isolated import proc_status, reset_peak_rss, run_json_child

MIB = 2**20
PATHS = {
    "trl": "TRL DistillationTrainer (its chunked divergence)",
    "ours": "FusedDistillationTrainer (fused_reverse_kl)",
}


def _step_setup(args):
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import DistillationConfig, DistillationTrainer

    from opd_kernels.integrations.trl import FusedDistillationTrainer
    from videoopd.qwen.tiny import build_tiny_tokenizer

    def model(seed, dim):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=args.vocab,
                hidden_size=dim,
                intermediate_size=2 * dim,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=False,
                max_position_embeddings=args.prompt + args.completion + 8,
            )
        )

    tokenizer = build_tiny_tokenizer()
    tokenizer.padding_side = "left"
    config = DistillationConfig(
        output_dir=str(Path(args.workdir) / args.path),
        per_device_train_batch_size=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        save_strategy="no",
        temperature=args.temperature,
        beta=1.0,
    )
    cls = FusedDistillationTrainer if args.path == "ours" else DistillationTrainer
    trainer = cls(
        model=model(0, args.student_dim),
        teacher_model=model(1, args.teacher_dim),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["x"]}),
        processing_class=tokenizer,
    )
    g = torch.Generator().manual_seed(2)
    batch = {
        "prompt_ids": torch.randint(0, args.vocab, (1, args.prompt), generator=g),
        "prompt_mask": torch.ones(1, args.prompt, dtype=torch.long),
        "completion_ids": torch.randint(0, args.vocab, (1, args.completion), generator=g),
        "completion_mask": torch.ones(1, args.completion, dtype=torch.long),
    }
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    trainer.model.train()

    def step():
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return float(loss)

    def reset():
        trainer.model.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()

    return step, reset, torch.get_num_threads()


def _child(args) -> dict:
    step, reset, threads = _step_setup(args)
    gc.collect()
    result: dict = {"threads": threads}
    before = proc_status("VmRSS")
    result["loss"] = step()  # also the warm-up: compiles, fills caches
    result["first_step_rss_growth_mib"] = (proc_status("VmHWM") - before) / MIB
    reset()
    gc.collect()
    if reset_peak_rss():
        before = proc_status("VmRSS")
        step()
        result["steady_rss_growth_mib"] = (proc_status("VmHWM") - before) / MIB
    seconds = []
    for _ in range(args.calls):
        reset()
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    result["median_s"] = statistics.median(seconds)
    return result


def _child_cmd(args, path: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.trl_distillation",
        "--child",
        "--path",
        path,
        "--prompt",
        str(args.prompt),
        "--completion",
        str(args.completion),
        "--vocab",
        str(args.vocab),
        "--student-dim",
        str(args.student_dim),
        "--teacher-dim",
        str(args.teacher_dim),
        "--temperature",
        str(args.temperature),
        "--calls",
        str(args.calls),
        "--workdir",
        args.workdir,
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.trl_distillation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--completion", type=int, default=1024, help="completion tokens, all in the loss")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--student-dim", type=int, default=256)
    parser.add_argument("--teacher-dim", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of fresh processes per path")
    parser.add_argument("--calls", type=int, default=2, help="timed steps per child, after the two measured for memory")
    parser.add_argument("--workdir", default="/tmp/bench-trl-distillation", help="the trainers' output_dir (unused)")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, choices=tuple(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0

    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    for repeat in range(args.repeats):
        for path in PATHS:
            runs[path].append(run_json_child(_child_cmd(args, path), "memory"))
            print(
                f"# repeat {repeat + 1}/{args.repeats} {path}: {runs[path][-1].get('error', 'ok')}",
                file=sys.stderr,
                flush=True,
            )

    def med(path, key):
        values = [r[key] for r in runs[path] if key in r]
        return statistics.median(values) if values else None

    import torch
    import trl

    from bench.measure import cpu_model_name

    base_s, base_m = med("trl", "median_s"), med("trl", "steady_rss_growth_mib")
    threads = next((r["threads"] for r in runs["trl"] if "threads" in r), "?")
    print(
        f"One loss step (compute_loss + backward), beta=1, {args.prompt} + {args.completion} tokens, "
        f"V = {args.vocab:,}, tiny Qwen2 student D = {args.student_dim} / teacher D = {args.teacher_dim} "
        f"(2 layers), fp32, one process per path; {cpu_model_name()}, {threads} threads, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}; trl {trl.__version__}, torch {torch.__version__}; "
        f"`{' '.join(['python -m bench.trl_distillation', *(argv if argv is not None else sys.argv[1:])])}`\n"
    )
    print("| path | s / step (median) | x TRL | peak RSS growth, later step | x TRL | first step | loss |")
    print("|---|---|---|---|---|---|---|")
    for path, label in PATHS.items():
        s, m = med(path, "median_s"), med(path, "steady_rss_growth_mib")
        first, loss = med(path, "first_step_rss_growth_mib"), med(path, "loss")
        errors = [r["error"] for r in runs[path] if "error" in r]
        cells = [
            label,
            "-" if s is None else f"{s:.2f}",
            "-" if not (s and base_s) else f"{s / base_s:.2f}",
            "-" if m is None else f"{m:.0f} MiB",
            "-" if m is None or not base_m else f"{m / base_m:.2f}",
            "-" if first is None else f"{first:.0f} MiB",
            "-" if loss is None else f"{loss:.6f}",
        ]
        print("| " + " | ".join(cells) + " |" + (f" errors: {errors[0]}" if errors else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
