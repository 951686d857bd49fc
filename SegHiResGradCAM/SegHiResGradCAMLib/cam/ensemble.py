"""Fold ensembles (nnU-Net's cross-validation folds): one network whose logits are the mean
of its members', and its explanation.

Seen as one network, the ensemble's target layer is the members' layers side by side, and
dT/dA of member f is its own gradient divided by the number of members F. For methods that
are linear in the gradient (Seg-HiRes-Grad CAM, Seg-Grad CAM, Seg-Layer CAM, Seg-XGrad CAM)
the ensemble's signed map is therefore the mean of the members' signed maps, and T the mean
of their T; the heatmap is ReLU of that mean. Other methods get the same mean, as the
natural extension.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .passes import upsample_to


class FoldEnsemble(nn.Module):
    """The mean of the members' logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(image) for member in self.members]).mean(0)


def ensemble_members(network: nn.Module) -> list[nn.Module]:
    return list(network.members) if isinstance(network, FoldEnsemble) else [network]


def explain_members(network: nn.Module, explain_one, progress=None):
    """``explain_one(member, progress)`` -> CamResult for each member, combined as the
    ensemble's explanation (see the module's docstring); progress runs once from 0 to 1."""
    members = ensemble_members(network)
    if len(members) == 1:
        return explain_one(members[0], progress)
    cams = []
    for index, member in enumerate(members):

        def member_progress(fraction, message, index=index):
            if progress is not None:
                progress((index + fraction) / len(members), f"fold {index + 1}/{len(members)}: {message}")

        cams.append(explain_one(member, member_progress))
    raw = np.mean([cam.raw for cam in cams], axis=0)
    heatmap = upsample_to(torch.from_numpy(raw).clamp(min=0), tuple(cams[0].heatmap.shape)).numpy()
    return replace(cams[0], raw=raw, heatmap=heatmap, target_score=float(np.mean([cam.target_score for cam in cams])))
