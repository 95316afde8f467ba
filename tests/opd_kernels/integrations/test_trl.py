"""opd_kernels.integrations.trl against TRL's own DistillationTrainer (TRL 1.16.0), on tiny
Qwen2 models built from a config and a byte-level tokenizer built in code (no downloads), as
TRL's own trainer tests build theirs from tiny configs."""

import copy
import subprocess
import sys
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
pytest.importorskip("datasets")

from datasets import Dataset  # noqa: E402
from trl import DistillationConfig, DistillationTrainer  # noqa: E402
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction  # noqa: E402

from opd_kernels import fused_reverse_kl  # noqa: E402
from opd_kernels.integrations import trl as fused_trl  # noqa: E402
from opd_kernels.integrations.trl import FusedDistillationTrainer  # noqa: E402
from opd_kernels.testing import MemoryTracker, reverse_kl_reference  # noqa: E402

V = 8192  # large beside the hidden sizes, so that a [tokens, vocab] tensor stands out


def _tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_end|>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )


def _model(seed, hidden, **config):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        max_position_embeddings=1024,
        **config,
    )
    return Qwen2ForCausalLM(cfg)


@pytest.fixture(autouse=True)
def _eager_rows(monkeypatch):
    # torch.compile of the row functions pays seconds per new shape; these shapes are tiny.
    monkeypatch.setenv("OPD_KERNELS_TORCH_COMPILE", "0")


@pytest.fixture(scope="module")
def models():
    return _model(0, 32), _model(1, 48)


def _trainer(cls, models, tmp_path, *, student_config=None, **args):
    student, teacher = copy.deepcopy(models[0]), copy.deepcopy(models[1])
    for key, value in (student_config or {}).items():
        setattr(student.config, key, value)
    args = dict(dict(bf16=False), **args)
    config = DistillationConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        max_completion_length=6,
        **args,
    )
    prompts = Dataset.from_dict({"prompt": ["the cat", "a b c", "tiny model", "hello"]})
    return cls(model=student, teacher_model=teacher, args=config, train_dataset=prompts, processing_class=_tokenizer())


def _batch(B=3, P=5, K=11, seed=0, tools=False):
    """What DistillationTrainer._prepare_inputs hands compute_loss: left-padded prompts,
    right-padded completions, the generation batch's token count (here 3x the local one, as
    with gradient accumulation over 3 micro-batches)."""
    g = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[1, :2] = 0
    lengths = torch.tensor([K, 4, 7])[:B]
    completion_mask = (torch.arange(K) < lengths[:, None]).long()
    batch = {
        "prompt_ids": torch.randint(0, V, (B, P), generator=g),
        "prompt_mask": prompt_mask,
        "completion_ids": torch.randint(0, V, (B, K), generator=g),
        "completion_mask": completion_mask,
    }
    loss_mask = completion_mask
    if tools:  # multi-turn: tool-output tokens are in the completion but not in the loss
        batch["tool_mask"] = torch.ones(B, K, dtype=torch.long)
        batch["tool_mask"][0, 3:6] = 0
        loss_mask = loss_mask * batch["tool_mask"]
    batch["num_items_in_batch"] = 3 * loss_mask.sum()
    return batch


def _loss_and_grads(trainer, batch, *, train=True):
    trainer.model.train(train)
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    if not train:
        return loss.detach(), None, None
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, trainer._metrics["train"]["entropy"]


def test_trl_beta_one_is_the_reverse_kl():
    """TRL's convention, pinned: beta=1 of its divergence is KL(student || teacher), the op's."""
    g = torch.Generator().manual_seed(0)
    h_s, W_s = torch.randn(40, 16, generator=g), torch.randn(300, 16, generator=g) / 4
    h_t, W_t = torch.randn(40, 24, generator=g), torch.randn(300, 24, generator=g) / 4
    trl_rkl, _ = ChunkedDivergenceFunction.apply(h_s, W_s, None, h_t, W_t, None, 1.0, 0.7)
    want = reverse_kl_reference(
        h_s.double(), W_s.double(), h_t.double(), W_t.double(), temperature=0.7, reduction="none"
    )
    torch.testing.assert_close(trl_rkl.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        fused_reverse_kl(h_s, W_s, h_t, W_t, temperature=0.7, reduction="none").double(), want, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("temperature,tools", [(1.0, False), (0.7, True)], ids=["completion-mask", "tool-mask-tau0.7"])
def test_loss_and_gradients_equal_trls(models, tmp_path, temperature, tools, monkeypatch):
    calls = []
    fused = fused_trl.fused_divergence_loss
    monkeypatch.setattr(fused_trl, "fused_divergence_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))
    theirs = _trainer(DistillationTrainer, models, tmp_path, temperature=temperature)
    ours = _trainer(FusedDistillationTrainer, models, tmp_path, temperature=temperature)
    batch = _batch(tools=tools)
    loss_t, grads_t, entropy_t = _loss_and_grads(theirs, batch)
    loss_o, grads_o, entropy_o = _loss_and_grads(ours, batch)
    assert calls, "the fused loss ran"
    assert loss_o.dtype == torch.float32 and loss_o > 0
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(entropy_o, entropy_t, rtol=1e-5, atol=1e-6)
    assert grads_o.keys() == grads_t.keys() and "lm_head.weight" in grads_o
    for name in grads_t:
        torch.testing.assert_close(
            grads_o[name], grads_t[name], rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}"
        )
    # evaluation: no num_items_in_batch, TRL's mean over the local completion tokens
    eval_batch = {k: v for k, v in batch.items() if k != "num_items_in_batch"}
    torch.testing.assert_close(
        _loss_and_grads(ours, eval_batch, train=False)[0],
        _loss_and_grads(theirs, eval_batch, train=False)[0],
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize("precision", ["bf16-weights", "fp32-weights-bf16-autocast"])
def test_mixed_precision_equals_trls(models, tmp_path, precision):
    """bf16 models, or fp32 ones under bf16 autocast (TRL's matmuls then follow autocast, ours too)."""
    if precision == "bf16-weights":
        models = tuple(copy.deepcopy(m).to(torch.bfloat16) for m in models)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "bf16-weights")
    batch = _batch(tools=True)
    with amp:
        loss_t, grads_t, entropy_t = _loss_and_grads(_trainer(DistillationTrainer, models, tmp_path), batch)
        loss_o, grads_o, entropy_o = _loss_and_grads(_trainer(FusedDistillationTrainer, models, tmp_path), batch)
    assert loss_o.dtype == torch.float32
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(entropy_o, entropy_t, rtol=1e-3, atol=1e-4)
    for name in grads_t:
        assert grads_o[name].dtype == grads_t[name].dtype == next(models[0].parameters()).dtype
        a, b = grads_o[name].double().flatten(), grads_t[name].double().flatten()
        assert float(a @ b / (a.norm() * b.norm())) > 0.999, name


def test_all_masked_batch_gives_zero(models, tmp_path):
    ours = _trainer(FusedDistillationTrainer, models, tmp_path)
    batch = _batch()
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    batch["num_items_in_batch"] = torch.tensor(0)  # TRL's compute_loss clamps it to 1
    loss, grads, entropy = _loss_and_grads(ours, batch)
    assert loss.item() == 0 and all(not g.any() for g in grads.values()) and entropy == [0.0]


def test_log_entropy_off(models, tmp_path):
    ours = _trainer(FusedDistillationTrainer, models, tmp_path)
    ours.log_entropy = False
    _, _, entropy = _loss_and_grads(ours, _batch())
    assert len(entropy) == 1 and entropy[0] != entropy[0], "no entropy: NaN, which TRL's log leaves out"


@pytest.mark.parametrize(
    "case,match",
    [
        (dict(args=dict(beta=0.5)), "beta=0.5"),
        (dict(student_config=dict(final_logit_softcapping=30.0)), "soft-caps the logits"),
        (dict(student_config=dict(logit_scale=0.5)), "scales the logits"),
    ],
    ids=["jsd-beta", "softcap", "logit-scale"],
)
def test_unfused_cases_stay_on_trls_path(models, tmp_path, case, match):
    args = case.get("args", {})
    theirs = _trainer(DistillationTrainer, models, tmp_path, student_config=case.get("student_config"), **args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = _trainer(FusedDistillationTrainer, models, tmp_path, student_config=case.get("student_config"), **args)
        batch = _batch()
        loss_o, grads_o, _ = _loss_and_grads(ours, batch)
    assert any(match in str(w.message) and "TRL" in str(w.message) for w in caught), [str(w.message) for w in caught]
    loss_t, grads_t, _ = _loss_and_grads(theirs, batch)
    torch.testing.assert_close(loss_o, loss_t, rtol=0, atol=0)
    for name in grads_t:
        torch.testing.assert_close(grads_o[name], grads_t[name], rtol=0, atol=0)


def _tracked_step(trainer, batch, limit):
    trainer.model.train()
    with MemoryTracker(numel_limit=limit) as tracker:
        trainer.compute_loss(trainer.model, batch).backward()
    return tracker


@pytest.mark.slow
def test_no_tokens_by_vocab_tensor(models, tmp_path):
    """The whole step (both backbones, the loss, the backward) creates no tensor of N * V / 8
    elements or more; TRL's own path does (its [tokens, 32768-vocab] fp32 tiles), which shows
    the tracker would catch one."""
    B, K = 4, 256
    batch = _batch(B=B, K=K, seed=1)
    batch["completion_mask"] = torch.ones(B, K, dtype=torch.long)
    batch["prompt_mask"] = torch.ones_like(batch["prompt_mask"])
    batch["num_items_in_batch"] = torch.tensor(B * K)
    limit = B * K * V // 8
    tracker = _tracked_step(_trainer(FusedDistillationTrainer, models, tmp_path), batch, limit)
    assert tracker.largest.numel < limit
    print(
        f"\n[memory] FusedDistillationTrainer step, N={B * K}, V={V}: largest tensor {tracker.largest.shape} "
        f"({tracker.largest.op}), peak {tracker.peak_bytes / 2**20:.1f} MiB"
    )
    with pytest.raises(AssertionError, match="created a tensor of shape"):
        _tracked_step(_trainer(DistillationTrainer, models, tmp_path), batch, limit)


def test_training_steps(models, tmp_path, monkeypatch):
    calls = []
    fused = fused_trl.fused_divergence_loss
    monkeypatch.setattr(fused_trl, "fused_divergence_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))
    trainer = _trainer(FusedDistillationTrainer, models, tmp_path, max_steps=3, learning_rate=1e-3)
    before = trainer.model.lm_head.weight.detach().clone()
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and all(0 < loss < float("inf") for loss in losses)
    assert len(calls) == 3 and not torch.equal(trainer.model.lm_head.weight.detach(), before)
    assert all(row["entropy"] > 0 for row in trainer.state.log_history if "loss" in row)


def test_core_imports_neither_trl_nor_transformers():
    code = (
        "import sys, opd_kernels, opd_kernels.integrations; "
        "bad = [m for m in ('trl', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
