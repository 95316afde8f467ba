"""``python -m bench.step_ledger``: what one OPD step of the real loop moves and holds, per phase, on 2
and 4 real processes; and the same table planned for the paper's step on 8 GPUs.

    python -m bench.step_ledger                                  # DDP and FSDP2, 2 and 4 processes, ~10 min
    python -m bench.step_ledger --engines fsdp2 --processes 2 --answer-tokens 4,24
    python -m bench.step_ledger --from bench/results/step-ledger-cpu.json   # the plan again, no launch

Each run is ``accelerate launch --num_processes N --config_file configs/accelerate/{ddp,fsdp2}.yaml``
of ``videoopd.train``'s CPU demo (tiny Qwen3-VL student and teacher, gloo), one optimizer step
(``--max-steps 1 --demo-videos 8 --grad-accum 2``), through this module's worker, which counts
without touching the library:

- the phases are the loop's own (``videoopd.training.loop.PhaseTimer``: rollout, teacher, student,
  optimizer, with the update after the row's sync, ``loop.apply_update``, in optimizer; the
  held-out evaluation as ``evaluation``; everything else ``other``);
- collectives by kind (all_gather, reduce_scatter, all_reduce, broadcast, ...), count and bytes
  (the full, unsharded buffer of each call), from a ``TorchDispatchMode`` that sees every c10d op
  (``dist.*``, FSDP2's ``all_gather_single`` / ``reduce_scatter_single``, DDP's reducer) and
  every functional collective (``torch.ops._c10d_functional``: DTensor redistributions);
- ``generate`` calls, forward calls of the top-level models, full copies of a model's LM head
  (clones shaped like it: the exact objective's teacher head under FSDP2);
- each process's peak memory per phase (CPU: peak RSS since the phase began; CUDA: the allocator's).

The plan scales the FSDP2 ledger of the most processes to the paper's step: 8 GPUs, FSDP2 student
(Qwen3-VL-8B) and teacher (Qwen3-VL-32B), 32 prompts a step (4 micro-batches of 1 a GPU),
``--plan-video-tokens`` video tokens, ``--plan-answer-tokens`` answer tokens. Per phase and kind,
rank 0's bytes and counts per call of the phase (rollout: generate calls; teacher: forward calls;
student: micro-batches) at two answer lengths are fit as ``a + b x f``, f the rollout's forward
calls per generate call (b: what each decoding step moves; the paper's step makes 1 + answer tokens
of them). The paper's step makes one call a micro-batch, or one a step where the measured loop
batched the step's work into one call. ``b`` scales with the text model (decoding runs no
vision block), ``a`` with the whole model the phase runs (the teacher in the teacher phase, else
the student), both from the demo's fp32 to bf16 gathers and fp32 gradient reductions; counts scale
with the FSDP units (decoder layers + vision blocks + the root). FLOPs
from ``bench.opd_step.step_flops``; memory from ``videoopd.training.memory_plan`` with the
rollout and teacher-head behaviour the ledger measured. Every bandwidth and peak is a named
assumption (``--nvlink-gbps``, ``--peak-tflops``, ``--mfu``). It is a plan, not a measurement.
The same command, re-run after the loop changes, gives the "after" table.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

RESULTS = Path(__file__).parent / "results"
PHASES = ("rollout", "teacher", "student", "optimizer")
ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20

# c10d op names (torch.ops.c10d.* and torch.ops._c10d_functional.*) -> the collective's kind
_KINDS = (
    ("reduce_scatter", "reduce_scatter"),
    ("allgather", "all_gather"),
    ("all_gather", "all_gather"),
    ("allreduce", "all_reduce"),
    ("all_reduce", "all_reduce"),
    ("broadcast", "broadcast"),
    ("alltoall", "all_to_all"),
    ("all_to_all", "all_to_all"),
    ("barrier", "barrier"),
    ("gather", "gather"),
    ("scatter", "scatter"),
    ("reduce_", "reduce"),
    ("send", "send"),
    ("recv", "recv"),
)


def collective_kind(func) -> str | None:
    """The kind of a c10d / functional-collective op, None for any other op."""
    namespace = getattr(func, "namespace", None) or str(func).split(".")[0]
    if namespace not in ("c10d", "_c10d_functional", "c10d_functional", "_c10d_functional_autograd"):
        return None
    name = str(func).split(".")[1] if "." in str(func) else str(func)
    for key, kind in _KINDS:
        if key in name:
            return kind
    return None


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _nbytes(value) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


class Ledger(TorchDispatchMode):
    """Counts collectives (kind, count, bytes) and copies of LM heads, per phase of the step."""

    def __init__(self):
        super().__init__()
        self.phase = "other"
        self.collectives: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        self.head_shapes: set[tuple[int, ...]] = set()
        self.head_copies: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = collective_kind(func.overloadpacket if hasattr(func, "overloadpacket") else func)
        if kind is not None:
            # the full buffer of the call: the gathered output, the reduce-scattered input, the
            # all-reduced tensor (the largest of the call's tensor arguments and its result)
            payload = max([_nbytes(a) for a in args] + [_nbytes(out)])
            entry = self.collectives[self.phase][kind]
            entry[0] += 1
            entry[1] += payload
        elif (
            func is torch.ops.aten.clone.default
            and isinstance(out, torch.Tensor)
            and tuple(out.shape) in self.head_shapes
        ):
            self.head_copies[self.phase] += 1
        return out


class PhaseMemory:
    """Each phase's peak memory of this process (MiB), read when the phase ends."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.peaks: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            from bench.isolated import reset_peak_rss

            reset_peak_rss()

    def read(self, phase: str) -> None:
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            from bench.isolated import proc_status

            peak = proc_status("VmHWM")
        self.peaks[phase] = max(self.peaks[phase], peak / MIB)


def install(out: Path) -> Ledger:
    """Count this process's step: phase markers on the loop's PhaseTimer and the held-out
    evaluation, generate / forward counters, the dispatch mode; the ledger is written to ``out``
    (``rank{R}.json``) at exit."""
    import transformers
    from torch.distributed.fsdp import FSDPModule

    import videoopd.training.loop as loop
    import videoopd.training.post_training as post_training
    import videoopd.training.run_setup as run_setup

    ledger, memory = Ledger(), PhaseMemory()
    calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    models: dict[str, dict] = {}
    timer_call = loop.PhaseTimer.__call__

    @contextlib.contextmanager
    def phase(name: str):
        before = ledger.phase
        ledger.phase = name
        memory.reset()
        try:
            yield
        finally:
            memory.read(name)
            ledger.phase = before

    @contextlib.contextmanager
    def timed_phase(self, name: str):
        with phase(name), timer_call(self, name):
            yield

    def within(name: str, fn):
        def wrapped(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)

        return wrapped

    loop.PhaseTimer.__call__ = timed_phase
    # the AdamW update runs after the row's sync, outside the loop's timed phases: the optimizer's
    loop.apply_update = within("optimizer", loop.apply_update)
    # where the loop's evaluation looks it up (PreparedRun.evaluate)
    run_setup.evaluate_held_out = within("evaluation", run_setup.evaluate_held_out)
    post_training.evaluate_held_out = within("evaluation", post_training.evaluate_held_out)
    generate = transformers.GenerationMixin.generate

    def counted_generate(self, *args, **kwargs):
        calls[ledger.phase]["generate"] += 1
        return generate(self, *args, **kwargs)

    transformers.GenerationMixin.generate = counted_generate

    def on_forward(module, args):
        if (
            isinstance(module, transformers.PreTrainedModel)
            and hasattr(module, "get_output_embeddings")
            and type(module).__name__.removeprefix("FSDP").endswith("ForConditionalGeneration")
        ):
            calls[ledger.phase]["forward"] += 1
            head = module.get_output_embeddings()
            if head is not None:
                ledger.head_shapes.add(tuple(head.weight.shape))
            key = f"{type(module).__name__}@{id(module)}"
            if key not in models:
                units = sum(1 for m in module.modules() if isinstance(m, FSDPModule))
                visual = getattr(getattr(module, "model", None), "visual", None)
                models[key] = {
                    "params": sum(p.numel() for p in module.parameters()),
                    "vision_params": sum(p.numel() for p in visual.parameters()) if visual else 0,
                    "vision_units": sum(1 for m in visual.modules() if isinstance(m, FSDPModule)) if visual else 0,
                    "bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
                    "fsdp_units": units,
                    "phases": [],
                }
            if ledger.phase not in models[key]["phases"]:
                models[key]["phases"].append(ledger.phase)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(on_forward)

    def write() -> None:
        hook.remove()
        rank = int(os.environ.get("RANK", "0"))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "rank": rank,
                    "world": int(os.environ.get("WORLD_SIZE", "1")),
                    "collectives": {
                        p: {k: {"count": c, "bytes": b} for k, (c, b) in kinds.items()}
                        for p, kinds in ledger.collectives.items()
                    },
                    "calls": {p: dict(c) for p, c in calls.items()},
                    "head_copies": dict(ledger.head_copies),
                    "peak_mib": dict(memory.peaks),
                    "models": models,
                },
                indent=1,
            )
        )

    atexit.register(write)
    return ledger


def worker(out: Path, train_argv: list[str]) -> int:
    """A process of the launch: count, then run ``videoopd.train`` as it is."""
    from videoopd import train

    ledger = install(out)
    with ledger:
        return train.main(train_argv)


def probe(out: Path) -> int:
    """A known set of collectives (the test's 2 real processes), in the loop's phases teacher and
    student: 3 all_reduce of 1,000 fp32 and 1 broadcast of 10 int64; 2 all_gather_into_tensor of
    100 fp32 a rank, 1 all_gather_single (FSDP2's, torch >= 2.13) of 100 fp32 a rank, 1
    reduce_scatter_tensor to 50 fp32 a rank, 1 functional all_reduce of 7 fp32 (DTensor's way)."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    from videoopd.training.loop import PhaseTimer

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    ledger = install(out)
    timer = PhaseTimer(torch.device("cpu"))
    with ledger:
        with timer("teacher"):
            for _ in range(3):
                dist.all_reduce(torch.ones(1000))
            dist.broadcast(torch.zeros(10, dtype=torch.int64), src=0)
        with timer("student"):
            for _ in range(2):
                dist.all_gather_into_tensor(torch.empty(100 * world), torch.ones(100))
            if hasattr(dist, "all_gather_single"):
                dist.all_gather_single(torch.empty(100 * world), torch.ones(100))
            dist.reduce_scatter_tensor(torch.empty(50), torch.ones(50 * world))
            funcol.all_reduce(torch.ones(7), "sum", dist.group.WORLD).wait()
    dist.barrier()
    dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------ launching


def launch(engine: str, processes: int, answer_tokens: int, grad_accum: int, out: Path, timeout: float) -> dict:
    """One step of the demo on ``processes`` real processes; the ledgers of every rank."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, ledger_dir = Path(tmp) / "run", Path(tmp) / "ledger"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(processes),
            "--config_file",
            str(ROOT / "configs" / "accelerate" / f"{engine}.yaml"),
            "-m",
            "bench.step_ledger",
            "--worker",
            str(ledger_dir),
            "--",
            "--max-steps",
            "1",
            "--demo-videos",
            "8",
            "--eval-steps",
            "0",
            "--eval-on-start",
            "false",
            "--eval-teacher",
            "false",
            "--save-final",
            "false",
            "--gradient-accumulation-steps",
            str(grad_accum),
            "--max-new-tokens",
            str(answer_tokens),
            "--output-dir",
            str(run_dir),
            "--progress",
            "false",
        ]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
            OMP_NUM_THREADS="1",
        )
        start = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        ranks = [json.loads(p.read_text()) for p in sorted(ledger_dir.glob("rank*.json"))]
        status = (
            "ok"
            if proc.returncode == 0 and len(ranks) == processes
            else f"failed (exit {proc.returncode}): {' '.join(proc.stderr.split()[-40:])}"
        )
    return {
        "engine": engine,
        "processes": processes,
        "answer_tokens": answer_tokens,
        "grad_accum": grad_accum,
        "status": status,
        "wall_s": time.monotonic() - start,
        "ranks": ranks,
    }


def rank0(run: dict) -> dict:
    return next(r for r in run["ranks"] if r["rank"] == 0)


def phase_rows(run: dict) -> list[dict]:
    """Per phase: rank 0's calls and collectives, every rank's peak memory."""
    r0 = rank0(run)
    rows = []
    for phase in PHASES + ("evaluation", "other"):
        kinds = r0["collectives"].get(phase, {})
        calls = r0["calls"].get(phase, {})
        if not kinds and not calls and phase not in PHASES:
            continue
        rows.append(
            {
                "phase": phase,
                "generate": calls.get("generate", 0),
                "forward": calls.get("forward", 0),
                "head_copies": r0["head_copies"].get(phase, 0),
                "collectives": {k: dict(v) for k, v in sorted(kinds.items())},
                "peak_mib": [r["peak_mib"].get(phase) for r in sorted(run["ranks"], key=lambda r: r["rank"])],
            }
        )
    return rows


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def measured_markdown(runs: list[dict]) -> str:
    lines = []
    for run in runs:
        head = (
            f"**{run['engine']}, {run['processes']} processes, --grad-accum {run['grad_accum']}, --max-new-tokens "
            f"{run['answer_tokens']}** ({run['wall_s']:.0f} s): "
        )
        if run["status"] != "ok":
            lines += [head + run["status"], ""]
            continue
        lines += [
            head + "rank 0's calls and collectives (count, bytes); every rank's peak memory (MiB).",
            "",
            "| phase | generate | forward | head copies | collectives | peak memory per rank |",
            "|---|---|---|---|---|---|",
        ]
        for row in phase_rows(run):
            coll = "; ".join(f"{k} {v['count']} ({_fmt_bytes(v['bytes'])})" for k, v in row["collectives"].items())
            peaks = ", ".join("—" if p is None else f"{p:,.0f}" for p in row["peak_mib"])
            lines.append(
                f"| {row['phase']} | {row['generate']} | {row['forward']} | {row['head_copies']} | "
                f"{coll or '—'} | {peaks} |"
            )
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the plan


def phase_model(run: dict, phase: str) -> dict:
    """The model a phase runs (the teacher in the teacher phase, else the student), as measured."""
    models = list(rank0(run)["models"].values())
    teacher = [m for m in models if "teacher" in m["phases"]]
    student = [m for m in models if "student" in m["phases"]]
    if phase == "teacher" and teacher:
        return teacher[0]
    return student[0] if student else models[0]


# What each phase repeats: the rollout generate calls, the teacher forward calls, the student and
# the optimizer the micro-batches (a loop that batches a step's rollouts or scoring makes fewer calls)
CALLS = {"rollout": "generate", "teacher": "forward"}


def phase_calls(run: dict, phase: str) -> float:
    """How many times the step ran ``phase``'s unit of work (at least 1)."""
    if phase in CALLS:
        return max(1, rank0(run)["calls"].get(phase, {}).get(CALLS[phase], 0))
    return run["grad_accum"]


def per_call(run: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """{(phase, kind): (bytes, count)} of rank 0 per call of the phase's unit of work."""
    return {
        (phase, kind): (v["bytes"] / phase_calls(run, phase), v["count"] / phase_calls(run, phase))
        for phase in PHASES
        for kind, v in rank0(run)["collectives"].get(phase, {}).items()
    }


def decoding_steps(run: dict) -> float:
    """The rollout's forward calls per generate call: the prefill and one per generated token (the
    demo's answers end before --max-new-tokens, so the count, not the flag, measures the length)."""
    return rank0(run)["calls"].get("rollout", {}).get("forward", 0) / phase_calls(run, "rollout")


def fit_answer_length(runs: list[dict]) -> dict[tuple[str, str], tuple[tuple[float, float], tuple[float, float]]]:
    """Per (phase, kind): ((a, b) of bytes, (a, b) of counts) per call of the phase, value = a + b x
    the rollout's forward calls per generate call, from runs of one engine and process count at
    different answer lengths (one run: b = 0)."""
    pts = sorted(((decoding_steps(r), per_call(r)) for r in runs), key=lambda p: p[0])
    (n0, e0), (n1, e1) = pts[0], pts[-1]
    fits = {}
    for key in set(e0) | set(e1):
        (b0, c0), (b1, c1) = e0.get(key, (0.0, 0.0)), e1.get(key, (0.0, 0.0))
        sb, sc = ((b1 - b0) / (n1 - n0), (c1 - c0) / (n1 - n0)) if n1 > n0 else (0.0, 0.0)
        fits[key] = ((b0 - sb * n0, sb), (c0 - sc * n0, sc))
    return fits


def paper_calls(run: dict, phase: str, micro: int) -> float:
    """The paper's step's calls of ``phase`` on one GPU: one if the measured loop ran the whole step's
    work in one call, else as many per micro-batch as measured."""
    calls = phase_calls(run, phase)
    return 1.0 if calls == 1 < run["grad_accum"] else micro * calls / run["grad_accum"]


def head_copies_per_micro_batch(runs: list[dict]) -> float:
    r = max(runs, key=lambda r: r["grad_accum"])
    return sum(rank0(r)["head_copies"].values()) / r["grad_accum"]


def paper_plan(runs: list[dict], args) -> dict:
    """The paper's step on ``args.plan_gpus`` GPUs from the FSDP2 runs of one process count."""
    from bench.opd_step import ARCHITECTURES, Grid, ModelShape, step_flops
    from videoopd.training.memory_plan import model_size, plan_memory

    student, teacher = model_size("qwen3-vl-8b"), model_size("qwen3-vl-32b")
    gpus, prompts = args.plan_gpus, args.plan_prompts
    micro = math.ceil(prompts / gpus)  # batch 1 a micro-batch, as the preset
    answer = args.plan_answer_tokens
    fits = fit_answer_length(runs)
    # gathers move bf16 (the config's mixed_precision), gradients are reduced in fp32; the demo is fp32
    dtype_bytes = {"all_gather": 2, "reduce_scatter": 4}
    rows = []
    for (phase, kind), ((ba, bb), (ca, cb)) in sorted(fits.items()):
        small, real = phase_model(runs[0], phase), teacher if phase == "teacher" else student
        # what each answer token moves is the text model (decoding runs no vision block); the rest
        # (prefill, scoring, training) the whole model; counts scale with the FSDP units run
        text_small = small["params"] - small["vision_params"]
        text_units_small = max(1, small["fsdp_units"] - small["vision_units"])
        scale = dtype_bytes.get(kind, 4) / 4
        per_answer = bb * (real.params - real.vision_params) / text_small * scale
        forwards = 1 + answer  # the prefill and one decoding step a generated token
        calls = paper_calls(runs[0], phase, micro)
        nbytes = calls * (ba * real.params / small["params"] * scale + per_answer * forwards)
        if kind in ("all_gather", "reduce_scatter"):  # FSDP2's: one a unit run
            count = calls * (
                ca * (real.layers + 27 + 1) / max(1, small["fsdp_units"])
                + cb * (real.layers + 1) / text_units_small * forwards
            )
        else:  # the loop's own (generation's synced_gpus flag, metrics): one a call, whatever the model
            count = calls * (ca + cb * forwards)
        ring = 2 * (gpus - 1) / gpus if kind == "all_reduce" else (gpus - 1) / gpus
        rows.append(
            {
                "phase": phase,
                "kind": kind,
                "count": count,
                "bytes": nbytes,
                "seconds": nbytes * ring / (args.nvlink_gbps * 1e9),
                "per_token": calls * per_answer,
            }
        )
    # FLOPs of the step on one GPU: its micro-batches of the real models
    t_shape = ModelShape(5120, 64, 64, 8, 128, 25600, 1152, 27)
    grid = Grid(
        ARCHITECTURES["qwen3-vl-8b"],
        t_shape,
        vocab=151_936,
        video_tokens=(args.plan_video_tokens,),
        answer_tokens=answer,
        batch=micro,
    )
    prompt_tokens = args.plan_video_tokens + args.plan_text_tokens
    flops = step_flops(grid, prompt_tokens, answer, args.plan_video_tokens, "ours")
    # the rollout gathers per token when each answer token moves more than a tenth of the student
    gathered = not any(
        r["phase"] == "rollout" and r["kind"] == "all_gather" and r["per_token"] > 0.2 * student.params for r in rows
    )
    heads = head_copies_per_micro_batch(runs)
    mem = {}
    for name, kw in (
        (
            "as measured",
            dict(
                rollout="gathered" if gathered else "sharded",
                # a copy a micro-batch scales with them; fewer: one held
                teacher_heads=round(heads * micro) if heads >= 1 else 1,
            ),
        ),
    ):
        mem[name] = plan_memory(
            student,
            teacher,
            gpus=gpus,
            gpu_memory_gib=args.plan_gpu_memory_gib,
            video_tokens=args.plan_video_tokens,
            text_tokens=args.plan_text_tokens,
            answer_tokens=answer,
            gradient_accumulation_steps=micro,
            **kw,
        )
    return {
        "rows": rows,
        "flops": flops,
        "micro_batches": micro,
        "rollout": "gathered" if gathered else "sharded",
        "head_copies_per_micro_batch": heads,
        "memory": mem,
        "processes_measured": runs[0]["processes"],
    }


def plan_markdown(plan: dict, args) -> str:
    g = args
    lines = [
        f"**PLAN, not a measurement**: the paper's step on {g.plan_gpus} GPUs (Qwen3-VL-8B student and "
        f"Qwen3-VL-32B teacher, both FSDP2; {g.plan_prompts} prompts a step = {plan['micro_batches']} "
        f"micro-batches of 1 a GPU; {g.plan_video_tokens:,} video + {g.plan_text_tokens} text tokens, "
        f"{g.plan_answer_tokens} answer tokens), scaled from the {plan['processes_measured']}-process FSDP2 "
        "ledger. Per GPU. Assumptions: "
        f"collectives at {g.nvlink_gbps:g} GB/s a GPU (ring: all-gather / reduce-scatter move (G-1)/G of the "
        f"buffer, all-reduce twice that), gathers in bf16, gradients reduced in fp32; {g.peak_tflops:g} TFLOP/s "
        f"bf16 peak at {100 * g.mfu:.0f}% MFU.",
        "",
        "| phase | collective | count | bytes | of which per answer token | time at the assumed bandwidth |",
        "|---|---|---|---|---|---|",
    ]
    for r in plan["rows"]:
        per_token = "—" if r["per_token"] < 1e3 else _fmt_bytes(r["per_token"])
        lines.append(
            f"| {r['phase']} | {r['kind']} | {r['count']:,.0f} | {_fmt_bytes(r['bytes'])} | {per_token} | "
            f"{r['seconds']:,.2f} s |"
        )
    total_s = sum(r["seconds"] for r in plan["rows"])
    compute_s = plan["flops"] / (g.peak_tflops * 1e12 * g.mfu)
    lines += [
        "",
        f"Collectives {_fmt_bytes(sum(r['bytes'] for r in plan['rows']))} a GPU, {total_s:,.1f} s at "
        f"{g.nvlink_gbps:g} GB/s; model FLOPs {plan['flops'] / 1e15:,.1f} PFLOP a GPU "
        f"(`bench.opd_step.step_flops`), {compute_s:,.1f} s at {100 * g.mfu:.0f}% of {g.peak_tflops:g} TFLOP/s. "
        f"Rollout: {plan['rollout']} (measured: the rollout's all-gathers "
        f"{'grow' if plan['rollout'] == 'sharded' else 'do not grow'} with the answer); teacher head copies a "
        f"micro-batch: {plan['head_copies_per_micro_batch']:g}.",
        "",
    ]
    for name, mem in plan["memory"].items():
        lines += [f"Memory per GPU ({name}; `videoopd.training.memory_plan`):", "", mem.table(), ""]
    return "\n".join(lines)


# The one measured GPU step (docs/benchmarks.md, bench/results/gpu-check-2026-11-26/opd_step.json): one
# H200, bf16, no FSDP, 4 text layers at the 8B's widths, a 5,120-wide teacher, 4 vision blocks.
H200_STEP = {
    "prompt_tokens": 17_287,
    "video_tokens": 15_680,
    "answer_tokens": 32,
    "peak_gib": 27.95,
    "sampled_step_s": 1.066,
    "sampled_peak_gib": 26.63,
}


def h200_check(args) -> str:
    """The plan's memory and FLOPs at the measured H200 step's sizes, against what it measured."""
    from bench.opd_step import Grid, ModelShape, qwen3_vl_config, step_flops
    from videoopd.qwen.tiny import build_tiny_tokenizer
    from videoopd.training.memory_plan import plan_memory

    s_shape = ModelShape(4096, 4, 32, 8, 128, 12288, 1152, 4)
    t_shape = ModelShape(5120, 4, 64, 8, 128, 25600, 1152, 4)
    tokenizer = build_tiny_tokenizer("qwen3_vl")
    m = H200_STEP
    plan = plan_memory(
        qwen3_vl_config(tokenizer, s_shape, 151_936),
        qwen3_vl_config(tokenizer, t_shape, 151_936),
        gpus=1,
        engine="ddp",
        teacher_placement="replicate",
        master_weights="none",
        video_tokens=m["video_tokens"],
        text_tokens=m["prompt_tokens"] - m["video_tokens"],
        answer_tokens=m["answer_tokens"],
        gpu_memory_gib=141,
    )
    grid = Grid(s_shape, t_shape, vocab=151_936, video_tokens=(m["video_tokens"],), answer_tokens=m["answer_tokens"])
    flops = step_flops(grid, m["prompt_tokens"], m["answer_tokens"], m["video_tokens"], "ours")
    mfu = flops / m["sampled_step_s"] / (args.peak_tflops * 1e12)
    return (
        f"Check against the one measured GPU step (docs/benchmarks.md: one H200, bf16, 4 text layers at the "
        f"8B's widths, a 5,120-wide teacher, {m['prompt_tokens']:,} prompt + {m['answer_tokens']} answer tokens): "
        f"the plan's peak {plan.peak_bytes / 2**30:,.1f} GiB ({plan.peak_phase}) against 28.0 GiB measured "
        f"(exact objective; 26.6 GiB sampled), {100 * (plan.peak_bytes / 2**30 / m['peak_gib'] - 1):+.0f}%; "
        f"its model FLOPs {flops / 1e12:,.1f} TFLOP in the sampled step's measured {m['sampled_step_s']} s are "
        f"{100 * mfu:.0f}% of {args.peak_tflops:g} TFLOP/s, against the plan's assumed {100 * args.mfu:.0f}% MFU."
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return worker(Path(argv[1]), rest)
    if argv[:1] == ["--probe"]:
        return probe(Path(argv[1]))
    ints = lambda t: tuple(int(x) for x in t.split(","))  # noqa: E731
    parser = argparse.ArgumentParser(
        prog="python -m bench.step_ledger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default="ddp,fsdp2", type=lambda t: tuple(t.split(",")))
    parser.add_argument("--processes", default=(2, 4), type=ints)
    parser.add_argument(
        "--answer-tokens",
        default=(4, 24),
        type=ints,
        help="--max-new-tokens of the runs; two values fit what grows with the answer (FSDP2)",
    )
    parser.add_argument("--grad-accum", default=2, type=int)
    parser.add_argument("--timeout-s", default=600.0, type=float, help="per launch")
    parser.add_argument("--from", dest="source", type=Path, help="a ledger's JSON: plan again without launching")
    parser.add_argument("--plan-gpus", default=8, type=int)
    parser.add_argument("--plan-prompts", default=32, type=int, help="prompts a step (the paper's 32)")
    parser.add_argument("--plan-video-tokens", default=16_384, type=int, help="TimeLens2's cap")
    parser.add_argument("--plan-text-tokens", default=160, type=int)
    parser.add_argument(
        "--plan-answer-tokens",
        default=32,
        type=int,
        help="generated tokens (a TVG answer '12.54 to 17.83' is ~15; assumption)",
    )
    parser.add_argument("--plan-gpu-memory-gib", default=80.0, type=float)
    parser.add_argument(
        "--nvlink-gbps",
        default=450.0,
        type=float,
        help="assumed collective bandwidth a GPU (H100/H200 NVLink 4: 900 GB/s both ways)",
    )
    parser.add_argument("--peak-tflops", default=989.0, type=float, help="assumed bf16 dense peak (H100/H200)")
    parser.add_argument("--mfu", default=0.4, type=float, help="assumed model FLOPs utilisation")
    parser.add_argument("--out", type=Path, default=RESULTS / "step-ledger-cpu", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    command = argv
    if args.source:
        saved = json.loads(args.source.read_text())
        runs, command = saved["runs"], saved["command"]
    else:
        runs = []
        for engine in args.engines:
            for n in args.processes:
                for answer in args.answer_tokens if engine == "fsdp2" else args.answer_tokens[:1]:
                    runs.append(launch(engine, n, answer, args.grad_accum, args.out, args.timeout_s))
                    print(measured_markdown(runs[-1:]), flush=True)
    text = [
        "# Step ledger",
        "",
        f"`python -m bench.step_ledger {' '.join(command)}`",
        "",
        "## Measured (CPU, gloo)",
        "",
        measured_markdown(runs),
    ]
    fsdp = [r for r in runs if r["engine"] == "fsdp2" and r["status"] == "ok"]
    if fsdp:
        most = max(r["processes"] for r in fsdp)
        plan = paper_plan([r for r in fsdp if r["processes"] == most], args)
        text += ["## The paper's step on 8 GPUs", "", plan_markdown(plan, args), h200_check(args), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.source:
        args.out.with_suffix(".json").write_text(json.dumps({"command": argv, "runs": runs}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text[-3:]))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
