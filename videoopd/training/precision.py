"""fp32 master weights for a half-precision model trained by one process or DDP (FSDP2 keeps
fp32 sharded masters through its own mixed-precision policy instead)."""

from __future__ import annotations

from typing import Any

import torch

__all__: list[str] = []  # nothing here is promised: docs/api.md


class MasterWeights:
    """fp32 copies of half-precision trainable parameters. The model computes (and takes
    gradients) in its own dtype; the optimizer steps the fp32 copies, which are written back
    after each step. Without them, AdamW on bf16 weights loses every update smaller than
    the weight's rounding step (~0.4% of its magnitude): at lr 1e-6 almost all of them."""

    def __init__(self, params: list[Any]):
        self.params = params
        self.masters = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
        self.index = {id(p): i for i, p in enumerate(params)}

    @classmethod
    def for_config(cls, params: list[Any], mode: str) -> MasterWeights | None:
        half = any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
        if mode == "fp32" or (mode == "auto" and half):
            return cls(params)
        return None

    def grads_to_masters(self) -> None:
        for param, master in zip(self.params, self.masters):
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None

    def masters_to_model(self) -> None:
        with torch.no_grad():
            for param, master in zip(self.params, self.masters):
                param.copy_(master)

    def state_dict(self) -> dict[str, Any]:
        """The fp32 masters (saved with a checkpoint: the model's own weights are rounded)."""
        return {"masters": [m.detach() for m in self.masters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["masters"]
        if len(saved) != len(self.masters) or any(s.shape != m.shape for s, m in zip(saved, self.masters)):
            raise RuntimeError("the checkpoint's master weights do not match the trainable parameters")
        with torch.no_grad():
            for master, value in zip(self.masters, saved):
                master.copy_(value)

    def master_of(self, param: Any) -> Any:
        """The fp32 copy the optimizer steps for ``param``."""
        return self.masters[self.index[id(param)]]
