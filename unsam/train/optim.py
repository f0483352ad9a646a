"""The optimizer (AdamW with backbone / head and decay / no-decay groups) and the learning-rate schedule."""

from __future__ import annotations

import math
from bisect import bisect_right

import torch

from unsam.train.config import OptimConfig, ScheduleConfig


def lr_factor(step: int, sched: ScheduleConfig, total_steps: int) -> float:
    """Multiplier of the base learning rates after ``step`` optimizer steps."""
    f = 1.0
    w = sched.warmup_steps
    if step < w:
        f = sched.warmup_factor + (1.0 - sched.warmup_factor) * step / w
    if sched.name == "cosine" and step >= w:
        progress = min(1.0, (step - w) / max(1, total_steps - w))
        f *= sched.min_lr_ratio + (1.0 - sched.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif sched.name == "step":
        f *= sched.gamma ** bisect_right(list(sched.milestones), step)
    return f


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with four groups: backbone / rest x decay / no decay (norms, biases, embeddings, queries)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list] = {(b, d): [] for b in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bb = name.startswith("backbone.")
        no_decay = p.ndim <= 1 or name in skip or name.endswith(("pos_embed", "cls_token", "reg_token"))
        groups[(is_bb, not no_decay)].append(p)
    param_groups = []
    for (is_bb, decay), params in groups.items():
        if params:
            lr = optim.lr * (optim.backbone_lr_mult if is_bb else 1.0)
            param_groups.append({"params": params, "lr": lr, "weight_decay": optim.weight_decay if decay else 0.0, "name": f"{'backbone' if is_bb else 'head'}{'' if decay else '_no_decay'}"})
    # foreach: one kernel per group instead of one per tensor (5x faster on CPU for small models).
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, foreach=True)
