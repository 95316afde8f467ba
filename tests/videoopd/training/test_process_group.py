"""``leave_process_group``: the commands' end on every process of a launch destroys the default
process group (a gloo process that exits with it alive can abort at interpreter exit,
pytorch/pytorch#190489); nothing when none was started."""

from __future__ import annotations

import torch.distributed as dist

from videoopd.training.distributed import leave_process_group


def test_a_started_group_is_destroyed_and_none_is_left_alone(tmp_path):
    leave_process_group()  # no group: nothing to do
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        leave_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
