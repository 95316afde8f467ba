"""On-policy distillation against the GRPO baseline, from the same student, on the same data,
seed, held-out split and evaluation schedule, under the same budget.

    python -m videoopd.compare                                     # the CPU demo (tiny models)
    python -m videoopd.compare --student S --teacher T --train-data F --eval-data F \\
        --budget samples --budget-value 20000 --eval-steps 100 --output-dir runs/compare
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m videoopd.compare ...

Each method is a ``python -m videoopd.train`` run (``--algo opd`` / ``--algo grpo``; its own
process when there is one process, so that peak memory is its own) into
``OUTPUT_DIR/opd`` and ``OUTPUT_DIR/grpo`` with the shared options plus the method's own
(``--opd-args``, ``--grpo-args``); any other option is passed to both. Budgets: ``steps`` (the
same optimizer steps), ``samples`` (the same number of training prompts: steps = samples /
prompts per step, each method's own), ``seconds`` (the same training time, optimizer steps
only: ``--time-budget-s``). Then ``comparison.md`` / ``.json`` / ``.png``
(:mod:`videoopd.evaluation.comparison`) are written to OUTPUT_DIR.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from videoopd.algo.algorithms import ALGORITHMS
from videoopd.training.config import ConfigError, Options, fail, opt, parse_config

__all__ = ["main"]

PROG = "python -m videoopd.compare"
# Method options the demo uses unless --opd-args / --grpo-args say otherwise. GRPO: 2 prompts x
# 8 answers = 16 rollouts a step against OPD's 8 prompts x 1.
DEMO_METHOD_ARGS = {"opd": [], "grpo": ["--per-device-train-batch-size", "2", "--num-generations", "8"]}
DESCRIPTION = (
    "Compare on-policy distillation with GRPO: same student, data, seed, held-out split, evaluation "
    "schedule and budget. Options not listed here go to both `videoopd.train` runs."
)


@dataclass
class CompareConfig(Options):
    """comparison (every other option goes to both videoopd.train runs)"""

    budget: Literal["steps", "samples", "seconds"] = opt("what both methods get the same amount of", "steps")
    budget_value: float = opt("optimizer steps, training prompts or training seconds", 200.0, gt=0)
    eval_steps: int = opt("both runs' held-out evaluation every K steps", 50, gt=0)
    output_dir: str = opt("folder of both runs (OUTPUT_DIR/opd, OUTPUT_DIR/grpo) and the comparison", "runs/compare")
    methods: str = opt("comma-separated, from " + " and ".join(ALGORITHMS), ",".join(ALGORITHMS))
    opd_args: str | None = opt("options of the OPD run only, one quoted string (default on the demo: none)")
    grpo_args: str | None = opt(
        f"options of the GRPO run only, one quoted string (default on the demo: {' '.join(DEMO_METHOD_ARGS['grpo'])})"
    )

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def validate(self) -> None:
        super().validate()
        if not self.method_list or any(m not in ALGORITHMS for m in self.method_list):
            raise ConfigError(f"--methods must name opd and/or grpo, got {self.methods!r}")


def method_argv(
    method: str,
    shared: Sequence[str],
    own: Sequence[str],
    budget: str,
    value: float,
    prompts_per_step: int,
    out_dir: Path,
    eval_every: int,
) -> list[str]:
    """The ``videoopd.train`` command line of one method."""
    argv = [*shared, *own, "--algo", method, "--output-dir", str(out_dir / method), "--eval-steps", str(eval_every)]
    if budget == "steps":
        argv += ["--max-steps", str(int(value))]
    elif budget == "samples":
        argv += ["--max-steps", str(max(1, math.ceil(value / prompts_per_step)))]
    else:
        # the run stops on time; the step limit only has to be out of reach (constant LR schedule)
        argv += ["--time-budget-s", str(value), "--max-steps", str(10**7)]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shared: list[str] = []
    try:
        args = parse_config(CompareConfig, argv, prog=PROG, description=DESCRIPTION, rest=shared, config_file=False)
    except ConfigError as exc:
        return fail(PROG, exc)
    methods = args.method_list
    out_dir = Path(args.output_dir)
    from videoopd import train

    try:  # the demo preset: no --student, by flag or YAML
        demo = train.resolve_config(shared).preset == "demo"
    except ConfigError as exc:
        return fail(PROG, exc)

    runs = {}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for method in methods:
        given = getattr(args, f"{method}_args")
        own = shlex.split(given) if given is not None else (DEMO_METHOD_ARGS[method] if demo else [])
        try:
            cfg = train.resolve_config([*shared, *own, "--algo", method])
        except ConfigError as exc:
            return fail(PROG, f"{method}: {exc}")
        prompts_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
        if method == "opd" and "--eval-teacher" not in shared and (demo or cfg.teacher is not None):
            own = [*own, "--eval-teacher", "true"]  # the teacher's line on the plot
        command = method_argv(
            method, shared, own, args.budget, args.budget_value, prompts_per_step, out_dir, args.eval_steps
        )
        print(f"=== {method}: python -m videoopd.train {shlex.join(command)}", flush=True)
        if world == 1:  # its own process: its own peak memory, nothing left over from the other run
            code = subprocess.run([sys.executable, "-m", "videoopd.train", *command]).returncode
        else:  # under accelerate launch every process runs both, one after the other
            code = train.main(command)
        if code != 0:
            print(
                f"python -m videoopd.compare: the {method} run failed (exit {code}); its folder keeps what it wrote",
                file=sys.stderr,
            )
            return code
        runs[method] = out_dir / method
    from accelerate import PartialState

    if PartialState().is_main_process:
        from videoopd.evaluation.comparison import write_comparison

        result = write_comparison(runs, out_dir)
        print(result["table"])
        print(
            f"comparison: {out_dir / 'comparison.md'}, {out_dir / 'comparison.json'}"
            + (f", {result['plot']}" if result["plot"] else " (no plot: matplotlib is not installed)")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
