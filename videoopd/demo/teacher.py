"""The tiny teacher of the CPU demo (``python -m videoopd.train`` with no models): its data,
where it ships and the command that regenerates it.

    python -m videoopd.demo.teacher --work runs/demo-teacher          # hours on a 2-core CPU

Any ``python -m videoopd.sft`` flag after these overrides the recipe (e.g. ``--max-steps``).

The teacher is a from-scratch tiny Qwen3-VL (1.0M parameters, hidden 128, 4 layers, vision
tower frozen at its random initialisation) trained by ``python -m videoopd.sft`` on synthetic
grounding videos (:mod:`videoopd.data.synthetic`): 8 s, 2 fps, 32x64 frames (two merged vision
tokens per frame pair), events of 1-4 s. Qwen3-VL writes a ``<t seconds>`` stamp before every
frame pair, so grounding becomes "find the frames with the shape and read their stamps",
which a 1M-parameter model learns (earlier tiny Qwen2.5-VL runs, which have no stamps and
must read time out of rotary positions, stayed on one constant answer). Training the random
vision tower along made its output norm grow ~12x in our runs, drowning what the language
model writes into vision tokens, and learning stalled; frozen, its features still separate
the 8 colours (a linear probe reads them at 99.8%).

The training pool mixes videos with one event and with two (the query's colour picks one).
The demo measures one-event videos: within the steps we could spend, the model learned the
timing (held-out mIoU ~91 on one-event videos) but not to pick the queried colour out of
two (on two-event videos half of its answers are the other event's span; mIoU ~55, against
~35 for the best constant answer). The best checkpoint on a one-event held-out set ships in
``videoopd/demo/assets/demo_teacher`` with ``training.json`` (recipe, curves, metrics); the demo's
student, ``videoopd/demo/assets/demo_student``, is an earlier checkpoint of the same run at least
``STUDENT_GAP`` mIoU points below the teacher (same model, less trained).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from videoopd.training.checkpoint import MODEL_FOLDER, complete_checkpoints

__all__ = ["DEMO_DATA", "DEMO_PIXELS", "HELDOUT", "SFT_RECIPE", "STUDENT_DIR", "STUDENT_GAP", "TEACHER_DIR",
           "TRAIN_VIDEOS", "evaluate_checkpoints", "evaluate_demo_checkpoint", "export", "generate_split",
           "load_demo_checkpoint", "mixed_pool"]

# How the demo's synthetic videos are drawn (arguments of videoopd.data.synthetic.generate_dataset).
DEMO_DATA: dict[str, Any] = {"duration": 8.0, "fps": 2, "height": 32, "width": 64, "min_event": 1.0, "max_event": 4.0}
# Events per video in the demo's held-out and OPD data (see the module docstring for why one).
DEMO_EVENTS = 1
# Frames are decoded at their native 32x64: min_pixels = max_pixels = 32 * 64.
DEMO_PIXELS = 32 * 64
ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER_DIR = ASSETS / "demo_teacher"
STUDENT_DIR = ASSETS / "demo_student"

# The SFT command line (less data paths and output) that made the shipped teacher.
SFT_RECIPE: list[str] = [
    "--init-tiny", "qwen3_vl", "--tiny-hidden-size", "128", "--tiny-layers", "4",
    "--tiny-vision-hidden-size", "64", "--tiny-vision-depth", "2", "--train-vision", "false",
    "--lr", "1e-3", "--warmup-steps", "200", "--weight-decay", "0.01", "--batch-size", "16",
    "--max-steps", "6000", "--eval-every", "500", "--save-every", "500", "--cache-videos", "true",
    "--fps", "2", "--min-pixels", str(DEMO_PIXELS), "--max-pixels", str(DEMO_PIXELS),
]
TRAIN_VIDEOS = {"two_events": (3000, 1), "one_event": (3000, 3)}  # name: (videos, seed)
HELDOUT = (128, 5)  # 128 one-event videos (128 held-out queries), seed 5


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
        raise FileNotFoundError(f"the demo checkpoint is missing from {path}; regenerate it with "
                                "`python -m videoopd.demo.teacher`")
    model = load_policy(path, trainable=trainable, dtype="float32",
                        gradient_checkpointing=bool(cfg and cfg.gradient_checkpointing),
                        train_vision=bool(cfg and cfg.train_vision))
    return model, load_processor(path)


def mixed_pool(parts: list[Path], out: Path) -> Path:
    """One annotation file over several synthetic sets (absolute video paths, interleaved)."""
    import random

    rows = []
    for annotation in parts:
        for line in annotation.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            row["video"] = str((annotation.parent / row["video"]).resolve())
            row["id"] = f"{annotation.parent.name}/{row['id']}"
            rows.append(row)
    random.Random(0).shuffle(rows)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return out


STUDENT_GAP = 30.0  # the student is at least this many mIoU points below the teacher


def evaluate_demo_checkpoint(path: str | Path, records: list[Any]) -> Any:
    """``videoopd.eval.evaluate`` of a demo checkpoint on ``records`` with the demo's decoding."""
    from videoopd.eval import evaluate
    from videoopd.data.video import DecodeConfig

    model, processor = load_demo_checkpoint(path, trainable=False)
    config = DecodeConfig.for_processor(processor, fps=2.0, min_pixels=DEMO_PIXELS, max_pixels=DEMO_PIXELS)
    return evaluate(model, processor, records, decode_config=config, batch_size=16, max_new_tokens=16,
                    progress=False)


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


def export(run: Path, out: Path = TEACHER_DIR, student_out: Path = STUDENT_DIR, extra_args: Sequence[str] = (),
           heldout: Path | None = None) -> int:
    """Copy the teacher and the student out of an SFT run folder's checkpoints.

    Teacher: the checkpoint with the best held-out mIoU; student: the latest earlier one at
    least ``STUDENT_GAP`` points below it. The mIoUs are the run's own evaluations, or, with
    ``heldout``, every checkpoint re-evaluated on that annotation file.
    """
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    models = checkpoint_models(run)
    losses = [row["loss"] for row in curve if "loss" in row]
    if heldout is not None:
        metrics = evaluate_checkpoints(run, heldout)
    else:
        metrics = {row["step"]: {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
                   for row in curve if "eval/mIoU" in row and row["step"] in models}
    if not metrics:
        print(f"{run}: no evaluated step checkpoints (run the SFT with --eval-every = --save-every)")
        return 1
    teacher_step = max(metrics, key=lambda step: (metrics[step]["mIoU"], -step))
    best = metrics[teacher_step]["mIoU"]
    weaker = [step for step in metrics if step < teacher_step and metrics[step]["mIoU"] <= best - STUDENT_GAP]
    if not weaker:
        print(f"no checkpoint before step {teacher_step} is {STUDENT_GAP} mIoU below the best ({best:.2f}); "
              "no student exported")
        return 1
    student_step = max(weaker)
    for step, target in ((teacher_step, out), (student_step, student_out)):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(models[step], target)
    (out / "training.json").write_text(json.dumps({
        "command": "python -m videoopd.demo.teacher " + " ".join(extra_args),
        "sft_arguments": SFT_RECIPE + list(extra_args),
        "data": {"spec": DEMO_DATA, "train": TRAIN_VIDEOS, "heldout": HELDOUT,
                 "selected_on": str(heldout) if heldout is not None else "the run's --eval-data"},
        "steps_trained": len(losses),
        "teacher_step": teacher_step,
        "student_step": student_step,
        "heldout_by_step": metrics,
        "loss_mean_per_50_steps": [sum(losses[i:i + 50]) / len(losses[i:i + 50]) for i in range(0, len(losses), 50)],
    }, indent=1) + "\n", encoding="utf-8")
    print(f"demo teacher: held-out mIoU {best:.2f} (step {teacher_step}) -> {out}")
    print(f"demo student: held-out mIoU {metrics[student_step]['mIoU']:.2f} (step {student_step}) -> {student_out}")
    return 0
