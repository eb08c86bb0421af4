"""The equations of Peer Study Learning (PSL paper, sections 3.2-3.4) on plain tensors.

Pure functions of logits, labels and masks; :mod:`strategies.psl` wires them to models.
Peer logits are stacked as ``(P, N, C)``: P peers, N samples, C classes.
"""

from __future__ import annotations

from itertools import combinations, permutations
from typing import Literal, get_args

import torch
import torch.nn.functional as F

Ranking = Literal["directional", "paper"]
"""The readings of equation 5, see :func:`margin_ranking_loss`."""


def in_class_loss(
    peer_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    alpha: float,
    tau: float,
) -> torch.Tensor:
    """Equation 2 for one peer j, averaged over the batch.

    ``(1 - alpha) * H(y, softmax(f_pj)) + alpha * tau^2 * H(softmax(f_T / tau),
    softmax(f_pj / tau))`` with ``H(target, prediction) = -sum_c target_c log prediction_c``.
    The paper prints the arguments of H in both orders; its text says the teacher's
    outputs are the *soft targets*, so the teacher is the target here (Hinton et al.
    2015). The soft term equals KL(teacher || peer) plus the teacher's entropy, a
    constant for the peer, so its gradient is that of the usual distillation KL.

    ``teacher_logits=None`` drops the teacher: plain cross-entropy on the labels
    (``alpha = 0``), the paper's ablation "PSL without In-Class Peer Study".
    """
    hard = F.cross_entropy(peer_logits, targets)
    if teacher_logits is None:
        return hard
    soft_targets = F.softmax(teacher_logits / tau, dim=1)
    soft = -(soft_targets * F.log_softmax(peer_logits / tau, dim=1)).sum(dim=1).mean()
    return (1 - alpha) * hard + alpha * tau**2 * soft


def discrepancy(logits: torch.Tensor) -> torch.Tensor:
    """Model discrepancy d(x) of section 3.3 and equation 6, one value per sample.

    ``d = sum_{k != j} KL(softmax(f_pj(x)) || softmax(f_pk(x)))`` over ordered peer
    pairs, from logits of shape ``(P, N, C)``. Zero for a single peer (no pairs).
    """
    log_probs = F.log_softmax(logits, dim=-1)
    total = logits.new_zeros(logits.shape[1])
    for j, k in permutations(range(logits.shape[0]), 2):
        total = total + (log_probs[j].exp() * (log_probs[j] - log_probs[k])).sum(dim=-1)
    return total


def consensus_mask(predictions: torch.Tensor) -> torch.Tensor:
    """Membership in S_A (equation 3) from peer argmax predictions of shape ``(P, N)``.

    True where *some* pair of peers predicts the same class. Its complement is S_D
    (equation 4: *all* pairs disagree) when P >= 2. With one peer there are no pairs:
    S_A is empty and S_D is vacuous, so callers skip out-of-class study.
    """
    agreed = torch.zeros(predictions.shape[1], dtype=torch.bool, device=predictions.device)
    for j, k in combinations(range(predictions.shape[0]), 2):
        agreed |= predictions[j] == predictions[k]
    return agreed


def sample_pairs(
    agreed: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs (x_A, x_D) with x_A in S_A and x_D in S_D (Algorithm 1, line 10).

    ``min(|S_A|, |S_D|)`` pairs, each sample used at most once; returns CPU row
    positions ``(rows_A, rows_D)``, both empty when either set is.
    """
    agreed = agreed.cpu()
    rows_a = agreed.nonzero().flatten()
    rows_d = (~agreed).nonzero().flatten()
    count = min(len(rows_a), len(rows_d))
    shuffled_a = rows_a[torch.randperm(len(rows_a), generator=generator)[:count]]
    shuffled_d = rows_d[torch.randperm(len(rows_d), generator=generator)[:count]]
    return shuffled_a, shuffled_d


def margin_ranking_loss(
    d_disagree: torch.Tensor, d_agree: torch.Tensor, margin: float, ranking: Ranking
) -> torch.Tensor:
    """Equation 5, the Out-of-Class Peer Study loss, averaged over the pairs.

    - ``"paper"``, as printed: ``max(0, -1(d_D, d_A) * (d_D - d_A) + xi)`` with
      ``1 = +1`` if ``d_D > d_A`` else ``-1``. This is ``max(0, xi - |d_D - d_A|)``
      (``xi + (d_D - d_A)`` on ties): it only pushes the two discrepancies apart, in
      whichever order they already are, so a pair with ``d_D`` just below ``d_A`` is
      pushed further the wrong way.
    - ``"directional"``: ``max(0, xi - (d_D - d_A))``, the ranking the text describes
      (raise the discrepancy of S_D above that of S_A by the margin xi).

    Needs at least one pair (the mean of no pairs is undefined).
    """
    gap = d_disagree - d_agree
    if ranking == "paper":
        gap = torch.where(gap > 0, gap, -gap)
    elif ranking != "directional":
        allowed = ", ".join(get_args(Ranking))
        raise ValueError(f"ranking: {ranking!r} is not allowed; allowed: {allowed}")
    return (margin - gap).clamp_min(0).mean()
