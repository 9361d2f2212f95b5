"""The training loop every trainer shares; a trainer is a :class:`Task` plugged into it.

The loop owns AdamW, warm-up + cosine (timm's scheduler, stepped per update), AMP (bf16, or fp16
with a scaler), channels_last, gradient accumulation, EMA (timm), DDP under ``torchrun`` (only
rank 0 writes), the run folder (``config.yaml``/``config.json``, ``log.csv``, ``last.pt`` every
epoch, ``best.pt`` at the lowest validation loss, ``metrics.json``) and ``--resume``.

Each epoch reseeds every random source from (seed, epoch, rank), so resuming from ``last.pt``
replays an interrupted epoch exactly and ends where a straight run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ichdet.models.checkpoint import inference_state, load_checkpoint, save_checkpoint
from ichdet.training.config import LoopConfig
from ichdet.training.distributed import (
    Dist,
    Runtime,
    gather_rows,
    make_runtime,
    seed_everything,
)
from ichdet.training.runs import (
    check_run_folder,
    checkpoint_config,
    write_log,
    write_run_config,
)
from ichdet.util.jsonio import write_json
from ichdet.util.progress import progress_bar

OnStep = Callable[[int, int], None]
Log = Callable[[str], None]


class Task(Protocol):
    """What one kind of model brings to the loop: data, model, loss, scores, outputs."""

    @property
    def kind(self) -> str:
        """The model registry key, saved in checkpoints."""
        ...

    @property
    def label(self) -> str:
        """Names the run in log lines, e.g. "fold 0"."""
        ...

    @property
    def resume_keys(self) -> tuple[str, ...]:
        """Config fields that must match to resume."""
        ...

    @property
    def train_set(self) -> Dataset: ...

    @property
    def valid_set(self) -> Dataset: ...

    @property
    def collate(self) -> Callable[[list], Any] | None:
        """The DataLoader's collate_fn (None: torch's default)."""
        ...

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: Any, rt: Runtime) -> tuple[torch.Tensor, int]:
        """(loss, samples in the batch); the forward pass runs under ``rt.autocast()``."""
        ...

    def predict(self, model: nn.Module, batch: Any, rt: Runtime) -> torch.Tensor:
        """Probabilities (rows of the batch x outputs) for validation."""
        ...

    def score(self, probs: np.ndarray) -> dict[str, float]:
        """Per-epoch validation scores; must hold ``valid_loss`` (lower is better)."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint needs besides weights to rebuild and feed the model."""
        ...

    def run_details(self) -> dict[str, Any]: ...

    def report(self, probs: np.ndarray) -> dict[str, Any]:
        """Final metrics of the best model's validation probabilities (every rank)."""
        ...

    def write_outputs(self, out: Path, probs: np.ndarray) -> None:
        """Validation predictions and operating thresholds (rank 0 only)."""
        ...


@dataclass
class Schedule:
    steps_per_epoch: int
    updates_per_epoch: int
    drop_last: bool


@dataclass
class TrainState:
    """Everything that changes while training; saves itself into ``last.pt`` and back."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: Any = None  # timm ModelEmaV3
    epochs_done: int = 0
    updates: int = 0
    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def weights(self) -> dict[str, Any]:
        ema = self.ema.module.state_dict() if self.ema is not None else None
        return {"model": self.model.state_dict(), "ema": ema}

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epochs_done": self.epochs_done,
            "updates": self.updates,
            "history": self.history,
            "best_loss": self.best_loss,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epochs_done, self.updates = ckpt["epochs_done"], ckpt["updates"]
        self.history, self.best_loss = ckpt["history"], ckpt["best_loss"]


def plan_schedule(samples: int, cfg: LoopConfig, d: Dist) -> Schedule:
    per_rank = math.ceil(samples / d.world)
    drop_last = per_rank > cfg.batch_size  # BatchNorm dislikes a trailing batch of one
    steps = (per_rank // cfg.batch_size) if drop_last else math.ceil(per_rank / cfg.batch_size)
    return Schedule(steps, max(1, math.ceil(steps / cfg.accumulate)), drop_last)


def build_state(task: Task, cfg: LoopConfig, rt: Runtime, schedule: Schedule) -> TrainState:
    """Model (seeded), EMA, AdamW, gradient scaler and the warm-up + cosine schedule."""
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    seed_everything(cfg.seed)
    model = task.build_model().to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=schedule.updates_per_epoch * cfg.epochs,
        lr_min=cfg.lr * 0.01,
        warmup_lr_init=cfg.lr * 0.01,
        warmup_t=int(cfg.warmup_epochs * schedule.updates_per_epoch),
        t_in_epochs=False,
    )
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=rt.fp16),
        ema=ModelEmaV3(model, decay=cfg.ema) if cfg.ema > 0 else None,
    )


def restore(state: TrainState, task: Task, cfg: LoopConfig, out: Path, log: Log) -> None:
    """Continue from ``out/last.pt`` when it exists and was made with the same settings."""
    last = out / "last.pt"
    if not last.is_file():
        log(f"{out}: nothing to resume; starting a new run")
        return
    ckpt = load_checkpoint(last)
    saved, now = ckpt["train_config"], cfg.to_dict()
    mismatched = [k for k in task.resume_keys if saved.get(k) != now.get(k)]
    if mismatched:
        raise ValueError(f"{out}: cannot resume with different {', '.join(mismatched)}")
    state.load_state_dict(ckpt)
    log(f"resuming {out} after epoch {state.epochs_done} of {cfg.epochs}")


def train_epoch(
    task: Task,
    state: TrainState,
    net: nn.Module,
    loader: DataLoader,
    rt: Runtime,
    cfg: LoopConfig,
    schedule: Schedule,
    on_step: OnStep | None,
) -> dict[str, float]:
    """One pass over ``loader`` with accumulation; returns the mean loss and throughput."""
    epoch = state.epochs_done
    net.train()
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    state.optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(schedule.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
    with bar if rt.dist.main else nullcontext() as advance:
        for step, batch in enumerate(loader):
            last_micro = (step + 1) % cfg.accumulate == 0 or step + 1 == schedule.steps_per_epoch
            no_sync = rt.dist.active and not last_micro
            with net.no_sync() if no_sync else nullcontext():  # type: ignore[operator]
                loss, n = task.loss(net, batch, rt)
                state.scaler.scale(loss / cfg.accumulate).backward()
            if last_micro:
                _update(state, epoch, on_step)
            seen += n
            loss_sum += float(loss.detach()) * n
            if advance:
                rate = seen * rt.dist.world / (time.perf_counter() - started)
                advance(1, loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - started
    return {
        "train_loss": loss_sum / max(seen, 1),
        "seconds": seconds,
        "images_per_s": seen * rt.dist.world / seconds,
    }


def _update(state: TrainState, epoch: int, on_step: OnStep | None) -> None:
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.updates += 1
    state.scheduler.step_update(state.updates)
    if state.ema is not None:
        state.ema.update(state.model, step=state.updates)
    if on_step:
        on_step(epoch, state.updates)


@torch.no_grad()
def predict_dataset(
    task: Task, model: nn.Module, dataset: Dataset, rt: Runtime, cfg: LoopConfig
) -> np.ndarray:
    """The task's probabilities for every sample of ``dataset`` in order, across ranks."""
    d = rt.dist
    sampler: DistributedSampler | None = None
    if d.active:
        sampler = DistributedSampler(dataset, d.world, d.rank, shuffle=False)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size * 2,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=rt.device.type == "cuda",
        collate_fn=task.collate,
    )
    model.eval()
    parts = [task.predict(model, batch, rt).float().cpu().numpy() for batch in loader]
    probs = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    indices = list(iter(sampler)) if sampler is not None else []
    return gather_rows(d, len(dataset), indices, probs)  # type: ignore[arg-type]


def end_epoch(
    task: Task, state: TrainState, rt: Runtime, cfg: LoopConfig, meta: dict, stats: dict, log: Log
) -> None:
    """Validate, append to the history, write checkpoints and ``log.csv``."""
    probs = predict_dataset(task, state.eval_model, task.valid_set, rt, cfg)
    scores = task.score(probs)
    state.epochs_done += 1
    lr = state.optimizer.param_groups[0]["lr"]
    row = {"epoch": state.epochs_done, "train_loss": stats["train_loss"], **scores, "lr": lr}
    state.history.append(
        {**row, "seconds": stats["seconds"], "images_per_s": stats["images_per_s"]}
    )
    improved = scores["valid_loss"] < state.best_loss
    state.best_loss = min(state.best_loss, scores["valid_loss"])
    if rt.dist.main:
        out = Path(str(cfg.out))
        if improved:
            extra = {"epoch": state.epochs_done, "valid_loss": scores["valid_loss"]}
            save_checkpoint(out / "best.pt", {**meta, **state.weights(), **extra})
        save_checkpoint(out / "last.pt", {**meta, **state.state_dict()})
        write_log(out / "log.csv", state.history)
        auc = f" auc(any) {scores['auc_any']:.3f}" if "auc_any" in scores else ""
        log(
            f"{task.label} epoch {state.epochs_done}/{cfg.epochs}: train {row['train_loss']:.4f} "
            f"valid {scores['valid_loss']:.4f}{auc} {stats['images_per_s']:.0f} img/s"
            f"{' *' if improved else ''}"
        )
    rt.dist.barrier()


def finish(task: Task, state: TrainState, rt: Runtime, cfg: LoopConfig) -> dict[str, Any]:
    """Score the best checkpoint on validation; rank 0 writes the outputs and metrics.json."""
    out = Path(str(cfg.out))
    best = load_checkpoint(out / "best.pt") if (out / "best.pt").is_file() else None
    if best is not None:
        state.model.load_state_dict(inference_state(best))
    probs = predict_dataset(task, state.model, task.valid_set, rt, cfg)
    report = task.report(probs)
    best_epoch = best["epoch"] if best else None
    report.update({"best_epoch": best_epoch, "epochs": len(state.history), "complete": True})
    if rt.dist.main:
        task.write_outputs(out, probs)
        write_json(out / "metrics.json", report)
    rt.dist.barrier()  # other ranks read these files next
    return report


def _open_run(task: Task, cfg: LoopConfig, rt: Runtime, out: Path) -> dict[str, Any]:
    """What every checkpoint of the run carries; rank 0 writes the run's config files."""
    meta = {"kind": task.kind, "train_config": checkpoint_config(cfg), **task.checkpoint_meta()}
    if rt.dist.main:
        out.mkdir(parents=True, exist_ok=True)
        details = {"world_size": rt.dist.world, "device": str(rt.device), "amp": rt.amp}
        write_run_config(out, cfg, {**meta, **details, **task.run_details()})
    return meta


def train(
    task: Task,
    cfg: LoopConfig,
    resume: bool = False,
    on_step: OnStep | None = None,
    log: Log = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train ``task`` into ``cfg.out``; returns the final report (also in metrics.json).

    ``on_step(epoch, update)`` is called after every optimiser update (progress, tests). A
    folder holding an earlier run is refused unless ``resume`` or ``force`` (replace it).
    """
    rt = make_runtime(cfg.device, cfg.amp, cfg.channels_last)
    out = Path(str(cfg.out))
    check_run_folder(out, resume, force)
    rt.dist.barrier()  # every rank checked before rank 0 writes
    schedule = plan_schedule(len(task.train_set), cfg, rt.dist)  # type: ignore[arg-type]
    state = build_state(task, cfg, rt, schedule)
    if resume:
        restore(state, task, cfg, out, log)
    net: nn.Module = state.model
    if rt.dist.active:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = DistributedDataParallel(state.model, device_ids=ids)
    meta = _open_run(task, cfg, rt, out)
    d = rt.dist
    sampler: DistributedSampler = DistributedSampler(
        task.train_set, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=d.active
    )
    while state.epochs_done < cfg.epochs:
        seed_everything(cfg.seed * 1000 + state.epochs_done * 10 + d.rank)
        sampler.set_epoch(state.epochs_done)
        loader = DataLoader(
            task.train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            drop_last=schedule.drop_last,
            pin_memory=rt.device.type == "cuda",
            collate_fn=task.collate,
        )
        stats = train_epoch(task, state, net, loader, rt, cfg, schedule, on_step)
        end_epoch(task, state, rt, cfg, meta, stats, log)
    return finish(task, state, rt, cfg)
