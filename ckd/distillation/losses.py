"""Distillation losses as pure functions on tensors.

Every function takes logits or embeddings of shape ``(B, ...)`` and returns a
scalar averaged over the batch. Nothing here knows about Avalanche.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_temperature",
    "known_class_mask",
    "soft_kl",
    "soft_kl_sum",
    "summed_soft_kl",
    "weighted",
    "average_soft_targets",
    "replay_cross_entropy",
    "asymmetric_logits",
    "logit_mse",
    "feature_distance",
    "rkd_distance",
    "rkd_angle",
]


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def known_class_mask(
    student_logits: Tensor, teacher_logits: Tensor, known_classes: Tensor | None
) -> Tensor | None:
    """Boolean mask ``(B, C_t)`` of the classes distillation may use (``None``: all).

    The teacher may have fewer outputs than the student (a head that grew
    since the snapshot): only the teacher's ``C_t`` columns are compared.
    ``known_classes`` narrows that further, as ``(C_t,)`` for the whole batch or
    ``(B, C_t)`` per sample (e.g. the classes of the sample's own task head).
    """
    batch, c_t = teacher_logits.shape
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(
            "soft_kl expects 2-D logits (B, C), got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] != batch:
        raise ValueError(
            f"student and teacher batch sizes differ: {student_logits.shape[0]} vs {batch}"
        )
    if student_logits.shape[1] < c_t:
        raise ValueError(
            f"the student has {student_logits.shape[1]} outputs but the teacher has {c_t}: "
            "a student may grow new classes, not lose them"
        )
    if known_classes is None:
        return None
    mask = known_classes.to(dtype=torch.bool, device=teacher_logits.device)
    if mask.shape[-1] != c_t:
        mask = mask[..., :c_t]
    return mask.expand(batch, c_t)


def soft_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    known_classes: Tensor | None = None,
) -> Tensor:
    """``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`` averaged over the batch.

    student_logits: ``(B, C_s)``; teacher_logits: ``(B, C_t)`` with ``C_t ≤ C_s``.
    known_classes: optional bool ``(C_t,)`` or ``(B, C_t)``; both distributions
    are renormalised over the known classes only. A row with no known class
    contributes 0 (and still counts in the batch mean).

    The ``T²`` factor keeps the gradient scale independent of ``T``: the
    gradient w.r.t. the student logits is ``T · (p_s − p_t) / B`` on the known
    classes and 0 elsewhere.
    """
    check_temperature(temperature)
    mask = known_class_mask(student_logits, teacher_logits, known_classes)
    return _row_mean_kl(student_logits, teacher_logits, temperature, mask)


def summed_soft_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """``Σ_s soft_kl(student[s], teacher[s], T, mask[s])``: several seeds' terms, stacked, in one sum.

    student_logits ``(S, R, C_s)``, teacher_logits ``(S, R, C_t)`` with ``C_t ≤ C_s``; mask: bool
    ``(S, R, C_t)`` or ``None`` (every class known). Each seed's rows are scaled by ``T² / R``,
    as its own :func:`soft_kl` scales them.
    """
    check_temperature(temperature)
    if student_logits.dim() != 3 or teacher_logits.shape != (*student_logits.shape[:2], teacher_logits.shape[-1]):
        raise ValueError(
            "summed_soft_kl expects (S, R, C) logits with the same seeds and rows, got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    return _row_mean_kl(student_logits, teacher_logits, temperature, mask)


def _row_mean_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None) -> Tensor:
    """:func:`soft_kl_sum` on the teacher's ``C_t`` columns, times ``T²`` over the rows ``R``
    (``(..., R, C)``: the rows are the second-to-last dimension)."""
    c_t = teacher_logits.shape[-1]
    if student_logits.shape[-1] != c_t:  # a head that grew; no slice (and its backward) otherwise
        student_logits = student_logits[..., :c_t]
    return soft_kl_sum(student_logits, teacher_logits, temperature, mask) * (temperature**2) / student_logits.shape[-2]


def soft_kl_sum(student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """``Σ_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))``, unscaled: :func:`soft_kl`'s sum.

    student_logits, teacher_logits: ``(..., C)`` of the same shape, classes last (any
    leading dimensions: rows, or seeds and rows); mask: bool ``(..., C)`` or ``None``
    (every class known). Both distributions are renormalised over a row's known
    classes; a row with none contributes 0.
    """
    z_s = student_logits.float() / temperature
    z_t = teacher_logits.float() / temperature
    if mask is None:  # every class is known: no masking work in the hot path
        log_p_s = F.log_softmax(z_s, dim=-1)
        log_p_t = F.log_softmax(z_t, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    # A large finite value, not -inf: exp underflows to exactly 0 and 0·finite stays 0.
    neg = torch.finfo(torch.float32).min / 4
    log_p_s = F.log_softmax(z_s.masked_fill(~mask, neg), dim=-1)
    log_p_t = F.log_softmax(z_t.masked_fill(~mask, neg), dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).masked_fill(~mask, 0.0)
    # A row with a single known class has KL 0; one with none must not produce NaN.
    return kl.sum()


def weighted(weight: float, term: Tensor) -> Tensor:
    """``weight · term``, without the multiplication (and its backward) when the weight is 1."""
    return term if weight == 1 else weight * term


def average_soft_targets(
    teacher_logits: Tensor, weights: Tensor, temperature: float, masks: Tensor | None = None
) -> Tensor:
    """Logits whose tempered softmax is the weighted mean of several teachers' softened
    probabilities: ``T · log Σ_k w_bk · softmax_masked(z_kb / T)``.

    teacher_logits: ``(K, B, C)``; weights: ``(B, K)``, each row summing to 1 (0 for a
    teacher that does not take part); masks: optional bool ``(K, B, C)``, the classes
    each teacher's softmax is taken over (its own known classes). Feed the result
    to :func:`soft_kl` with the same ``T`` and the union of the masks of the
    teachers taking part; classes with zero mean probability come out as
    ``log(tiny)``, so they must be masked out there.
    """
    check_temperature(temperature)
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be (K, B, C), got {tuple(teacher_logits.shape)}")
    k, batch, _ = teacher_logits.shape
    if weights.shape != (batch, k):
        raise ValueError(f"weights must be (B, K) = {(batch, k)}, got {tuple(weights.shape)}")
    z = teacher_logits.float() / temperature
    if masks is not None:
        z = z.masked_fill(~masks, torch.finfo(torch.float32).min / 4)
    probs = F.softmax(z, dim=2)
    if masks is not None:  # a teacher with no known class for a row contributes nothing
        probs = probs.masked_fill(~masks, 0.0)
    mean = torch.einsum("bk,kbc->bc", weights.float(), probs)
    return temperature * mean.clamp_min(torch.finfo(torch.float32).tiny).log()


def replay_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Hard-label cross-entropy on replayed samples. logits ``(B, C)``, targets ``(B,)``."""
    return F.cross_entropy(logits, targets)


def asymmetric_logits(logits: Tensor, targets: Tensor, seen: Tensor) -> Tensor:
    """The logits ER-ACE's cross-entropy on incoming samples sees (Caccia et al., 2022).

    logits ``(B, C)``, targets ``(B,)``, seen: bool ``(C,)``, the classes met so far.
    The columns of seen classes that no row of the batch is labelled with get a large
    negative value, so that the cross-entropy neither lowers nor raises them; the
    batch's classes and the classes not met yet keep theirs. Returns ``(B, C)``.
    """
    present = torch.zeros_like(seen).index_fill_(0, targets, True)
    return logits.masked_fill(seen & ~present, torch.finfo(logits.dtype).min / 4)


def logit_mse(student_logits: Tensor, teacher_logits: Tensor, known_classes: Tensor | None = None) -> Tensor:
    """Mean squared error between logits on the teacher's ``C_t`` columns (DER's term).

    student_logits ``(B, C_s)``, teacher_logits ``(B, C_t)`` with ``C_t ≤ C_s``;
    known_classes: optional bool ``(C_t,)`` or ``(B, C_t)``: other entries count as 0.
    Returns ``Σ mask · (z_s − z_t)² / (B · C_t)``, i.e. ``F.mse_loss`` without a mask.
    """
    mask = known_class_mask(student_logits, teacher_logits, known_classes)
    diff = (student_logits[:, : teacher_logits.shape[1]].float() - teacher_logits.float()).pow(2)
    if mask is not None:
        diff = diff * mask
    return diff.sum() / max(diff.numel(), 1)


def feature_distance(student: Tensor, teacher: Tensor, metric: str = "l2") -> Tensor:
    """Distance between activations ``(B, ...)`` of the same samples, batch mean.

    ``l2``: mean over samples of the squared L2 distance divided by the feature size
    (i.e. ``F.mse_loss``); ``cosine``: mean of ``1 − cos(s, t)``.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"feature shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
        )
    s = student.flatten(1).float()
    t = teacher.flatten(1).float()
    if metric == "l2":
        return F.mse_loss(s, t)
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")


def _off_diagonal(batch: int, device: torch.device) -> Tensor:
    """``(B, B)`` float: 1 off the diagonal, 0 on it. A weight, not a boolean mask:
    selecting with a mask would make the host wait for the selection's size."""
    return 1.0 - torch.eye(batch, device=device)


def _normalised_pairwise_distances(emb: Tensor, off_diag: Tensor) -> Tensor:
    """``(B, B)`` Euclidean distances divided by their mean over distinct pairs."""
    d = torch.cdist(emb, emb)
    n_pairs = emb.shape[0] * (emb.shape[0] - 1)
    mean = ((d * off_diag).sum() / n_pairs).clamp_min(1e-12)
    return d / mean


def rkd_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance-wise loss (Park et al., 2019): Huber loss between the
    mean-normalised pairwise distance matrices of ``(B, D)`` embeddings.
    Invariant to rotation, translation and scale of either embedding space."""
    s = student.flatten(1).float()
    t = teacher.flatten(1).float()
    if s.shape[0] < 2:
        raise ValueError(f"rkd_distance needs at least 2 samples, got {s.shape[0]}")
    off_diag = _off_diagonal(s.shape[0], s.device)
    huber = F.smooth_l1_loss(
        _normalised_pairwise_distances(s, off_diag), _normalised_pairwise_distances(t, off_diag), reduction="none"
    )
    return (huber * off_diag).sum() / (s.shape[0] * (s.shape[0] - 1))


def _angles(emb: Tensor) -> Tensor:
    """``(B, B, B)`` cosines of the angle at vertex j: ``cos∠(e_i − e_j, e_k − e_j)``."""
    diff = emb.unsqueeze(0) - emb.unsqueeze(1)  # diff[j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle-wise loss (Park et al., 2019): Huber loss between the cosines of
    the angles formed by every triplet of ``(B, D)`` embeddings."""
    s = student.flatten(1).float()
    t = teacher.flatten(1).float()
    if s.shape[0] < 3:
        raise ValueError(f"rkd_angle needs at least 3 samples, got {s.shape[0]}")
    return F.smooth_l1_loss(_angles(s), _angles(t))
