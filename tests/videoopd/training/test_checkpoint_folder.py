"""A checkpoint's ``model/`` folder (one process or DDP: ``save_pretrained`` through accelerate's
save hook) loads back into the student bit for bit, for both families, and stays a Hugging Face
folder that ``from_pretrained`` reads. Qwen2.5-VL is the case that broke: transformers writes
its older key names (``visual.*``) unless told to keep the model's own."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from videoopd.training.checkpoint import MODEL_FOLDER, install_model_hooks, load_model_folder


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_the_model_folder_loads_back_bit_for_bit(tmp_path, family):
    tokenizer = build_tiny_tokenizer(family)
    student = build_tiny_model(family, tokenizer, seed=1)
    accelerator = Accelerator(cpu=True)
    install_model_hooks(accelerator, build_tiny_processor(family, tokenizer))
    accelerator.prepare(student)
    accelerator.save_state(str(tmp_path / "checkpoint"))
    folder = tmp_path / "checkpoint" / MODEL_FOLDER

    resumed = build_tiny_model(family, tokenizer, seed=2)  # other weights, overwritten by the load
    load_model_folder(resumed, folder)
    reloaded = type(student).from_pretrained(folder)
    saved = student.state_dict()
    for model in (resumed, reloaded):
        state = model.state_dict()
        assert state.keys() == saved.keys()
        assert all(torch.equal(state[k], saved[k]) for k in saved)
