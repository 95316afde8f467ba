"""What the loop needs from the distributed engine (accelerate over torch.distributed: DDP, FSDP2).

The loss and the teacher's scoring run inside the models' forwards
(:func:`videoopd.qwen.models.policy_head_forward`); generation and evaluation split and
gather through :mod:`videoopd.evaluation.evaluate`.

- :func:`place_teacher`: the frozen teacher, sharded by FSDP2 or replicated on each device.
- :func:`unsupported_engine`: a clear error for engines the loop does not run on.
- :func:`reduce_step_metrics`: one collective and one host sync per logged step.
- :func:`leave_process_group`: the end of a command that finished, on every process.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch

__all__: list[str] = []  # nothing here is promised: docs/api.md

TEACHER_PLACEMENTS = ("auto", "replicate", "shard", "service")


def is_fsdp2(accelerator: Any) -> bool:
    return bool(getattr(accelerator, "is_fsdp2", False))


def unsupported_engine(accelerator: Any) -> str | None:
    """Why this launch's engine cannot run the loop (None when it can)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return (
            "DeepSpeed is not supported by videoopd's loop (it has not run on our test machines); "
            "launch with configs/accelerate/fsdp2.yaml (sharded) or ddp.yaml (replicated) instead"
        )
    if kind == DistributedType.FSDP and not is_fsdp2(accelerator):
        return "FSDP1 is not supported; set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp2.yaml)"
    return None


def place_teacher(
    accelerator: Any, teacher: torch.nn.Module, placement: str = "auto", device: str | torch.device | None = None
) -> torch.nn.Module:
    """Put the frozen teacher where the engine wants it; returns it.

    ``placement``: "shard" (FSDP2 ``fully_shard`` with the run's FSDP2 settings: parameters
    sharded over the processes, no gradients, no optimizer state; needs an FSDP2 launch),
    "replicate" (a full copy on ``device`` or this process's device), "auto" (shard under
    FSDP2, replicate otherwise).
    """
    if placement not in TEACHER_PLACEMENTS or placement == "service":
        raise ValueError(
            f"a teacher in the training processes is placed by one of "
            f"{tuple(p for p in TEACHER_PLACEMENTS if p != 'service')}, got {placement!r} (a service's "
            "teacher runs on Ray actors: videoopd.algo.teacher_service)"
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    if placement == "auto":
        placement = "shard" if is_fsdp2(accelerator) else "replicate"
    if placement == "shard":
        if not is_fsdp2(accelerator):
            raise ValueError(
                "a sharded teacher needs an FSDP2 launch "
                "(accelerate launch --config_file configs/accelerate/fsdp2.yaml ...)"
            )
        if device is not None:
            raise ValueError(
                "--teacher-device places a replicated teacher; a sharded one lives on every process's device"
            )
        from accelerate.utils import fsdp2_prepare_model

        # fully_shard moves each shard to this process's device: the whole teacher never
        # has to fit one device.
        return fsdp2_prepare_model(accelerator, teacher)
    return teacher.to(device if device is not None else accelerator.device)


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: the CUDA allocator's peak on a GPU, peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def reduce_step_metrics(
    accelerator: Any, sums: dict[str, torch.Tensor], per_rank: dict[str, Any]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Sum ``sums`` (0-dim tensors, any device) over processes and collect ``per_rank`` values
    (floats or 0-dim tensors) of every process, with one all-gather and one host sync. Returns
    (summed, per-rank lists)."""
    keys = sorted(sums)
    rank_keys = sorted(per_rank)
    device = accelerator.device
    local = torch.stack(
        [
            torch.as_tensor(v).detach().to(device=device, dtype=torch.float64).reshape(())
            for v in [sums[k] for k in keys] + [per_rank[k] for k in rank_keys]
        ]
    )
    rows = accelerator.gather(local.unsqueeze(0)) if accelerator.num_processes > 1 else local.unsqueeze(0)
    table = rows.tolist()
    summed = {k: sum(row[i] for row in table) for i, k in enumerate(keys)}
    ranks = {k: [row[len(keys) + i] for row in table] for i, k in enumerate(rank_keys)}
    return summed, ranks


def leave_process_group() -> None:
    """End this process's part of a launch whose command finished (every process calls it): wait
    for the others, then destroy the default process group while the interpreter is still whole.
    A process that exits without it can abort in gloo's threads at interpreter exit (SIGABRT,
    "terminate called without an active exception": pytorch/pytorch#190489), which fails a
    launch whose run had finished; NCCL warns of it. Nothing when no group was started."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
