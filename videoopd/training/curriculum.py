"""The TVDF curriculum in the training loop: rounds of (score the pool, select, train).

Round r (0-based), before its first optimizer step:

1. the pool is scored by greedy answers (the evaluation code, split over the processes): the
   frozen teacher once per run (cached in ``OUTPUT_DIR/curriculum/teacher_pool.predictions.jsonl``
   and reused by later rounds and by a resumed run), the current student every round
   (``round{r}_student_pool.predictions.jsonl``);
2. :func:`videoopd.algo.curriculum.select_round` keeps the samples the teacher gets right
   (IoU >= ``teacher_iou_min``) and picks ``round_size`` by disagreement (selector ``topk``,
   ``gwds``, ``random`` or ``off``), seeded by (seed, round);
3. the loop trains ``steps_per_round`` optimizer steps on the selection (cycling through it);
   the optimizer and its state carry over between rounds.

Each round's record (pool size, dropped by the teacher filter, delta histogram, selected count
and ids, teacher and student mIoU on the pool and on the selection) is returned to the loop, which logs
it to ``metrics.jsonl`` and ``rounds.jsonl`` and keeps it in its checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from videoopd.algo.curriculum import select_round
from videoopd.evaluation.evaluate import evaluate
from videoopd.training.config import ConfigError

__all__: list[str] = []  # nothing here is promised: docs/api.md


def one_pass_steps(round_size: int, batch_size: int, grad_accum: int, processes: int) -> int:
    """Optimizer steps that see ``round_size`` prompts once (the last step may wrap around)."""
    return max(1, math.ceil(round_size / (batch_size * grad_accum * processes)))


def check_max_steps(cfg: Any, steps_per_round: int) -> None:
    """Refuse a ``--max-steps`` the user gave (``cfg.given``: by flag or ``--config`` YAML) that
    differs from the curriculum's rounds x steps per round, naming both, rather than replace it;
    one from a preset or a default is the curriculum's to set."""
    total = cfg.rounds * steps_per_round
    if "max_steps" in getattr(cfg, "given", ()) and cfg.max_steps != total:
        raise ConfigError(
            f"--max-steps {cfg.max_steps} contradicts the TVDF curriculum's {cfg.rounds} rounds x "
            f"{steps_per_round} steps = {total} optimizer steps: leave --max-steps out, set "
            "--steps-per-round, or train --max-steps steps without the curriculum (--rounds 0)"
        )


class TVDFCurriculum:
    """Rounds of TVDF selection over ``pool`` (the training records) for the loop.

    ``cfg`` carries ``rounds``, ``round_size``, ``selector``, ``teacher_iou_min``,
    ``gwds_center``, ``gwds_sigma``, ``seed``, ``output_dir``, ``prompt_style``,
    ``per_device_eval_batch_size`` and ``max_new_tokens``; ``steps_per_round`` is resolved by the caller.
    """

    def __init__(
        self,
        cfg: Any,
        accelerator: Any,
        teacher: Any,
        teacher_processor: Any,
        pool: Sequence[Any],
        decode_config: Any,
        steps_per_round: int,
        log: Callable[[str], None] = print,
    ):
        check_max_steps(cfg, steps_per_round)
        self.cfg, self.accelerator = cfg, accelerator
        self.teacher, self.teacher_processor = teacher, teacher_processor
        self.pool = list(pool)
        self.decode_config = decode_config
        self.rounds = cfg.rounds
        self.steps_per_round = steps_per_round
        self.folder = Path(cfg.output_dir) / "curriculum"
        self.log = log
        self.teacher_scores: list[float] | None = None
        self.teacher_scorings = 0  # how often the teacher scored the pool in this process

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round

    def round_of(self, step: int) -> int:
        """The 0-based round optimizer step ``step`` (1-based) belongs to."""
        return (step - 1) // self.steps_per_round

    def score(self, model: Any, processor: Any, tag: str, reuse: bool) -> list[float]:
        """Per-sample IoU of ``model``'s greedy answers on the pool (every process calls it)."""
        path = self.folder / f"{tag}.predictions.jsonl"
        if self.accelerator.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        result = evaluate(
            model,
            processor,
            self.pool,
            decode_config=self.decode_config,
            prompt_style=self.cfg.prompt_style,
            batch_size=self.cfg.per_device_eval_batch_size,
            system_prompt=self.cfg.system_prompt_setting,
            max_new_tokens=self.cfg.max_new_tokens,
            predictions_path=path,
            resume=reuse,
            on_video_error="report",
            progress=self.cfg.progress and self.accelerator.is_main_process,
            accelerator=self.accelerator,
            identity={"pool": [r.id for r in self.pool], "scored_by": tag},
        )
        by_id = {row["id"]: row["iou"] for row in result.predictions}
        return [float(by_id[r.id]) for r in self.pool]

    def select(self, round_index: int, student: Any, student_processor: Any) -> tuple[list[int], dict[str, Any]]:
        """Score the pool (the teacher only once), select round ``round_index``'s samples;
        returns (pool indices in selection order, the round's record)."""
        if self.teacher_scores is None:
            # the teacher is frozen: its scores are cached in the run folder and read back on resume
            cached = (self.folder / "teacher_pool.predictions.jsonl").is_file()
            self.teacher_scores = self.score(self.teacher, self.teacher_processor, "teacher_pool", reuse=cached)
            self.teacher_scorings += 0 if cached else 1
        student_scores = self.score(student, student_processor, f"round{round_index}_student_pool", reuse=False)
        cfg = self.cfg
        chosen = select_round(
            self.teacher_scores,
            student_scores,
            selector=cfg.selector,
            k=cfg.round_size,
            teacher_iou_min=cfg.teacher_iou_min,
            center=cfg.gwds_center,
            sigma=cfg.gwds_sigma,
            seed=cfg.seed + round_index,
        )
        indices = list(chosen.indices)

        def miou(scores: list[float], subset: list[int]) -> float | None:
            return 100.0 * sum(scores[i] for i in subset) / len(subset) if subset else None

        everyone = list(range(len(self.pool)))
        record = {
            "round": round_index,
            **chosen.to_log(),
            "steps": self.steps_per_round,
            "teacher_mIoU_pool": miou(self.teacher_scores, everyone),
            "student_mIoU_pool": miou(student_scores, everyone),
            "teacher_mIoU_selected": miou(self.teacher_scores, indices),
            "student_mIoU_selected": miou(student_scores, indices),
            "selected_ids": [self.pool[i].id for i in indices],
        }
        if not indices:
            raise ConfigError(
                f"round {round_index}: no pool sample passes the teacher filter (teacher IoU >= "
                f"{cfg.teacher_iou_min}); lower --teacher-iou-min"
            )
        if chosen.short:
            self.log(
                f"[round {round_index}] only {chosen.survivors} pool samples pass the teacher filter "
                f"(IoU >= {cfg.teacher_iou_min}); training on all of them instead of {cfg.round_size}"
            )
        self.log(
            f"[round {round_index}] pool {record['pool_size']}, dropped by the teacher filter "
            f"{record['dropped_by_teacher']}, selected {record['selected']} ({cfg.selector}); mIoU teacher/student "
            f"on the pool {record['teacher_mIoU_pool']:.2f}/{record['student_mIoU_pool']:.2f}, on the selection "
            f"{record['teacher_mIoU_selected']:.2f}/{record['student_mIoU_selected']:.2f}"
        )
        return indices, record

    @staticmethod
    def write_rounds(out_dir: Path, records: list[dict[str, Any]]) -> None:
        """``rounds.jsonl``: one line per round so far (rewritten whole: it follows the checkpoint)."""
        path = Path(out_dir) / "rounds.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        tmp.replace(path)
