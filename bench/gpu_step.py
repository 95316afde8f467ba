"""``python -m bench.gpu_step``: one OPD training step of random-initialised Qwen3-VL models at real hidden sizes.

    python -m bench.gpu_step --out DIR                 # CUDA: 8B-class student, 32B-class teacher widths
    python -m bench.gpu_step --out DIR --dry-run       # CPU: tiny widths, short video (checks the flow)

The student and the teacher are ``Qwen3VLForConditionalGeneration`` built from configs (no
download) at real widths and vocabulary (defaults: student hidden 4096 / 32 heads / MLP 12288,
teacher hidden 5120 / 64 heads / MLP 25600, head_dim 128, V = 151,936, untied heads) but few
layers, with a real-width vision tower (hidden 1152) of few blocks. The video is synthetic and
built in memory (the device image has no video decoder): ``--frames`` frames of
``--size`` x ``--size`` pixels, a coloured square moving over a gradient, about
``frames / 2 * (size / 32)^2`` video tokens (160 frames at 448 px: 15,680).

One step as videoopd's loop runs it (``videoopd.algo.objectives.DistillationObjective``): the
student samples an answer (HF generate), the frozen teacher scores it, the student's forward
with gradient checkpointing computes the loss from hidden states inside its forward
(``policy_head_forward``: no logits), backward, AdamW step. Per objective ("full":
``fused_reverse_kl``; "sampled": ``token_logprobs`` + ``sampled_reverse_kl_loss``) it writes
the phase times, the peak memory (CUDA allocator peak; CPU: peak RSS) and the token counts to
``DIR/opd_step.json`` and prints one line each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

QWEN_VOCAB = 151_936


@dataclass
class Widths:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    mrope_section: tuple[int, int, int]


@dataclass
class StepResult:
    objective: str
    status: str = "ok"
    prompt_tokens: int = 0
    answer_tokens: int = 0
    sequence_tokens: int = 0
    generate_s: float | None = None
    teacher_s: float | None = None
    student_fwd_bwd_s: float | None = None
    optimizer_s: float | None = None
    step_s: float | None = None
    peak_memory_gib: float | None = None
    loss: float | None = None
    notes: list[str] = field(default_factory=list)


def _config(tokenizer, text: Widths, vision_hidden: int, vision_depth: int, vocab: int):
    from transformers import Qwen3VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text_config = {
        "vocab_size": vocab, "hidden_size": text.hidden, "intermediate_size": text.intermediate,
        "num_hidden_layers": text.layers, "num_attention_heads": text.heads, "num_key_value_heads": text.kv_heads,
        "head_dim": text.head_dim, "max_position_embeddings": 262_144,
        "rope_scaling": {"rope_type": "default", "mrope_section": list(text.mrope_section), "mrope_interleaved": True},
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"), "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "depth": vision_depth, "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 4304 // 1152,
        "num_heads": max(1, vision_hidden // 72), "out_hidden_size": text.hidden, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
        "deepstack_visual_indexes": list(range(min(vision_depth, 3))),
    }
    return Qwen3VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **ids)


def _build(config, tokenizer, device, dtype, seed):
    from transformers import Qwen3VLForConditionalGeneration

    from videoopd.qwen.models import attn_implementation_for

    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: billions of parameters
        model = Qwen3VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation_for(device))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return model


def synthetic_video(frames: int, size: int, fps: float = 2.0):
    """A DecodedVideo built in memory: a coloured square crossing a gradient, one position a frame."""
    from videoopd.data.video import DecodedVideo

    ramp = torch.linspace(0, 255, size)
    background = torch.stack([ramp.view(size, 1).expand(size, size), ramp.view(1, size).expand(size, size),
                              255 - ramp.view(size, 1).expand(size, size)])
    video = background.unsqueeze(0).repeat(frames, 1, 1, 1)
    side = max(4, size // 8)
    for t in range(frames):
        x0 = int((size - side) * t / max(1, frames - 1))
        video[t, 0, size // 3: size // 3 + side, x0: x0 + side] = 255
        video[t, 1:, size // 3: size // 3 + side, x0: x0 + side] = 0
    return DecodedVideo(path="synthetic://moving-square", frames=video.to(torch.uint8).contiguous(),
                        frame_indices=list(range(frames)), timestamps=[t / fps for t in range(frames)],
                        source_fps=fps, source_num_frames=frames, window_num_frames=frames,
                        source_size=(size, size), backend="synthetic")


def _peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30
    return float("nan")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(objective: str, student, teacher, processor, batch, device, new_tokens: int) -> StepResult:
    from videoopd.algo.objectives import DistillationObjective, GenerationContext
    from videoopd.qwen.models import policy_head_forward

    result = StepResult(objective)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    opd = DistillationObjective(teacher, processor, objective=objective, reduction="sum",
                                max_new_tokens=new_tokens)
    ctx = GenerationContext(model=student, device=device, step=1)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    rolled = opd.rollout(ctx, batch)
    _sync(device)
    t_gen = time.perf_counter()
    micro = opd.score(ctx, rolled)
    _sync(device)
    t_teacher = time.perf_counter()
    loss, _ = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
    loss.backward()
    _sync(device)
    t_student = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    end = time.perf_counter()
    rollout = rolled[1]
    result.prompt_tokens = int(rollout.prompt_length)
    result.sequence_tokens = int(rollout.sequences.shape[1])
    result.answer_tokens = int(rollout.num_answer_tokens)
    result.generate_s, result.teacher_s = t_gen - start, t_teacher - t_gen
    result.student_fwd_bwd_s, result.optimizer_s = t_student - t_teacher, end - t_student
    result.step_s = end - start
    result.peak_memory_gib = _peak_memory_gib(device)
    result.loss = float(loss.detach())
    if not torch.isfinite(loss):
        result.status = "failed (non-finite loss)"
    del optimizer, rolled, micro, loss
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for opd_step.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny widths and video, on the CPU")
    parser.add_argument("--objectives", default="full,sampled")
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 160; dry run 8)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels, a multiple of 32 (default 448)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of each model")
    parser.add_argument("--vision-depth", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32, help="answer tokens the student samples at most")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from videoopd.data.annotations import GroundingRecord
    from videoopd.qwen.collators import GroundingCollator
    from videoopd.qwen.models import prepare_policy
    from videoopd.qwen.tiny import build_tiny_processor, build_tiny_tokenizer

    if args.dry_run:
        device, dtype, vocab = torch.device("cpu"), torch.float32, 4096
        student_w = Widths(64, 4, 2, 16, 128, 2, (2, 3, 3))
        teacher_w = Widths(96, 6, 2, 16, 192, 2, (2, 3, 3))
        vision_hidden, vision_depth = 32, 1
        frames, size = args.frames or 8, args.size or 64
    else:
        if not torch.cuda.is_available():
            print("gpu_step: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
            return 2
        device, dtype, vocab = torch.device("cuda", 0), torch.bfloat16, QWEN_VOCAB
        student_w = Widths(4096, 32, 8, 128, 12288, args.layers, (24, 20, 20))  # Qwen3-VL-8B widths
        teacher_w = Widths(5120, 64, 8, 128, 25600, args.layers, (24, 20, 20))  # Qwen3-VL-32B widths
        vision_hidden, vision_depth = 1152, args.vision_depth
        frames, size = args.frames or 160, args.size or 448
    from bench.measure import DeviceInfo

    record = {"device": DeviceInfo.detect().name,
              "dtype": str(dtype).removeprefix("torch."), "vocab": vocab, "student": asdict(student_w),
              "teacher": asdict(teacher_w), "vision": {"hidden": vision_hidden, "depth": vision_depth},
              "video": {"frames": frames, "size": size, "fps": 2.0}, "torch": torch.__version__,
              "steps": []}
    out_file = args.out / "opd_step.json"
    t0 = time.perf_counter()
    try:
        tokenizer = build_tiny_tokenizer("qwen3_vl")
        processor = build_tiny_processor("qwen3_vl", tokenizer)
        student = prepare_policy(_build(_config(tokenizer, student_w, vision_hidden, vision_depth, vocab), tokenizer,
                                        device, dtype, seed=1), trainable=True)
        teacher = prepare_policy(_build(_config(tokenizer, teacher_w, vision_hidden, vision_depth, vocab), tokenizer,
                                        device, dtype, seed=2), trainable=False)
        record["student_params_b"] = sum(p.numel() for p in student.parameters()) / 1e9
        record["teacher_params_b"] = sum(p.numel() for p in teacher.parameters()) / 1e9
        video = synthetic_video(frames, size)
        item = {"record": GroundingRecord(id="synthetic-0", video=video.path, query="the red square crosses the frame",
                                          span=(1.0, frames / 2.0 - 1.0), duration=frames / 2.0, source="synthetic"),
                "video": video, "error": None, "data_issue": None}
        batch = GroundingCollator(processor)([item])
        record["build_s"] = time.perf_counter() - t0
    except Exception as error:  # noqa: BLE001 - recorded, not raised: the summary reads the file
        record["status"] = f"failed to build ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
        record["traceback"] = traceback.format_exc()[-4000:]
        out_file.write_text(json.dumps(record, indent=1) + "\n")
        print(f"opd step: {record['status']}", flush=True)
        return 1
    print(f"opd step: built student {record['student_params_b']:.3g}B / teacher {record['teacher_params_b']:.3g}B "
          f"params, {batch['inputs']['input_ids'].shape[1]} prompt tokens, in {record['build_s']:.1f} s", flush=True)
    code = 0
    for objective in [o.strip() for o in args.objectives.split(",") if o.strip()]:
        try:
            result = one_step(objective, student, teacher, processor, batch, device, args.new_tokens)
        except Exception as error:  # noqa: BLE001 - OOM included: a row, not a crash
            result = StepResult(objective, status=f"failed ({type(error).__name__}: "
                                                  f"{' '.join(str(error).split())[:300]})")
            result.notes.append(traceback.format_exc()[-3000:])
            result.peak_memory_gib = _peak_memory_gib(device)
            code = 1
        record["steps"].append(asdict(result))
        out_file.write_text(json.dumps(record, indent=1) + "\n")  # after each step: a timeout keeps what was done
        if result.status == "ok":
            print(f"opd step [{objective}]: {result.step_s:.2f} s (generate {result.generate_s:.2f}, teacher "
                  f"{result.teacher_s:.2f}, student fwd+bwd {result.student_fwd_bwd_s:.2f}, AdamW "
                  f"{result.optimizer_s:.2f}); peak {result.peak_memory_gib:.1f} GiB; {result.sequence_tokens} tokens "
                  f"({result.answer_tokens} answer); loss {result.loss:.4g}", flush=True)
        else:
            print(f"opd step [{objective}]: {result.status}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
