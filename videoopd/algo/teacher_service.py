"""The frozen teacher as a service on Ray actors (``--teacher-placement service``).

Each replica (:class:`TeacherReplica`, one Ray actor) loads the teacher on its own device,
builds its own video inputs from the records (the teacher's processor, the run's
:class:`~videoopd.data.video.DecodeConfig`; videos must be readable where the replica runs)
and returns, per micro-batch, only what the student's loss needs of the teacher
(:func:`pack_view`): the hidden states at the answer tokens, [T, D_t] for T answer tokens
(the exact objective), or the sampled tokens' log-probs, [T] floats (the sampled one). The
teacher's head goes once per run (:meth:`TeacherService.head`). No [tokens, vocab] tensor
and no video crosses a process boundary; the prompt and answer ids go to the replica.

:class:`TeacherService` is the training process's side, a
:class:`videoopd.algo.objectives.TeacherScorer`: ``submit`` sends a micro-batch to the next
replica and returns at once a :class:`ServiceScore`, which the loop waits on right before
that micro-batch's forward. Ray restarts a replica whose process dies (``max_restarts``) and
re-sends its pending micro-batches (``max_task_retries``); a replica that keeps failing, or
answers nothing within ``timeout_s``, raises :class:`TeacherServiceError` in every training
process that waits on it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import torch

from videoopd.algo.objectives import score_rollout
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.data.video import DecodeConfig
from videoopd.qwen.collators import GroundingCollator
from videoopd.qwen.generation import Rollout
from videoopd.qwen.models import lm_head_weight, load_policy, pair_facts
from videoopd.qwen.processing import load_processor

__all__: list[str] = []  # nothing here is promised: docs/api.md

SERVICE_NAMESPACE = "videoopd"  # the Ray namespace the replicas are named in


class TeacherServiceError(RuntimeError):
    """The teacher service cannot score: a replica that keeps failing, or no answer in time."""


def answer_positions(answer_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """bool [B, A]: the answer tokens of a rollout's ``answer_mask`` [B, P + A]."""
    return answer_mask[:, prompt_length:].bool()


def pack_view(view: dict[str, torch.Tensor], answer: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's view of :func:`score_rollout` as it crosses the process boundary: only
    the answer tokens (``answer`` bool [B, A]) of its hidden states ([T, D_t], in the teacher's
    dtype) or log-probs ([T]), on the CPU; the head is left out (sent once per run)."""
    if "teacher_hidden" in view:
        return {"hidden": view["teacher_hidden"][answer.to(view["teacher_hidden"].device)].cpu().contiguous()}
    return {"logprobs": view["teacher_logprobs"][answer.to(view["teacher_logprobs"].device)].cpu().contiguous()}


def unpack_view(
    packed: dict[str, torch.Tensor], answer: torch.Tensor, device: torch.device | str, head: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """:func:`pack_view`'s inverse on ``device``: [B, A(, D_t)] with zeros off the answer
    tokens (the losses never read them); "full" adds ``head`` as ``teacher_head``. Other
    entries of ``packed`` (a replica's ``busy_s``) are left out."""
    answer = answer.to(device)
    if "hidden" in packed:
        if head is None:
            raise ValueError("unpack_view: the exact objective's view needs the teacher's head, got head=None")
        hidden = packed["hidden"].to(device)
        out = hidden.new_zeros(*answer.shape, hidden.shape[-1])
        out[answer] = hidden
        return {"teacher_hidden": out, "teacher_head": head}
    logprobs = packed["logprobs"].to(device)
    out = logprobs.new_zeros(answer.shape)
    out[answer] = logprobs
    return {"teacher_logprobs": out}


def rollout_fields(rollout: Rollout) -> dict[str, Any]:
    """What a replica needs of a rollout (ids and masks, on the CPU): it rebuilds the rest."""
    return {
        "sequences": rollout.sequences.cpu(),
        "attention_mask": rollout.attention_mask.cpu(),
        "answer_mask": rollout.answer_mask.cpu(),
        "prompt_length": int(rollout.prompt_length),
    }


class TeacherReplica:
    """One replica of the teacher (the body of a Ray actor; also usable in-process).

    ``path``: the teacher's checkpoint folder, readable where the replica runs; ``device``:
    None picks CUDA when Ray gave the actor a GPU, else the CPU. ``delay_s``: seconds slept
    after each score, to make a tiny teacher as slow as a real one (measurements, tests)."""

    def __init__(
        self,
        path: str,
        *,
        decode_config: DecodeConfig,
        prompt_style: str = "paper",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        device: str | None = None,
        delay_s: float = 0.0,
    ):
        if not isinstance(decode_config, DecodeConfig):
            raise TypeError(f"decode_config must be a DecodeConfig, got {type(decode_config).__name__}")
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = load_processor(path)
        self.model = load_policy(
            path, device=self.device, trainable=False, dtype=dtype, attn_implementation=attn_implementation
        )
        self.collator = GroundingCollator(self.processor, prompt_style=prompt_style)
        self.decode_config, self.delay_s, self.path = decode_config, delay_s, str(path)
        self.scored = 0  # micro-batches scored by this process

    def scored_microbatches(self) -> int:
        return self.scored

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> str:
        """The teacher's checkpoint folder, as given."""
        return self.path

    def facts(self) -> dict[str, Any]:
        """:func:`videoopd.qwen.models.pair_facts` of the teacher (the vocabulary check)."""
        return pair_facts(self.model, self.processor)

    def head(self) -> torch.Tensor:
        """The teacher's LM head weight [V_t, D_t], on the CPU."""
        return lm_head_weight(self.model).detach().cpu()

    def inputs(self, records: list[Any], prompt_ids: torch.Tensor) -> dict[str, Any]:
        """The processor inputs of ``records`` (their videos decoded here), checked against
        the prompt ids [B, P] the student generated from. ValueError naming the records whose
        video cannot be read here, or when the prompts come out as other tokens."""
        dataset = GroundingVideoDataset(records, self.decode_config, on_error="report")
        batch = self.collator([dataset[i] for i in range(len(records))])
        if batch["failed"]:
            where = socket.gethostname()
            raise ValueError(
                f"teacher replica on {where} cannot read the video of "
                + "; ".join(f"record {r.id} ({r.video}): {error}" for r, error in batch["failed"])
            )
        inputs = dict(batch["inputs"])
        if not torch.equal(inputs["input_ids"], prompt_ids):
            raise ValueError(
                f"the teacher's processor turns the prompts of records {[r.id for r in records]} into "
                f"other tokens ({tuple(inputs['input_ids'].shape)}) than the student's "
                f"({tuple(prompt_ids.shape)}): the teacher's processor must sample and size frames as "
                "the student's does"
            )
        return inputs

    def score(
        self,
        records: list[Any],
        fields: dict[str, Any],
        *,
        objective: str,
        temperature: float,
        vocab_size: int,
        backend: str = "auto",
    ) -> dict[str, torch.Tensor]:
        """:func:`pack_view` of the teacher's score of one micro-batch (``fields``: its
        :func:`rollout_fields`)."""
        start = time.perf_counter()
        p = fields["prompt_length"]
        rollout = Rollout(
            sequences=fields["sequences"],
            attention_mask=fields["attention_mask"],
            answer_mask=fields["answer_mask"],
            prompt_length=p,
            answers=[],
        )
        inputs = self.inputs(records, fields["sequences"][:, :p])
        view = score_rollout(
            self.model,
            self.model,
            inputs,
            rollout,
            objective=objective,
            temperature=temperature,
            vocab_size=vocab_size,
            device=self.device,
            backend=backend,
        )
        if self.delay_s:
            time.sleep(self.delay_s)
        self.scored += 1
        packed = pack_view(view, answer_positions(rollout.answer_mask, p))
        return {**packed, "busy_s": torch.tensor(time.perf_counter() - start, dtype=torch.float64)}


class ServiceScore:
    """A micro-batch being scored by a replica (a :class:`videoopd.algo.objectives.PendingScore`)."""

    def __init__(
        self, service: TeacherService, ref: Any, replica: int, answer: torch.Tensor, device: torch.device | str
    ):
        self.service, self.ref, self.replica, self.answer, self.device = service, ref, replica, answer, device
        self.packed: dict[str, torch.Tensor] | None = None

    def wait(self) -> float:
        start = time.perf_counter()
        if self.packed is None:
            self.packed = self.service.fetch(self.ref, self.replica)
        return time.perf_counter() - start

    def result(self) -> dict[str, torch.Tensor]:
        self.wait()
        head = self.service.head(self.device) if "hidden" in self.packed else None
        return unpack_view(self.packed, self.answer, self.device, head)

    def received_bytes(self) -> int:
        """The payload's tensor bytes (the head, sent once per run, not counted)."""
        self.wait()
        return sum(t.nbytes for t in self.packed.values())

    def busy_s(self) -> float:
        """The replica's seconds on this micro-batch (decoding, forward, ``delay_s``)."""
        self.wait()
        return float(self.packed["busy_s"])


class TeacherService:
    """The teacher on ``replicas`` Ray actors named ``{name}-{i}`` in :data:`SERVICE_NAMESPACE`
    (another process passing the same name and cluster shares them: ``get_if_exists``).

    ``address``: the Ray cluster to join (``ray.init(address=...)``); None starts a local one
    when this process has not joined one yet. ``cpus_per_replica`` / ``gpus_per_replica``: each
    actor's Ray resources (a replica with a GPU scores on it). ``max_restarts``: how often Ray
    restarts a replica whose process died (its pending micro-batches are re-sent); after that,
    and when a score takes longer than ``timeout_s``, waiting raises :class:`TeacherServiceError`.
    ``decode_config``, ``prompt_style``, ``dtype``, ``attn_implementation``, ``delay_s``: each
    replica's (:class:`TeacherReplica`)."""

    # each micro-batch submitted as soon as its rollout exists (TeacherScorer.joins_calls)
    joins_calls = False

    def __init__(
        self,
        path: str,
        *,
        decode_config: DecodeConfig,
        prompt_style: str = "paper",
        replicas: int = 1,
        address: str | None = None,
        cpus_per_replica: float = 1.0,
        gpus_per_replica: float = 0.0,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        max_restarts: int = 2,
        timeout_s: float = 600.0,
        name: str = "videoopd-teacher",
        delay_s: float = 0.0,
    ):
        import ray

        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
        if cpus_per_replica < 0 or gpus_per_replica < 0:
            raise ValueError(
                f"cpus_per_replica and gpus_per_replica must be >= 0, got {cpus_per_replica!r} and {gpus_per_replica!r}"
            )
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not ray.is_initialized():
            ray.init(address=address, namespace=SERVICE_NAMESPACE, include_dashboard=False)
        actor = ray.remote(TeacherReplica)
        self.path, self.timeout_s = str(path), timeout_s
        self.replicas = [
            actor.options(
                name=f"{name}-{i}",
                namespace=SERVICE_NAMESPACE,
                get_if_exists=True,
                num_cpus=cpus_per_replica,
                num_gpus=gpus_per_replica,
                max_restarts=max_restarts,
                # re-send a dead replica's pending micro-batches while it may be restarted
                max_task_retries=-1 if max_restarts else 0,
                max_concurrency=1,
            ).remote(
                self.path,
                decode_config=decode_config,
                prompt_style=prompt_style,
                dtype=dtype,
                attn_implementation=attn_implementation,
                device="cuda" if gpus_per_replica > 0 else "cpu",
                delay_s=delay_s,
            )
            for i in range(replicas)
        ]
        self.next_replica = 0
        self.heads: dict[str, torch.Tensor] = {}
        # replicas found by name may have been started by another run: with another teacher,
        # they would score silently against the wrong model (this also waits for them to load)
        for i, replica in enumerate(self.replicas):
            found = self.fetch(replica.checkpoint.remote(), i)
            if found != self.path:
                raise ValueError(
                    f"teacher replica {name}-{i} on this Ray cluster serves {found}, not {self.path}: "
                    "stop it or give the service another name"
                )

    def fetch(self, ref: Any, replica: int = 0) -> Any:
        """``ray.get(ref)`` within ``timeout_s``; a replica's failure as :class:`TeacherServiceError`
        (a bad record's ValueError stays one)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(ref, timeout=self.timeout_s)
        except GetTimeoutError:
            raise TeacherServiceError(
                f"teacher replica {replica} ({self.path}) sent no score within {self.timeout_s:g} s"
            ) from None
        except RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, ValueError):
                raise ValueError(f"teacher replica {replica}: {exc.cause}") from None
            raise TeacherServiceError(f"teacher replica {replica} ({self.path}) failed: {exc}") from None
        except RayActorError as exc:
            raise TeacherServiceError(
                f"teacher replica {replica} ({self.path}) is dead after its restarts: {exc}"
            ) from None

    def facts(self) -> dict[str, Any]:
        """The teacher's :func:`videoopd.qwen.models.pair_facts` (from replica 0)."""
        return self.fetch(self.replicas[0].facts.remote())

    def head(self, device: torch.device | str) -> torch.Tensor:
        """The teacher's LM head weight on ``device``, fetched once per run."""
        key = str(device)
        if key not in self.heads:
            cpu = next(iter(self.heads.values())).cpu() if self.heads else self.fetch(self.replicas[0].head.remote())
            self.heads[key] = cpu.to(device)
        return self.heads[key]

    def close(self) -> None:
        """End the replicas (the run's end; other processes sharing them lose them too)."""
        import ray

        for replica in self.replicas:
            ray.kill(replica, no_restart=True)
        self.replicas = []

    def scored_microbatches(self) -> list[int]:
        """Micro-batches each replica has scored since its (re)start, from every process sharing it."""
        return [self.fetch(r.scored_microbatches.remote(), i) for i, r in enumerate(self.replicas)]

    def pids(self) -> list[int]:
        """The replicas' process ids (fault tests)."""
        return [self.fetch(r.pid.remote(), i) for i, r in enumerate(self.replicas)]

    def submit(
        self,
        inputs: dict[str, Any],
        rollout: Rollout,
        records: list[Any],
        *,
        objective: str,
        temperature: float,
        vocab_size: int,
        device: torch.device | str,
        backend: str = "auto",
    ) -> ServiceScore:
        """Send a micro-batch to the next replica (round robin); returns at once. ``inputs`` is
        not sent: the replica builds its own from ``records``."""
        index = self.next_replica % len(self.replicas)
        self.next_replica += 1
        ref = self.replicas[index].score.remote(
            list(records),
            rollout_fields(rollout),
            objective=objective,
            temperature=temperature,
            vocab_size=vocab_size,
            backend=backend,
        )
        return ServiceScore(self, ref, index, answer_positions(rollout.answer_mask, rollout.prompt_length), device)
