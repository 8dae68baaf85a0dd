"""The problem axis of one analysis batch, described once: which problem is which.

A batch of B images becomes clustering problems (one token set each: PCA, then KMeans with S
seeds). Per image there are M slots (`build_slots`):

    slot 0          the encoder tokens F: the structural clustering L_enc
    slots 1..M-1    one DATR token set per (tau, alpha, scope), tau-major, then alpha, then scope
                    (`global`, then one scope per prompt)

and, with the controls on, the null control of every DATR slot. The batch is analysed in
parts, one per tau (`ProblemLayout.parts`): part t holds the DATR slots of tau t and their
nulls -- and part 0 also the encoder slot -- so that only one tau's attended vectors and
projections are held at a time. A part's problems are image-major (problem i * per_image + r
of image i), in the order of `Part.factor_slots`: the encoder slot first when the part holds it,
then the part's DATR slots, then their nulls. The seed axis lives inside each problem's KMeans
(KMeansResult.restart_labels (P, S, N): member s is restart s of the seed's k-means++ stream).

Nothing else in the engine derives a problem's meaning from its index: batch, controls, the
ensemble measures, rows and figures take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.core.choices import ENCODER, GLOBAL, ScopeKind
from engine.core.config import AnalysisConfig

__all__ = ["ENCODER", "GLOBAL", "Part", "PartIndex", "ProblemLayout", "ScopeKind", "Slot", "build_slots", "scope_names"]


@dataclass(frozen=True)
class Slot:
    """One entry of the per-image slot axis (M of them; slot 0 is the encoder)."""

    scope: str
    kind: str  # a ScopeKind value
    class_id: int | None
    tau: float | None
    alpha: float | None
    tau_index: int | None
    scope_index: int | None  # index into scope_names: 0 = global, 1 + p = prompt p

    @property
    def is_encoder(self) -> bool:
        return self.kind == ScopeKind.encoder


def scope_names(prompts: tuple[str, ...]) -> tuple[str, ...]:
    """The DATR scopes in their order on the slot axis: global, then each prompt."""
    return (GLOBAL, *prompts)


def prompt_scope_index(prompt_index: int) -> int:
    """Where prompt p's scope sits among scope_names (after `global`)."""
    return 1 + prompt_index


def build_slots(cfg: AnalysisConfig, prompts: tuple[str, ...], class_ids: tuple[int, ...]) -> list[Slot]:
    slots = [Slot(ENCODER, ScopeKind.encoder.value, None, None, None, None, None)]
    scopes = [(GLOBAL, ScopeKind.global_.value, None)] + [(p, ScopeKind.class_.value, c)
                                                          for p, c in zip(prompts, class_ids, strict=True)]
    for ti, tau in enumerate(cfg.taus):
        for alpha in cfg.alphas:
            for si, (name, kind, cid) in enumerate(scopes):
                slots.append(Slot(name, kind, cid, tau, alpha, ti, si))
    return slots


@dataclass(frozen=True)
class Part:
    """The problems of one tau: its DATR slots (and their nulls), plus the encoder slot in part 0.

    slots: indices into the M slots of the DATR slots of this tau, in slot order (J of them);
    groups: the (B, G) attended-vector groups' meaning -- group g < S is scope g at this tau,
    group S + g its null copy; slot_group / slot_alpha: per factor slot after the encoder slot
    (J real, then J null), the group and alpha of kernels.datr.DatrFactors.
    """

    tau_index: int
    tau: float
    slots: tuple[int, ...]
    has_encoder: bool
    controls: bool
    slot_group: tuple[int, ...]
    slot_alpha: tuple[float, ...]

    @property
    def datr_count(self) -> int:  # J
        return len(self.slots)

    @property
    def per_image(self) -> int:
        """Problems per image in this part: [encoder] + J real + (J null)."""
        return int(self.has_encoder) + self.datr_count * (2 if self.controls else 1)

    @property
    def factor_slots(self) -> int:
        """Slots of the part's DatrFactors: slot 0 (F) always, then the J real and the J null slots."""
        return 1 + len(self.slot_group)

    def kept_factor_slots(self) -> slice:
        """The factor slots that are problems of this part (slot 0 only when the part holds the encoder)."""
        return slice(0 if self.has_encoder else 1, self.factor_slots)

    def scored_slots(self, device: torch.device) -> torch.Tensor:
        """The slots (indices into the M slots) of the part's scored problems -- the encoder slot in part 0,
        then the DATR slots, which are consecutive -- built on the device from their range alone."""
        datr = torch.arange(self.slots[0], self.slots[-1] + 1, device=device)
        assert datr.numel() == len(self.slots), "a part's DATR slots are consecutive"
        return torch.cat([torch.zeros(1, dtype=datr.dtype, device=device), datr]) if self.has_encoder else datr

    def index(self, images: int, device: torch.device) -> PartIndex:
        """Index tensors of the part's problem axis, built once per part."""
        per, j = self.per_image, self.datr_count
        base = torch.arange(images, device=device)[:, None] * per  # (B, 1)
        first = int(self.has_encoder)
        real = base + first + torch.arange(j, device=device)  # (B, J)
        null = base + first + j + torch.arange(j, device=device) if self.controls else None
        encoder = base[:, 0] if self.has_encoder else None
        image_of = torch.arange(images * per, device=device) // per
        datr = real if null is None else torch.cat([real, null], 1)
        return PartIndex(real=real, null=null, encoder=encoder, image_of=image_of, datr=datr.reshape(-1))


@dataclass(frozen=True)
class PartIndex:
    """Problem ids of one part (all on the batch's device).

    real (B, J) and null (B, J) or None: the DATR slots' problems and their null controls;
    encoder (B,) or None (parts after the first); image_of (P,) each problem's image;
    datr (B * J [* 2],) every problem that is not an encoder problem, in problem order.
    """

    real: torch.Tensor
    null: torch.Tensor | None
    encoder: torch.Tensor | None
    image_of: torch.Tensor
    datr: torch.Tensor


@dataclass(frozen=True)
class ProblemLayout:
    """The whole problem axis of a batch: B images x M slots x {real, null} x S seeds."""

    slots: tuple[Slot, ...]
    scopes: tuple[str, ...]  # scope_names(prompts): S scopes
    taus: tuple[float, ...]
    alphas: tuple[float, ...]
    controls: bool
    seeds: int

    @classmethod
    def build(cls, cfg: AnalysisConfig, prompts: tuple[str, ...], class_ids: tuple[int, ...]) -> ProblemLayout:
        return cls(slots=tuple(build_slots(cfg, prompts, class_ids)), scopes=scope_names(prompts), taus=tuple(cfg.taus),
                   alphas=tuple(cfg.alphas), controls=cfg.controls, seeds=cfg.seeds)

    @property
    def m(self) -> int:  # M, the encoder slot included
        return len(self.slots)

    def parts(self) -> list[Part]:
        """One part per tau, in tau order; part 0 also holds the encoder slot."""
        s = len(self.scopes)
        out = []
        for ti, tau in enumerate(self.taus):
            slots = tuple(j for j, slot in enumerate(self.slots) if slot.tau_index == ti)
            group = tuple(self.slots[j].scope_index for j in slots)
            alpha = tuple(self.slots[j].alpha for j in slots)
            if self.controls:  # null slot r mirrors DATR slot r, on the permuted copy of its group
                group, alpha = group + tuple(g + s for g in group), alpha + alpha
            out.append(Part(tau_index=ti, tau=tau, slots=slots, has_encoder=ti == 0, controls=self.controls,
                            slot_group=group, slot_alpha=alpha))
        return out

    def slot_index(self, scope: str, tau: float, alpha: float) -> int | None:
        """The slot of a DATR scope at (tau, alpha), or None."""
        return next((j for j, s in enumerate(self.slots)
                     if s.scope == scope and not s.is_encoder and s.tau == tau and s.alpha == alpha), None)
