"""Temporal-grounding evaluation: batched greedy generation, answer parsing, R1@{0.3,0.5,0.7}, mIoU.

:func:`evaluate` scores an in-memory model (the training loop's held-out evaluation, and
``python -m videoopd.eval``). With an ``accelerator`` of several processes the records are
split into contiguous shares (accelerate's ``split_between_processes``), each process generates
its share, and the rows are gathered back in record order (``gather_object``): the metrics and
prediction rows are those of one process on the same data; only the main process writes.

A predictions file ``P`` (JSONL, one row per record, nothing else) has a sidecar
``P.meta.json``, ``{"version": 1, "identity": {...}}``, written before the first row: what
the rows answer. The identity holds the decoding settings that change answers
(:func:`predictions_identity`: prompt style and system prompt, greedy decoding,
max_new_tokens, frame sampling and pixel budget) plus what the caller adds (``python -m
videoopd.eval``: the data file's path and sha256, its format, video root, durations file,
the model path and dtype). ``resume=True`` keeps old rows only when the recorded identity
equals the current one; otherwise it raises ValueError naming the fields that differ. A
non-empty predictions file without a sidecar (written before identities were recorded) is
refused as well: nothing says which data or model its rows belong to, and rows matched by id
alone would be reported as another data set's answers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from videoopd.data.annotations import DataIssue, GroundingRecord
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.data.video import DecodeConfig
from videoopd.evaluation.predictions import IDENTITY_VERSION as IDENTITY_VERSION
from videoopd.evaluation.predictions import check_resumable as check_resumable
from videoopd.evaluation.predictions import ends_mid_line, open_predictions
from videoopd.evaluation.predictions import file_sha256 as file_sha256
from videoopd.evaluation.predictions import identity_path as identity_path
from videoopd.evaluation.predictions import predictions_identity as predictions_identity
from videoopd.evaluation.predictions import read_predictions as read_predictions
from videoopd.grounding.metrics import grounding_metrics, parse_span, sample_iou
from videoopd.grounding.protocols import PROTOCOL_NAMES, get_protocol
from videoopd.qwen.collators import GroundingCollator
from videoopd.qwen.generation import generate
from videoopd.qwen.models import is_fsdp_sharded
from videoopd.qwen.prompts import PROMPT_STYLES, STYLE_DEFAULT

__all__ = ["EvalResult", "evaluate", "format_metrics_table", "predictions_identity", "read_predictions"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class EvalResult:
    """Prediction rows (one per record, in record order), overall and per-source metrics."""

    predictions: list[dict[str, Any]]
    metrics: dict[str, float]
    per_source: dict[str, dict[str, float]]
    failed_videos: list[tuple[str, str]] = field(default_factory=list)  # (record id, error)
    resumed: int = 0  # rows taken from an existing predictions file
    # Scored rows whose video disagrees with the annotation (span past its end, duration off).
    data_issues: list[tuple[str, DataIssue]] = field(default_factory=list)  # (record id, issue)
    # The same answers scored under every protocol's rules: {protocol: {"overall", "per_source"}}.
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def data_issue_counts(self) -> dict[str, int]:
        return dict(Counter(issue.kind for _, issue in self.data_issues))


def _prediction_row(
    record: GroundingRecord,
    answer: str | None,
    error: str | None = None,
    data_issue: DataIssue | None = None,
    protocol: str = "paper",
) -> dict[str, Any]:
    pred = parse_span(answer, protocol) if answer is not None else None
    return {
        "id": record.id,
        "source": record.source,
        "video": record.video,
        "query": record.query,
        "gt": record.gt,
        "duration": record.duration,
        "answer": answer,
        "pred": list(pred) if pred is not None else None,
        "iou": sample_iou(pred, record.gt),
        "error": error,
        "data_issue": asdict(data_issue) if data_issue is not None else None,
    }


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _metrics_for(
    rows: Sequence[dict[str, Any]], protocol: str = "paper", moment_retrieval: bool = False
) -> dict[str, Any]:
    """Metrics of ``rows`` under ``protocol``, reading each raw answer with its parser (so that
    the rows of one run are scored under every protocol's rules)."""
    parse = get_protocol(protocol).parse
    preds = [parse(row["answer"]) if row["answer"] is not None else None for row in rows]
    return grounding_metrics(preds, [row["gt"] for row in rows], protocol, moment_retrieval=moment_retrieval)


def protocol_metrics(rows: Sequence[dict[str, Any]], moment_retrieval: bool = False) -> dict[str, dict[str, Any]]:
    """``{protocol: {"overall": metrics, "per_source": {source: metrics}}}`` of prediction
    rows, for every protocol of :data:`videoopd.grounding.protocols.PROTOCOL_NAMES`
    (``moment_retrieval``: with QVHighlights' own metrics)."""
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row)
    return {
        name: {
            "overall": _metrics_for(rows, name, moment_retrieval),
            "per_source": {
                source: _metrics_for(group, name, moment_retrieval) for source, group in sorted(by_source.items())
            },
        }
        for name in PROTOCOL_NAMES
    }


def evaluate(
    model: Any,
    processor: Any,
    records: Sequence[GroundingRecord],
    *,
    decode_config: DecodeConfig | None = None,
    prompt_style: str = "paper",
    system_prompt: Any = STYLE_DEFAULT,
    batch_size: int = 1,
    max_new_tokens: int = 64,
    num_workers: int = 0,
    predictions_path: str | Path | None = None,
    resume: bool = False,
    on_video_error: str = "raise",
    progress: bool = True,
    accelerator: Any = None,
    identity: Mapping[str, Any] | None = None,
    protocol: str = "paper",
    moment_retrieval: bool = False,
    gather_weights: bool = True,
) -> EvalResult:
    """Generate an answer for every record greedily, parse it and score it.

    The steps: check the arguments, prepare the predictions file (:func:`open_predictions`:
    identity, resume), take this process's share (:func:`_my_share`), generate its rows
    (:func:`_generate_rows`), gather them in record order (:func:`_gather_rows`), write and
    score them (:func:`_scored`).

    Args:
        model: a Qwen2.5-VL / Qwen3-VL ``*ForConditionalGeneration`` with full parameters, or
            the FSDP2-sharded model of a run (every process must then call ``evaluate``).
        processor: its processor.
        records: what to evaluate (ids must be unique).
        decode_config: frame sampling; default ``DecodeConfig.for_processor(processor)``.
        prompt_style: ``"paper"`` or ``"timelens"`` (see :mod:`videoopd.qwen.prompts`).
        system_prompt: the style's own by default; None for none, a string, or
            :data:`~videoopd.qwen.prompts.DATA_SYSTEM` (each record's own, else the style's).
        batch_size: prompts per ``generate`` call (left-padded), per process.
        num_workers: DataLoader workers that decode videos and run the processor.
        predictions_path: JSONL to write rows to (as they are produced on one process; by
            the main process after the gather on several).
        resume: keep the rows already in ``predictions_path`` for these records' ids and
            evaluate only the rest (otherwise the file is overwritten). One process only.
            Raises ValueError when the file was produced for another identity, or records none
            (see the module docstring).
        on_video_error: ``"raise"`` stops at a video that cannot be decoded (the error names
            the file); ``"report"`` records it as a failed row (no answer, IoU 0, counted).
            A video that decodes but disagrees with its annotation is scored as usual, and
            its row's ``data_issue`` names the annotation's file and line (counted in
            :attr:`EvalResult.data_issues`).
        progress: show a tqdm progress bar (main process).
        accelerator: an ``accelerate.Accelerator``; with several processes each generates an
            contiguous share of the records and every process gets the gathered result.
        identity: what the caller knows of the inputs beyond the decoding settings (data file,
            its hash, model path, ...): recorded in ``predictions_path``'s ``.meta.json``
            sidecar with :func:`predictions_identity` and checked on resume.
        protocol: how queries are shown (its query normalisation) and answers parsed and
            scored for ``pred``, ``iou`` and ``metrics`` (:mod:`videoopd.grounding.protocols`);
            the prompt and frames are ``prompt_style`` and ``decode_config``, which
            ``python -m videoopd.eval --protocol`` sets from it. ``EvalResult.protocols``
            scores the same answers under every protocol.
        moment_retrieval: also QVHighlights' moment-retrieval metrics (MR-R1, MR-mAP; see
            :func:`videoopd.grounding.metrics.moment_retrieval_metrics`) in every block.
        gather_weights: an FSDP2 model's weights gathered once per ``generate`` call, not per
            generated token (:func:`videoopd.qwen.generation.generate`).
    """
    rules = get_protocol(protocol)
    world = accelerator.num_processes if accelerator is not None else 1
    main = accelerator is None or accelerator.is_main_process
    records = _checked_records(
        records,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_workers=num_workers,
        prompt_style=prompt_style,
        on_video_error=on_video_error,
        resume=resume,
        predictions_path=predictions_path,
        world=world,
    )
    if decode_config is None:
        decode_config = DecodeConfig.for_processor(processor)
    path = Path(predictions_path) if predictions_path is not None else None
    done: dict[str, dict[str, Any]] = {}
    if path is not None:
        recorded = predictions_identity(decode_config, prompt_style, system_prompt, max_new_tokens, identity)
        done = open_predictions(path, recorded, resume, {record.id for record in records}, main)
    todo, real = _my_share([record for record in records if record.id not in done], accelerator)
    stream = path if world == 1 else None  # one process writes rows as they come
    collator = GroundingCollator(processor, prompt_style, system_prompt, rules.normalize_query)
    new_rows = _generate_rows(
        model,
        processor,
        todo,
        collator,
        decode_config,
        batch_size=batch_size,
        num_workers=num_workers,
        max_new_tokens=max_new_tokens,
        on_video_error=on_video_error,
        protocol=rules.name,
        stream=stream,
        processes=world,
        progress=progress and main,
        synced=world > 1 and is_fsdp_sharded(model),
        gather_weights=gather_weights,
    )
    # A collated batch keeps its decodable records first: order the rows by record again,
    # dropping the share's padding, before the gather puts the shares back in rank order.
    by_id = {row["id"]: row for row in new_rows}
    gathered = {row["id"]: row for row in _gather_rows([by_id[record.id] for record in todo[:real]], accelerator)}
    rows = [done.get(record.id) or gathered[record.id] for record in records]
    if path is not None and stream is None and main:
        with path.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    failed = [(row["id"], row["error"]) for row in gathered.values() if row["error"] is not None]
    return _scored(rows, failed, resumed=len(done), protocol=rules.name, moment_retrieval=moment_retrieval)


def _checked_records(
    records: Sequence[GroundingRecord],
    *,
    batch_size: int,
    max_new_tokens: int,
    num_workers: int,
    prompt_style: str,
    on_video_error: str,
    resume: bool,
    predictions_path: Any,
    world: int,
) -> list[GroundingRecord]:
    """:func:`evaluate`'s arguments checked (ValueError naming the argument); the records as a list."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {sorted(PROMPT_STYLES)}, got {prompt_style!r}")
    if on_video_error not in ("raise", "report"):
        raise ValueError(f"on_video_error must be 'raise' or 'report', got {on_video_error!r}")
    if resume and predictions_path is None:
        raise ValueError("resume=True needs predictions_path")
    if resume and world > 1:
        raise ValueError("resume=True is for one process; run python -m videoopd.eval to resume a predictions file")
    records = list(records)
    if not records:
        raise ValueError("records must not be empty")
    ids = [record.id for record in records]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"record ids must be unique, duplicated: {duplicates[:5]}")
    return records


def _my_share(items: list[T], accelerator: Any) -> tuple[list[T], int]:
    """This process's contiguous share of ``items`` (accelerate's ``split_between_processes``),
    padded with copies of the last item to the same length on every process, so that every
    process runs the same number of batches (FSDP2's generate gathers on each); returns
    (share, number of real items in it: the padding comes after them)."""
    if accelerator is None or accelerator.num_processes <= 1 or not items:
        return list(items), len(items)
    with accelerator.split_between_processes(list(range(len(items)))) as mine:
        real = len(mine)
    with accelerator.split_between_processes(items, apply_padding=True) as share:
        return list(share), real


def _gather_rows(rows: list[dict[str, Any]], accelerator: Any) -> list[dict[str, Any]]:
    """Every process's rows, concatenated in rank order (record order for :func:`_my_share`'s
    contiguous shares), on every process (accelerate's ``gather_object``)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return rows
    from accelerate.utils import gather_object

    return gather_object(rows)


def _generate_rows(
    model: Any,
    processor: Any,
    todo: list[GroundingRecord],
    collator: GroundingCollator,
    decode_config: DecodeConfig,
    *,
    batch_size: int,
    num_workers: int,
    max_new_tokens: int,
    on_video_error: str,
    protocol: str,
    stream: Path | None,
    processes: int,
    progress: bool,
    synced: bool,
    gather_weights: bool = True,
) -> list[dict[str, Any]]:
    """The prediction rows of ``todo`` (decodable records of a batch first), appended to
    ``stream`` as they come when given; ``synced``: generate with ``synced_gpus`` (a sharded
    model, where every process must run the same number of steps); ``gather_weights``:
    :func:`videoopd.qwen.generation.generate`'s. The progress bar counts
    the rows of all ``processes``, assuming they advance together."""
    if not todo:
        return []
    loader = torch.utils.data.DataLoader(
        # "raise" too decodes in report mode: a worker's own exception would reach this
        # process re-wrapped, its traceback in the message; it is raised here instead.
        GroundingVideoDataset(todo, decode_config, on_error="report"),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collator,
    )
    rows: list[dict[str, Any]] = []
    bar = _progress_bar(len(todo) * processes, enabled=progress)
    handle = stream.open("a", encoding="utf-8") if stream is not None else None
    if handle is not None and ends_mid_line(stream):
        handle.write("\n")  # a crash cut the last row short: start ours on a fresh line
    try:
        for batch in loader:
            if on_video_error == "raise" and batch["failed"]:
                raise batch["failed_exceptions"][0] or RuntimeError(batch["failed"][0][1])
            new = []
            if batch["inputs"] is not None:
                inputs = batch["inputs"].to(_model_device(model))
                answers = generate(
                    model,
                    processor,
                    inputs,
                    max_new_tokens=max_new_tokens,
                    synced_gpus=synced,
                    gather_weights=gather_weights,
                ).answers
                new += [
                    _prediction_row(record, answer, data_issue=issue, protocol=protocol)
                    for record, answer, issue in zip(batch["records"], answers, batch["data_issues"])
                ]
            for record, error in batch["failed"]:
                logger.warning("%s: %s", record.id, error)
                new.append(_prediction_row(record, None, error=error, protocol=protocol))
            rows += new
            if handle is not None:
                handle.writelines(json.dumps(row) + "\n" for row in new)
                handle.flush()
            bar.update(len(new) * processes)
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    return rows


def _scored(
    rows: list[dict[str, Any]], failed: list[tuple[str, str]], *, resumed: int, protocol: str, moment_retrieval: bool
) -> EvalResult:
    """The :class:`EvalResult` of the rows of every record: metrics overall, per source and
    under every protocol, the failed videos and the rows' data issues."""
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row)
    return EvalResult(
        predictions=rows,
        metrics=_metrics_for(rows, protocol, moment_retrieval),
        per_source={
            source: _metrics_for(group, protocol, moment_retrieval) for source, group in sorted(by_source.items())
        },
        failed_videos=failed,
        resumed=resumed,
        data_issues=[(row["id"], DataIssue(**row["data_issue"])) for row in rows if row.get("data_issue")],
        protocols=protocol_metrics(rows, moment_retrieval),
    )


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval", unit="query", disable=not enabled, dynamic_ncols=True)


def format_metrics_table(metrics: dict[str, float], per_source: dict[str, dict[str, float]] | None = None) -> str:
    """The metrics as a fixed-width table: one row overall, then one per source."""
    columns = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
    entries = [("all", metrics)] + sorted((per_source or {}).items())
    width = max(len("source"), *(len(name) for name, _ in entries))
    lines = [f"{'source':<{width}}  {'total':>6}  {'parsed':>6}  " + "  ".join(f"{c:>7}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for name, values in entries:
        lines.append(
            f"{name:<{width}}  {int(values['total']):>6}  {int(values['parsed']):>6}  "
            + "  ".join(f"{values[c]:>7.2f}" if values[c] is not None else f"{'-':>7}" for c in columns)
        )
    return "\n".join(lines)
