"""``ichdet train``: fit one fold or all folds of a timm model on the prepared cache.

Plain PyTorch: weighted BCE (the metric's label weights), AdamW, warmup + cosine (timm's
scheduler, stepped per update), AMP on CUDA (bf16 where supported, else fp16 with a scaler),
channels_last on CUDA, gradient accumulation, optional EMA (timm), batch augmentation on the
training device, DDP under ``torchrun`` (nccl on CUDA, gloo on CPU; only rank 0 writes).

Each epoch reseeds every random source from (seed, epoch, rank), so ``--resume`` from the last
checkpoint replays an interrupted epoch exactly and ends where a straight run would.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .atomic import atomic_path, write_text
from .augment import RandomTrainAugment
from .cache import CacheSettings, read_settings
from .data import SliceDataset
from .labels import LABELS, WEIGHT_VECTOR
from .metrics import (
    evaluate_arrays,
    operating_thresholds,
    per_label_auc,
    prior_log_loss,
    to_long,
    weighted_log_loss,
)
from .models import ModelConfig, build_model
from .progress import progress_bar
from .runs import (
    inference_state,
    load_checkpoint,
    read_json,
    save_checkpoint,
    versions,
    write_json,
)

#: Settings that must match when a run is resumed.
RESUME_KEYS = ("model", "size", "context", "fold", "seed", "batch_size", "accumulate", "windows")


@dataclass
class TrainConfig:
    index: str
    cache: str
    out: str
    fold: int = 0
    epochs: int = 5
    model: str = "tf_efficientnet_b0"
    size: int = 256
    windows: str = "brain,subdural,bone"
    context: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 0.5
    accumulate: int = 1
    amp: bool | None = None  # None: on for CUDA, off for CPU
    channels_last: bool | None = None  # None: on for CUDA
    ema: float = 0.0  # EMA decay; 0 turns EMA off
    augment: bool = True
    seed: int = 0
    workers: int = 2
    pretrained: bool = False
    weights: str | None = None
    drop_path: float = 0.0
    device: str = "auto"
    target_sensitivity: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- environment


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device_pref!r}")
    device = torch.device(f"cuda:{d.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if d.active and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_cache(cache: str | os.PathLike, size: int, windows: str) -> Path:
    """The cache folder for these settings: ``cache`` itself, or its one matching subfolder."""
    from .windows import parse_windows

    root = Path(cache)
    wanted = [w.name for w in parse_windows(windows)]
    candidates = (
        [root]
        if (root / "settings.json").is_file()
        else sorted(p.parent for p in root.glob("*/settings.json"))
    )
    matches = [p for p in candidates if _cache_matches(read_settings(p), size, wanted)]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise FileNotFoundError(
        f"{cache}: {'several caches' if matches else 'no cache'} for size {size} and windows "
        f"{','.join(wanted)} (found: {found}); run `ichdet prepare --size {size}` first"
    )


def _cache_matches(settings: CacheSettings, size: int, windows: list[str]) -> bool:
    return settings.size == size and [w.name for w in settings.windows] == windows


# --------------------------------------------------------------------------- the loop


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with the metric's label weights: equals the weighted log loss of sigmoid(logits)."""
    w = torch.as_tensor(WEIGHT_VECTOR, device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (per * w).sum(dim=1).mean() / w.sum()


def split_fold(index: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if "fold" not in index:
        raise ValueError("the index has no folds; build it with `ichdet index --folds K`")
    labelled = index[(index["split"] == "train") & index[list(LABELS)].notna().all(axis=1)]
    folds = sorted(f for f in labelled["fold"].unique() if f >= 0)
    if fold not in folds:
        raise ValueError(f"fold {fold} not in the index (folds: {folds})")
    return labelled[labelled["fold"] != fold], labelled[labelled["fold"] == fold]


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16)


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    channels_last: bool = False,
) -> np.ndarray:
    """Sigmoid probabilities (N, 6) for every batch of ``loader`` in order."""
    model.eval()
    out = []
    for x, _ in loader:
        x = x.to(device, non_blocking=True).float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            out.append(torch.sigmoid(model(x).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)


def _gather_predictions(model, dataset, cfg, d: Dist, device, amp, channels_last) -> np.ndarray:
    """Validation probabilities for the whole dataset, computed across ranks."""
    sampler = DistributedSampler(dataset, d.world, d.rank, shuffle=False) if d.active else None
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size * 2,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    probs = predict_loader(model, loader, device, amp, channels_last)
    if not d.active:
        return probs
    indices = list(iter(sampler))
    parts: list = [None] * d.world
    dist.all_gather_object(parts, (indices, probs))
    merged = np.zeros((len(dataset), len(LABELS)), np.float32)
    for idx, p in parts:
        merged[np.asarray(idx)] = p  # padding repeats rows; their values are identical
    return merged


def _write_log(path: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


def fit(
    cfg: TrainConfig,
    resume: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one fold into ``cfg.out``; returns the run's metrics (also in metrics.json).

    ``on_step(epoch, step)`` is called after every optimiser update (progress, tests).
    """
    d, device = setup_distributed(cfg.device)
    out = Path(cfg.out)
    cache_dir = resolve_cache(cfg.cache, cfg.size, cfg.windows)
    settings = read_settings(cache_dir)
    index = pd.read_parquet(cfg.index)
    train_df, valid_df = split_fold(index, cfg.fold)
    train_ds = SliceDataset(train_df, cache_dir, context=cfg.context)
    valid_ds = SliceDataset(valid_df, cache_dir, context=cfg.context)
    if len(train_ds) == 0 or len(valid_ds) == 0:
        raise ValueError(f"fold {cfg.fold}: no cached training or validation images")
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"

    model_cfg = ModelConfig(
        name=cfg.model, in_chans=train_ds.channels, drop_path_rate=cfg.drop_path
    )
    seed_everything(cfg.seed)
    model = build_model(model_cfg, pretrained=cfg.pretrained, weights=cfg.weights).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fp16 = amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    sampler = DistributedSampler(
        train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=d.active
    )
    per_rank = math.ceil(len(train_ds) / d.world)
    drop_last = per_rank > cfg.batch_size  # BatchNorm dislikes a trailing batch of one
    steps_per_epoch = (
        (per_rank // cfg.batch_size) if drop_last else math.ceil(per_rank / cfg.batch_size)
    )
    updates_per_epoch = max(1, math.ceil(steps_per_epoch / cfg.accumulate))
    from timm.scheduler import CosineLRScheduler

    total_updates = updates_per_epoch * cfg.epochs
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total_updates,
        lr_min=cfg.lr * 0.01,
        warmup_lr_init=cfg.lr * 0.01,
        warmup_t=int(cfg.warmup_epochs * updates_per_epoch),
        t_in_epochs=False,
    )

    start_epoch, updates, history, best = 0, 0, [], math.inf
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        saved = ckpt["train_config"]
        mismatched = [k for k in RESUME_KEYS if saved.get(k) != getattr(cfg, k)]
        if mismatched:
            raise ValueError(f"{out}: cannot resume with different {', '.join(mismatched)}")
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema"):
            ema.module.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, updates = ckpt["epochs_done"], ckpt["updates"]
        history, best = ckpt["history"], ckpt["best_loss"]
        log(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}")
    elif resume:
        log(f"{out}: nothing to resume; starting a new run")

    train_model: torch.nn.Module = model
    if d.active:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    augment = RandomTrainAugment(settings.channels).to(device) if cfg.augment else None
    meta = {
        "train_config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "cache_settings": settings.to_dict(),
        "context": cfg.context,
    }
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "config.json",
            {
                **meta,
                "versions": versions(),
                "world_size": d.world,
                "device": str(device),
                "amp": amp,
                "train_images": len(train_ds),
                "valid_images": len(valid_ds),
            },
        )
    y_valid = valid_ds.labels.numpy()

    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(cfg.seed * 1000 + epoch * 10 + d.rank)
        sampler.set_epoch(epoch)
        loader = DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        train_model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        optimizer.zero_grad(set_to_none=True)
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}") if d.main else None
        with bar or nullcontext() as bar_step:
            for step, (x, y) in enumerate(loader):
                x = x.to(device, non_blocking=True).float().div_(255)
                y = y.to(device, non_blocking=True)
                if augment is not None:
                    x = augment(x)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                last_micro = (step + 1) % cfg.accumulate == 0 or step + 1 == steps_per_epoch
                sync = nullcontext() if last_micro or not d.active else train_model.no_sync()
                with sync:
                    with _autocast(device, amp):
                        logits = train_model(x)
                    loss = weighted_bce(logits, y)
                    scaler.scale(loss / cfg.accumulate).backward()
                if last_micro:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    updates += 1
                    scheduler.step_update(updates)
                    if ema is not None:
                        ema.update(model, step=updates)
                    if on_step:
                        on_step(epoch, updates)
                seen += len(x)
                loss_sum += float(loss.detach()) * len(x)
                if bar_step:
                    rate = seen * d.world / (time.perf_counter() - started)
                    bar_step(1, loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}")
        seconds = time.perf_counter() - started
        eval_model = ema.module if ema is not None else model
        probs = _gather_predictions(eval_model, valid_ds, cfg, d, device, amp, channels_last)
        valid_loss = weighted_log_loss(y_valid, probs)
        aucs = per_label_auc(y_valid, probs)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "valid_loss": valid_loss,
            **{f"auc_{k}": v for k, v in aucs.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": seen * d.world / seconds,
        }
        history.append(row)
        improved = valid_loss < best
        best = min(best, valid_loss)
        if d.main:
            state = {
                "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
            }
            if improved:
                save_checkpoint(
                    best_path, {**meta, **state, "epoch": epoch + 1, "valid_loss": valid_loss}
                )
            save_checkpoint(
                last_path,
                {
                    **meta,
                    **state,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epochs_done": epoch + 1,
                    "updates": updates,
                    "history": history,
                    "best_loss": best,
                },
            )
            _write_log(out / "log.csv", history)
            log(
                f"fold {cfg.fold} epoch {epoch + 1}/{cfg.epochs}: train {row['train_loss']:.4f} "
                f"valid {valid_loss:.4f} auc(any) {aucs['any']:.3f} "
                f"{row['images_per_s']:.0f} img/s{' *' if improved else ''}"
            )
        if d.active:
            dist.barrier()
    return _finish(cfg, d, device, amp, channels_last, model, valid_ds, out, history)


def _finish(cfg, d, device, amp, channels_last, model, valid_ds, out, history) -> dict:
    """Predict validation with the best checkpoint; write predictions, metrics, thresholds."""
    best = load_checkpoint(out / "best.pt") if (out / "best.pt").is_file() else None
    if best is not None:
        model.load_state_dict(inference_state(best))
    probs = _gather_predictions(model, valid_ds, cfg, d, device, amp, channels_last)
    y = valid_ds.labels.numpy()
    report = evaluate_arrays(y, probs, target_sensitivity=cfg.target_sensitivity)
    report.update(
        {
            "fold": cfg.fold,
            "best_epoch": best["epoch"] if best else None,
            "epochs": len(history),
            "complete": True,
        }
    )
    if d.main:
        frame = to_long(valid_ds.index["image_id"].tolist(), probs)
        with atomic_path(out / "valid_predictions.csv") as tmp:
            frame.to_csv(tmp, index=False)
        write_json(
            out / "thresholds.json",
            {
                "target_sensitivity": cfg.target_sensitivity,
                "source": "validation",
                "labels": operating_thresholds(y, probs, cfg.target_sensitivity),
            },
        )
        write_json(out / "metrics.json", report)
    if d.active:
        dist.barrier()  # other ranks read these files next
    return report


def fit_all(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train every fold into ``out/fold_<k>``; write out-of-fold predictions and the CV score."""
    index = pd.read_parquet(cfg.index)
    if "fold" not in index:
        raise ValueError("the index has no folds; build it with `ichdet index --folds K`")
    folds = sorted(int(f) for f in index["fold"].unique() if f >= 0)
    out = Path(cfg.out)
    scores = {}
    for fold in folds:
        run = out / f"fold_{fold}"
        done = run / "metrics.json"
        if resume and done.is_file() and read_json(done).get("complete"):
            log(f"fold {fold}: already complete")
        else:
            fit(
                TrainConfig(**{**cfg.to_dict(), "fold": fold, "out": str(run)}),
                resume=resume,
                log=log,
            )
        scores[fold] = read_json(done)["weighted_log_loss"]
    d, _ = setup_distributed(cfg.device)
    if not d.main:
        return {}
    from .metrics import from_long

    oof = pd.concat([pd.read_csv(out / f"fold_{f}" / "valid_predictions.csv") for f in folds])
    oof.to_csv(out / "oof_predictions.csv", index=False)
    wide = from_long(oof)
    truth = index.set_index("image_id").loc[wide.index, list(LABELS)].to_numpy(dtype=np.float64)
    probs = wide.to_numpy()
    cv = {
        "folds": scores,
        "cv_weighted_log_loss": weighted_log_loss(truth, probs),
        "mean_fold_loss": float(np.mean(list(scores.values()))),
        "prior_log_loss": prior_log_loss(truth),
        "auc": per_label_auc(truth, probs),
    }
    write_json(out / "cv.json", cv)
    write_json(
        out / "thresholds.json",
        {
            "target_sensitivity": cfg.target_sensitivity,
            "source": "out-of-fold",
            "labels": operating_thresholds(truth, probs, cfg.target_sensitivity),
        },
    )
    return cv
