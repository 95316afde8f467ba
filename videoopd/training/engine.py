"""What the training loop steps with: the accelerator (and FSDP on CPU), the optimizer and its learning-rate
schedule, the data stream over epochs and the per-phase step timer."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch

from videoopd.training.config import ConfigError, RunOptions
from videoopd.training.distributed import unsupported_engine
from videoopd.training.precision import MasterWeights

__all__: list[str] = []  # nothing here is promised: docs/api.md


def make_accelerator(cfg: RunOptions, mixed_precision: str | None = None) -> Any:
    """The run's ``accelerate.Accelerator``: the launch's engine (``accelerate launch`` config:
    DDP, FSDP2), or one process on ``cfg.device``'s kind of device. ``mixed_precision``
    ("no", "bf16", ...) overrides the launch's."""
    from accelerate import Accelerator, PartialState
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import DataLoaderConfiguration

    cpu = cfg.device is not None and torch.device(cfg.device).type == "cpu"
    installed = [str(t) for t in get_available_trackers()]
    missing = [name for name in cfg.trackers if name != "all" and name not in installed]
    if missing:  # accelerate would leave them out without a word
        raise ConfigError(
            f"--report-to {cfg.report_to}: {', '.join(missing)} is not installed here "
            f"(installed trackers: {', '.join(installed) or 'none'})"
        )
    # A process that waits on a dead or hung one fails after --ddp_timeout, not hours. Given to the process
    # state, which starts the process group: accelerate's InitProcessGroupKwargs would drop a timeout equal to
    # its NCCL default (600 s) and gloo would then wait torch's 30 minutes.
    PartialState(cpu=cpu, timeout=timedelta(seconds=cfg.ddp_timeout))
    # The seedable sampler orders each epoch by (seed, epoch) alone: a resumed run can find its place.
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        log_with=cfg.trackers or None,
        project_dir=cfg.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    enable_fsdp_on_cpu(accelerator)
    reason = unsupported_engine(accelerator)
    if reason is not None:
        raise ConfigError(reason)
    return accelerator


def enable_fsdp_on_cpu(accelerator: Any) -> None:
    """Honour an FSDP launch config on CPU processes (gloo).

    accelerate turns FSDP on only over accelerators and falls back to plain multi-CPU data
    parallelism otherwise, while torch's ``fully_shard`` runs on the CPU too. So that an FSDP2
    launch behaves the same everywhere (and is tested on CPUs), set the state accelerate
    would have set: distributed type FSDP with the launch's FSDP plugin.
    """
    import os

    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and accelerator.distributed_type == DistributedType.MULTI_CPU
    ):
        plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* environment
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        # AcceleratorState re-reads the process state each time it is constructed: set both
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP


def lr_lambda(cfg: RunOptions) -> Callable[[int], float]:
    """The schedule as a factor of the peak lr at optimizer step ``i`` (0-based, as LambdaLR
    counts): linear warm-up over ``warmup_steps``, then constant or cosine decay to
    ``min_lr_ratio`` at ``max_steps``."""

    def factor(i: int) -> float:
        step = i + 1
        if cfg.warmup_steps and step <= cfg.warmup_steps:
            return step / cfg.warmup_steps
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: torch.nn.Module, cfg: RunOptions, masters: MasterWeights | None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (their fp32 masters when given), in groups:
    (vision tower or not) x (matrices, decayed, or not)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    visual = getattr(getattr(model, "model", None), "visual", None)
    vision_ids = {id(p) for p in visual.parameters()} if visual is not None else set()
    groups = []
    for is_vision in (False, True):
        peak = (cfg.vision_lr or cfg.learning_rate) if is_vision else cfg.learning_rate
        for decayed in (True, False):
            members = [p for p in params if (id(p) in vision_ids) == is_vision and (p.ndim >= 2) == decayed]
            if members:
                stepped = [masters.master_of(p) for p in members] if masters is not None else members
                groups.append({"params": stepped, "lr": peak, "weight_decay": cfg.weight_decay if decayed else 0.0})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, cfg.adam_beta2))


class DataStream:
    """Endless batches of a prepared DataLoader, epoch after epoch, that knows its position
    (``epoch``, ``batches_in_epoch`` drawn) and can start from one: the order is accelerate's
    seedable sampler's (a function of the seed and the epoch), and a resumed stream skips the
    epoch's first batches at the sampler (no video is decoded for them). Videos that fail to
    decode are left out of their batch by the collator; they are reported here once each (file
    and error) and kept in :attr:`failed`; a batch with none left is skipped (and counted in the
    position); a whole epoch without a decodable video stops the run with an error."""

    def __init__(
        self,
        accelerator: Any,
        loader: Any,
        epoch: int = 0,
        batches_in_epoch: int = 0,
        log: Callable[[str], None] = print,
    ):
        self.accelerator, self.loader = accelerator, loader
        self.epoch, self.batches_in_epoch = epoch, batches_in_epoch
        self.iterator: Iterator[dict[str, Any]] | None = None
        self.failed: dict[str, str] = {}  # record id -> error, this process's
        self.log = log

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> dict[str, Any]:
        empty_epochs = 0
        while True:
            if self.iterator is None:
                source = (
                    self.accelerator.skip_first_batches(self.loader, self.batches_in_epoch)
                    if self.batches_in_epoch
                    else self.loader
                )
                source.set_epoch(self.epoch)
                self.iterator = iter(source)
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.epoch, self.batches_in_epoch, self.iterator = self.epoch + 1, 0, None
                empty_epochs += 1
                if empty_epochs > 1:
                    examples = "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:3])
                    raise ConfigError(
                        f"no decodable video in a whole epoch of the training data ({len(self.failed)} "
                        f"failed, e.g. {examples})"
                    ) from None
                continue
            self.batches_in_epoch += 1
            for record, error in batch.get("failed", []):
                if record.id not in self.failed:
                    self.failed[record.id] = error
                    self.log(f"warning: training query {record.id} left out: {error}")
            if batch["inputs"] is not None:
                return batch


class PhaseTimer:
    """Wall time of the phases of a step. On CUDA it records events (read after the step's one
    host sync), so it adds no synchronisation; on CPU it reads the clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, tuple[Any, Any]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks[name] = (start, end)

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            return {k: s.elapsed_time(e) / 1000 for k, (s, e) in self.marks.items()}
        return {k: e - s for k, (s, e) in self.marks.items()}
