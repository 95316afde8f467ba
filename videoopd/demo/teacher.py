"""The tiny teacher of the CPU demo (``python -m videoopd.train`` with no models): its data,
where it ships and the command that regenerates it.

    python -m videoopd.demo_teacher --work runs/demo-teacher          # hours on a 2-core CPU

Any ``python -m videoopd.sft`` flag after these overrides both stages' recipes (e.g. ``--max-steps``).

The teacher is a from-scratch tiny Qwen3-VL (1.0M parameters, hidden 128, 4 layers, vision
tower frozen at its random initialisation) trained by ``python -m videoopd.sft`` on synthetic
grounding videos (:mod:`videoopd.data.synthetic`): 8 s, 2 fps, 32x64 frames (two merged vision
tokens per frame pair), events of 1-4 s, two events per video in the demo (the query's colour
picks one). Qwen3-VL writes a ``<t seconds>`` stamp before every frame pair, so grounding
becomes "find the frames with the queried shape and read their stamps", which a
1M-parameter model learns (earlier tiny Qwen2.5-VL runs, which have no stamps and must read
time out of rotary positions, stayed on one constant answer). Training the random vision
tower along made its output norm grow ~12x in our runs, drowning what the language model
writes into vision tokens, and learning stalled; frozen, its features still separate the 8
colours (a linear probe reads them at 99.8%).

Two SFT stages, each selected on its own held-out set:

1. ``SFT_RECIPE`` from scratch on a pool of one-event and two-event videos
   (``TRAIN_VIDEOS``), selected on one-event videos (``HELDOUT``): the model learns to find a
   shape and read its stamps, but not to pick the queried colour out of two (it answers the
   same span for both queries of a video; two-event held-out mIoU ~59, against ~35 for the best
   constant answer).
2. ``QUERY_RECIPE`` from stage 1's best on a pool weighted to two-event videos
   (``QUERY_VIDEOS``), selected on two-event videos (``QUERY_HELDOUT``): after ~1,300 steps on
   that plateau the model starts reading the query, and two-event held-out mIoU climbs to ~89.

The best stage-2 checkpoint ships in ``videoopd/demo/assets/demo_teacher`` with
``training.json`` (recipes, curves, metrics of both stages); the demo's student,
``videoopd/demo/assets/demo_student``, is an earlier stage-2 checkpoint at least
``STUDENT_GAP`` mIoU points below the teacher (same model, less trained: one that does not yet
read the query).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from videoopd.training.checkpoint import MODEL_FOLDER, complete_checkpoints

__all__: list[str] = []  # nothing here is promised: docs/api.md

# How the demo's synthetic videos are drawn (arguments of videoopd.data.synthetic.generate_dataset).
DEMO_DATA: dict[str, Any] = {"duration": 8.0, "fps": 2, "height": 32, "width": 64, "min_event": 1.0, "max_event": 4.0}
# Events per video in the demo's OPD and held-out data: the query's colour picks one.
DEMO_EVENTS = 2
# Frames are decoded at their native 32x64: min_pixels = max_pixels = 32 * 64.
DEMO_PIXELS = 32 * 64
ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER_DIR = ASSETS / "demo_teacher"
STUDENT_DIR = ASSETS / "demo_student"

# Stage 1: the SFT command line (less data paths and output), from scratch.
SFT_RECIPE: list[str] = [
    "--init-tiny",
    "qwen3_vl",
    "--tiny-hidden-size",
    "128",
    "--tiny-layers",
    "4",
    "--tiny-vision-hidden-size",
    "64",
    "--tiny-vision-depth",
    "2",
    "--train-vision",
    "false",
    "--learning-rate",
    "1e-3",
    "--warmup-steps",
    "200",
    "--weight-decay",
    "0.01",
    "--per-device-train-batch-size",
    "16",
    "--max-steps",
    "6000",
    "--eval-steps",
    "500",
    "--save-steps",
    "500",
    "--cache-videos",
    "true",
    "--fps",
    "2",
    "--min-pixels",
    str(DEMO_PIXELS),
    "--max-pixels",
    str(DEMO_PIXELS),
]
# name: (videos, seed); the part's name says its events per video (EVENTS)
TRAIN_VIDEOS = {"two_events": (3000, 1), "one_event": (3000, 3)}
HELDOUT = (128, 5)  # 128 one-event videos (128 held-out queries), seed 5
# Stage 2: from stage 1's best (--model is added), on the same videos with half of the
# one-event ones left out (a seed's first N videos are the same for any count).
QUERY_RECIPE: list[str] = [
    "--train-vision",
    "false",
    "--learning-rate",
    "5e-4",
    "--warmup-steps",
    "100",
    "--lr-scheduler-type",
    "cosine",
    "--min-lr-ratio",
    "0.2",
    "--weight-decay",
    "0.01",
    "--per-device-train-batch-size",
    "16",
    "--max-steps",
    "4000",
    "--eval-steps",
    "250",
    "--save-steps",
    "250",
    "--cache-videos",
    "true",
    "--fps",
    "2",
    "--min-pixels",
    str(DEMO_PIXELS),
    "--max-pixels",
    str(DEMO_PIXELS),
]
QUERY_VIDEOS = {"two_events": (3000, 1), "one_event": (1500, 3)}
QUERY_HELDOUT = (64, 7)  # 64 two-event videos (128 held-out queries), seed 7
EVENTS = {"two_events": 2, "one_event": 1}


def generate_split(out: str | Path, num_videos: int, seed: int, events: int = DEMO_EVENTS) -> Path:
    """Synthetic videos drawn like the demo's; returns the annotation file."""
    from videoopd.data.synthetic import generate_dataset

    return generate_dataset(out, num_videos=num_videos, seed=seed, events_per_video=events, **DEMO_DATA)


def load_demo_checkpoint(path: str | Path, *, trainable: bool, cfg: Any = None) -> tuple[Any, Any]:
    """(model, processor) of a shipped demo checkpoint, in float32 on the CPU; frozen unless
    ``trainable`` (then prepared per ``cfg.gradient_checkpointing`` / ``cfg.train_vision``)."""
    from videoopd.qwen.models import load_policy
    from videoopd.qwen.processing import load_processor

    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo checkpoint is missing from {path}; regenerate it with `python -m videoopd.demo_teacher`"
        )
    model = load_policy(
        path,
        trainable=trainable,
        dtype="float32",
        gradient_checkpointing=bool(cfg and cfg.gradient_checkpointing),
        train_vision=bool(cfg and cfg.train_vision),
    )
    return model, load_processor(path)


def mixed_pool(parts: list[Path], out: Path, videos: list[int | None] | None = None) -> Path:
    """One annotation file over several synthetic sets (absolute video paths, interleaved);
    ``videos[i]``, when given and not None, keeps only the first that many videos of part i."""
    import random

    rows = []
    for index, annotation in enumerate(parts):
        limit = videos[index] if videos is not None else None
        kept: set[str] = set()
        for line in annotation.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if limit is not None and row["video"] not in kept:
                if len(kept) == limit:
                    continue
                kept.add(row["video"])
            row["video"] = str((annotation.parent / row["video"]).resolve())
            row["id"] = f"{annotation.parent.name}/{row['id']}"
            rows.append(row)
    random.Random(0).shuffle(rows)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return out


STUDENT_GAP = 25.0  # the student is at least this many mIoU points below the teacher


def evaluate_demo_checkpoint(path: str | Path, records: list[Any]) -> Any:
    """:func:`videoopd.evaluation.evaluate.evaluate` of a demo checkpoint on ``records`` with the
    demo's decoding."""
    from videoopd.data.video import DecodeConfig
    from videoopd.evaluation.evaluate import evaluate

    model, processor = load_demo_checkpoint(path, trainable=False)
    config = DecodeConfig.for_processor(processor, fps=2.0, min_pixels=DEMO_PIXELS, max_pixels=DEMO_PIXELS)
    return evaluate(model, processor, records, decode_config=config, batch_size=16, max_new_tokens=16, progress=False)


def checkpoint_models(run: Path) -> dict[int, Path]:
    """{step: Hugging Face model folder} of a run's complete checkpoints."""
    return {int(folder.name.split("-")[1]): folder / MODEL_FOLDER for folder in complete_checkpoints(run)}


def evaluate_checkpoints(run: Path, heldout: Path) -> dict[int, dict[str, float]]:
    """Held-out metrics of every checkpoint of an SFT run, on ``heldout``."""
    from videoopd.data.annotations import load_annotations

    records, _ = load_annotations(heldout)
    results = {}
    for step, folder in checkpoint_models(run).items():
        results[step] = evaluate_demo_checkpoint(folder, records).metrics
        print(f"{folder}: held-out mIoU {results[step]['mIoU']:.2f}")
    return results


def run_metrics(run: Path) -> list[dict[str, Any]]:
    """The rows of an SFT run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def run_evaluations(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """{step: held-out metrics} of an SFT run's own evaluations (its ``eval/`` rows)."""
    return {
        row["step"]: {k[5:]: v for k, v in row.items() if k.startswith("eval/")} for row in rows if "eval/mIoU" in row
    }


def run_record(
    run: Path,
    recipe: Sequence[str],
    train: dict[str, Any],
    heldout: tuple[int, int],
    metrics: dict[int, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """What ``training.json`` keeps of one SFT stage: recipe, data, held-out metrics per
    evaluated step (the run's own, unless ``metrics`` is given) and the loss curve."""
    rows = run_metrics(run)
    losses = [row["loss"] for row in rows if "loss" in row]
    if metrics is None:
        metrics = run_evaluations(rows)
    return {
        "sft_arguments": list(recipe),
        "train": train,
        "heldout": heldout,
        "steps_trained": len(losses),
        "heldout_by_step": metrics,
        "loss_mean_per_50_steps": [
            sum(losses[i : i + 50]) / len(losses[i : i + 50]) for i in range(0, len(losses), 50)
        ],
    }


def export(
    run: Path,
    out: Path = TEACHER_DIR,
    student_out: Path = STUDENT_DIR,
    extra_args: Sequence[str] = (),
    heldout: Path | None = None,
    first_stage: Path | None = None,
) -> int:
    """Copy the teacher and the student out of a stage-2 SFT run folder's checkpoints.

    Teacher: the checkpoint with the best held-out mIoU; student: the latest earlier one at
    least ``STUDENT_GAP`` points below it. The mIoUs are the run's own evaluations, or, with
    ``heldout``, every checkpoint re-evaluated on that annotation file. ``first_stage`` (the
    stage-1 run folder, or a ``training.json`` that describes it) goes into ``training.json``.
    """
    models = checkpoint_models(run)
    if heldout is not None:
        metrics = evaluate_checkpoints(run, heldout)
    else:
        metrics = {step: m for step, m in run_evaluations(run_metrics(run)).items() if step in models}
    if not metrics:
        print(f"{run}: no evaluated step checkpoints (run the SFT with --eval-steps = --save-steps)")
        return 1
    teacher_step = max(metrics, key=lambda step: (metrics[step]["mIoU"], -step))
    best = metrics[teacher_step]["mIoU"]
    weaker = [step for step in metrics if step < teacher_step and metrics[step]["mIoU"] <= best - STUDENT_GAP]
    if not weaker:
        print(
            f"no checkpoint before step {teacher_step} is {STUDENT_GAP} mIoU below the best ({best:.2f}); "
            "no student exported"
        )
        return 1
    student_step = max(weaker)
    for step, target in ((teacher_step, out), (student_step, student_out)):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(models[step], target)
    stages = []
    if first_stage is not None:
        stages.append(
            json.loads(first_stage.read_text(encoding="utf-8"))
            if first_stage.is_file()
            else run_record(first_stage, [*SFT_RECIPE, *extra_args], TRAIN_VIDEOS, HELDOUT)
        )
    stages.append(run_record(run, [*QUERY_RECIPE, *extra_args], QUERY_VIDEOS, QUERY_HELDOUT, metrics))
    (out / "training.json").write_text(
        json.dumps(
            {
                "command": "python -m videoopd.demo_teacher " + " ".join(extra_args),
                "data_spec": DEMO_DATA,
                "stages": stages,
                "selected_on": str(heldout) if heldout is not None else "the stage-2 run's --eval-data",
                "teacher_step": teacher_step,
                "student_step": student_step,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"demo teacher: held-out mIoU {best:.2f} (step {teacher_step}) -> {out}")
    print(f"demo student: held-out mIoU {metrics[student_step]['mIoU']:.2f} (step {student_step}) -> {student_out}")
    return 0
