"""Losses: Hungarian matching, BCE + dice on sampled points (Mask2Former), and the click criterion.

Memory does not grow with the image: predicted and target masks are compared
only at ``num_points`` sampled points per mask (bilinear ``grid_sample``),
chosen as in Mask2Former — ``oversample_ratio × num_points`` uniform candidates,
of which the ``importance_ratio`` share with the most uncertain prediction
(logit nearest 0) is kept, the rest drawn uniformly. Matching costs use one
set of uniform points per image.

Randomness is per image: each image carries a seed (from the dataset, derived
from the run seed, epoch and image index), and its points are drawn from a
generator seeded with it. A sample's loss therefore does not depend on which
rank or batch it lands in, which is what makes a DDP run reproduce a single
process on the same global batch.

Normalisation: sums over masks are divided by the number of target masks of
the *global* batch (all-reduced when ``torch.distributed`` is initialised, as
Mask2Former does), and the objectness cross-entropy by the global sum of its
class weights; DDP's gradient averaging then gives exactly the gradient of the
single-process loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = [
    "HungarianMatcher",
    "PromptCriterion",
    "SetCriterion",
    "dice_loss",
    "hungarian_match",
    "mask_iou_points",
    "pairwise_dice",
    "pairwise_sigmoid_ce",
    "point_sample",
    "sigmoid_ce_loss",
    "uncertain_point_coords",
]


# ------------------------------------------------------------------------------ points


def point_sample(input: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of maps at points.

    Args:
        input (Tensor[N, C, H, W]): maps.
        coords (Tensor[N, P, 2]): (x, y) in [0, 1] of the map extent (0 = left/top
            edge, 1 = right/bottom edge; pixel j's centre is (j + 0.5) / W).

    Returns:
        Tensor[N, C, P]. Points outside read zero.
    """
    if input.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != input.shape[0]:
        raise ValueError(f"point_sample: expected input [N, C, H, W] and coords [N, P, 2], got {tuple(input.shape)} and {tuple(coords.shape)}")
    grid = 2.0 * coords[:, :, None, :].to(input.dtype) - 1.0
    return F.grid_sample(input, grid, mode="bilinear", align_corners=False).squeeze(3)


def uncertain_point_coords(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask2Former's importance sampling of points on mask logits.

    Draws ``int(oversample_ratio * num_points)`` uniform candidates, keeps the
    ``int(importance_ratio * num_points)`` whose logit is nearest 0, and fills up
    with uniform points.

    Args:
        logits (Tensor[N, 1, H, W]): mask logits.
        num_points: points per mask.
        oversample_ratio: >= 1.
        importance_ratio: in [0, 1]; 0 gives uniform sampling.
        generator: on ``logits.device``.

    Returns:
        Tensor[N, num_points, 2] (x, y) in [0, 1].
    """
    if oversample_ratio < 1 or not 0 <= importance_ratio <= 1:
        raise ValueError(f"need oversample_ratio >= 1 and importance_ratio in [0, 1], got {oversample_ratio}, {importance_ratio}")
    n = logits.shape[0]
    dev = logits.device
    n_cand = int(num_points * oversample_ratio)
    n_imp = int(importance_ratio * num_points)
    n_rand = num_points - n_imp
    cand = torch.rand(n, n_cand, 2, device=dev, generator=generator)
    out = []
    if n_imp > 0:
        unc = -point_sample(logits.float(), cand)[:, 0].abs()
        idx = unc.topk(n_imp, dim=1).indices
        out.append(cand.gather(1, idx[..., None].expand(-1, -1, 2)))
    if n_rand > 0:
        out.append(torch.rand(n, n_rand, 2, device=dev, generator=generator))
    return torch.cat(out, 1)


# ------------------------------------------------------------------------------ losses


def sigmoid_ce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over points: ``[N, P], [N, P] -> [N]``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` with ``p = sigmoid(logits)``: ``[N, P], [N, P] -> [N]``."""
    p = logits.sigmoid()
    num = 2 * (p * targets).sum(1)
    den = p.sum(1) + targets.sum(1)
    return 1 - (num + 1) / (den + 1)


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """:func:`sigmoid_ce_loss` of every prediction against every target: ``[Q, P], [K, P] -> [Q, K]``."""
    pos = F.softplus(-logits)  # -log sigmoid(x)
    neg = F.softplus(logits)  # -log (1 - sigmoid(x))
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """:func:`dice_loss` of every prediction against every target: ``[Q, P], [K, P] -> [Q, K]``."""
    p = logits.sigmoid()
    num = 2 * p @ targets.T
    den = p.sum(1)[:, None] + targets.sum(1)[None, :]
    return 1 - (num + 1) / (den + 1)


def mask_iou_points(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of thresholded predictions with binary targets, measured at points: ``[N, P], [N, P] -> [N]``."""
    pred = logits > 0
    tgt = targets > 0.5
    inter = (pred & tgt).sum(1).float()
    union = (pred | tgt).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


# ------------------------------------------------------------------------------ matching


def hungarian_match(cost: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment (``scipy.optimize.linear_sum_assignment``).

    Args:
        cost (Tensor[Q, K]): cost of giving prediction q target k.

    Returns:
        (rows, cols): ``long[min(Q, K)]`` each, rows ascending.

    Raises:
        ValueError: the cost holds NaN or inf (a diverged model), or is not 2-D.
    """
    c = cost.detach().float().cpu().numpy() if isinstance(cost, Tensor) else np.asarray(cost, np.float64)
    if c.ndim != 2:
        raise ValueError(f"hungarian_match: cost should be 2-D [Q, K], got shape {c.shape}")
    if c.size == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if not np.isfinite(c).all():
        raise ValueError("hungarian_match: the matching cost holds NaN or inf (has training diverged? lower the learning rate)")
    r, k = linear_sum_assignment(c)
    return torch.as_tensor(r, dtype=torch.long), torch.as_tensor(k, dtype=torch.long)


class HungarianMatcher(nn.Module):
    """Mask2Former's matcher: cost = class·(-P(object)) + mask·BCE + dice·dice on shared uniform points.

    Args:
        cost_class, cost_mask, cost_dice: weights (published 2 / 5 / 5).
        num_points: points per image for the costs.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544) -> None:
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice = float(cost_class), float(cost_mask), float(cost_dice)
        self.num_points = int(num_points)

    @torch.no_grad()
    def forward(self, logits: Tensor, masks: Tensor, targets: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One image: logits ``[Q, 2]``, mask logits ``[Q, h, w]``, targets ``[K, H, W]`` -> (rows, cols)."""
        k = targets.shape[0]
        if k == 0:
            e = torch.zeros(0, dtype=torch.long)
            return e, e
        with torch.autocast(device_type=masks.device.type, enabled=False):
            coords = torch.rand(1, self.num_points, 2, device=masks.device, generator=generator)
            tgt = point_sample(targets[:, None].float(), coords.expand(k, -1, -1))[:, 0]
            pred = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
            prob = logits.float().softmax(-1)[:, 0]
            cost = (
                self.cost_mask * pairwise_sigmoid_ce(pred, tgt)
                + self.cost_dice * pairwise_dice(pred, tgt)
                - self.cost_class * prob[:, None]
            )
        return hungarian_match(cost)


def _global_mean(value: float, device: torch.device) -> Tensor:
    """The mean over ranks of a per-rank count (its sum over ranks / world size); the value itself without DDP."""
    t = torch.as_tensor(float(value), dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t


class SetCriterion(nn.Module):
    """Loss of the whole-image model: Hungarian matching, objectness CE, BCE + dice on points, deep supervision.

    Args:
        class_weight, mask_weight, dice_weight: loss weights (published 2 / 5 / 5); the
            matcher uses the same.
        no_object_weight: CE weight of the no-object class (published 0.1).
        num_points: points per mask (Mask2Former: 112 × 112 = 12544).
        oversample_ratio, importance_ratio: importance sampling (3.0, 0.75).
        aux_loss: also supervise the intermediate predictions.

    ``forward(outputs, targets, seeds)``: ``targets`` a list of ``Tensor[K_i, H, W]``
    (bool or float) on the outputs' device, ``seeds`` one int per image. Returns a dict
    with ``loss`` (weighted total, to backpropagate) and the unweighted parts
    ``loss_ce``, ``loss_mask``, ``loss_dice`` (last layer) and ``loss_ce_<i>``... (aux).
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        self.weights = {"loss_ce": float(class_weight), "loss_mask": float(mask_weight), "loss_dice": float(dice_weight)}
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        self.no_object_weight = float(no_object_weight)
        self.num_points, self.oversample_ratio, self.importance_ratio = int(num_points), float(oversample_ratio), float(importance_ratio)
        self.aux_loss = bool(aux_loss)

    def forward(self, outputs: dict, targets: list[Tensor], seeds: list[int]) -> dict[str, Tensor]:
        if len(targets) != outputs["pred_logits"].shape[0] or len(seeds) != len(targets):
            raise ValueError(f"SetCriterion: {outputs['pred_logits'].shape[0]} predictions, {len(targets)} targets, {len(seeds)} seeds")
        dev = outputs["pred_logits"].device
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
        layers = [outputs]
        if self.aux_loss:
            layers = layers + list(outputs.get("aux_outputs", []))
        n_masks = sum(int(t.shape[0]) for t in targets)
        num_masks = _global_mean(n_masks, dev).clamp_min(1.0)
        q = outputs["pred_logits"].shape[1]
        n_img = len(targets)
        # CE normaliser: the global sum of class weights (each image: K_i with weight 1, Q - K_i with eos).
        ce_den = _global_mean(n_masks + self.no_object_weight * (n_img * q - n_masks), dev).clamp_min(1e-6)
        losses: dict[str, Tensor] = {}
        total = 0.0
        for i, out in enumerate(layers):
            suffix = "" if i == 0 else f"_{i - 1}"
            for k, v in self._layer(out, targets, gens, num_masks, ce_den).items():
                losses[k + suffix] = v
                total = total + self.weights[k] * v
        losses["loss"] = total
        return losses

    def _layer(self, out: dict, targets: list[Tensor], gens: list[torch.Generator], num_masks: Tensor, ce_den: Tensor) -> dict[str, Tensor]:
        logits = out["pred_logits"].float()
        masks = out["pred_masks"]
        b, q = logits.shape[:2]
        labels = torch.ones(b, q, dtype=torch.long, device=logits.device)  # 1 = no-object
        src, tgt, coords = [], [], []
        for j in range(b):
            rows, cols = self.matcher(logits[j], masks[j], targets[j], gens[j])
            if rows.numel() == 0:
                continue
            rows, cols = rows.to(logits.device), cols.to(logits.device)
            labels[j, rows] = 0
            s = masks[j][rows].float()[:, None]
            with torch.no_grad():
                coords.append(uncertain_point_coords(s, self.num_points, self.oversample_ratio, self.importance_ratio, gens[j]))
            src.append(s)
            tgt.append(targets[j][cols].float()[:, None])
        w = torch.tensor([1.0, self.no_object_weight], device=logits.device)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        loss_ce = (ce * w[labels.flatten()]).sum() / ce_den
        if src:
            c = torch.cat(coords)
            pl = point_sample(torch.cat(src), c)[:, 0]
            with torch.no_grad():
                tl = torch.cat([point_sample(t, cc) for t, cc in zip(tgt, coords)])[:, 0]
            loss_mask = sigmoid_ce_loss(pl, tl).sum() / num_masks
            loss_dice = dice_loss(pl, tl).sum() / num_masks
        else:
            # No target anywhere in this image batch: zero, but keep the graph connected for DDP.
            loss_mask = loss_dice = masks.sum() * 0.0
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}


class PromptCriterion(nn.Module):
    """Loss of the promptable model: each click's outputs are matched (Hungarian) to the masks that contain it.

    For a click with targets T (the pseudo-masks holding the click, any granularity)
    and M outputs, the cost of output m for target t is mask·BCE + dice·dice on
    shared uniform points; the min(M, |T|) matched pairs get BCE + dice on
    importance-sampled points. Every output's IoU prediction is regressed (MSE) on
    its IoU, measured at the points, with its matched target, or for an unmatched
    output with the best of the click's targets.

    ``forward(outputs, targets, click_targets, seeds)``: ``targets`` a list of
    ``Tensor[K_i, H, W]``; ``click_targets`` a list of ``long[P, T]`` indices into the
    image's targets (-1 = none); clicks without targets are ignored.
    """

    def __init__(
        self,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        iou_weight: float = 1.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.weights = {"loss_mask": float(mask_weight), "loss_dice": float(dice_weight), "loss_iou": float(iou_weight)}
        self.num_points, self.oversample_ratio, self.importance_ratio = int(num_points), float(oversample_ratio), float(importance_ratio)

    def forward(self, outputs: dict, targets: list[Tensor], click_targets: list[Tensor], seeds: list[int]) -> dict[str, Tensor]:
        pred = outputs["pred_masks"]  # [B, P, M, h, w]
        piou = outputs["pred_iou"].float()  # [B, P, M]
        b, p, m = pred.shape[:3]
        dev = pred.device
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
        src, tgt, coords = [], [], []
        iou_pred, iou_tgt = [], []
        for j in range(b):
            ct = click_targets[j]
            has = (ct >= 0).any(1)
            if not bool(has.any()) or targets[j].shape[0] == 0:
                continue
            with torch.no_grad():
                pts = torch.rand(1, self.num_points, 2, device=dev, generator=gens[j])
                pr = point_sample(pred[j].flatten(0, 1)[:, None].float(), pts.expand(p * m, -1, -1))[:, 0].view(p, m, -1)
                tg = point_sample(targets[j][:, None].float(), pts.expand(targets[j].shape[0], -1, -1))[:, 0]
            for c in torch.nonzero(has).flatten().tolist():
                idx = ct[c][ct[c] >= 0].to(dev)
                t_pts = tg[idx]  # [T, N]
                with torch.no_grad():
                    cost = self.weights["loss_mask"] * pairwise_sigmoid_ce(pr[c], t_pts) + self.weights["loss_dice"] * pairwise_dice(pr[c], t_pts)
                rows, cols = hungarian_match(cost)
                rows, cols = rows.to(dev), cols.to(dev)
                with torch.no_grad():
                    # IoU of every output with every target at the points; matched outputs use their target.
                    pb = pr[c] > 0
                    tb = t_pts > 0.5
                    inter = (pb[:, None] & tb[None]).sum(-1).float()
                    union = (pb[:, None] | tb[None]).sum(-1).float()
                    ious = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))  # [M, T]
                    target_iou = ious.max(1).values
                    target_iou[rows] = ious[rows, cols]
                iou_pred.append(piou[j, c])
                iou_tgt.append(target_iou)
                s = pred[j, c][rows].float()[:, None]
                with torch.no_grad():
                    coords.append(uncertain_point_coords(s, self.num_points, self.oversample_ratio, self.importance_ratio, gens[j]))
                src.append(s)
                tgt.append(targets[j][idx[cols]].float()[:, None])
        n_pairs = sum(int(s.shape[0]) for s in src)
        num_masks = _global_mean(n_pairs, dev).clamp_min(1.0)
        num_iou = _global_mean(sum(int(t.numel()) for t in iou_tgt), dev).clamp_min(1.0)
        if src:
            c = torch.cat(coords)
            pl = point_sample(torch.cat(src), c)[:, 0]
            with torch.no_grad():
                tl = torch.cat([point_sample(t, cc) for t, cc in zip(tgt, coords)])[:, 0]
            loss_mask = sigmoid_ce_loss(pl, tl).sum() / num_masks
            loss_dice = dice_loss(pl, tl).sum() / num_masks
            loss_iou = F.mse_loss(torch.cat(iou_pred), torch.cat(iou_tgt), reduction="sum") / num_iou
        else:
            loss_mask = loss_dice = loss_iou = pred.sum() * 0.0 + piou.sum() * 0.0
        losses = {"loss_mask": loss_mask, "loss_dice": loss_dice, "loss_iou": loss_iou}
        losses["loss"] = sum(self.weights[k] * v for k, v in losses.items())
        return losses
