"""cRT's second phase, class-balanced head retraining (Kang et al., "Decoupling representation and
classifier"; method ``crt``): after the configured fine-tune, everything is frozen, the head is
re-initialised and retrained with class-balanced sampling, on cached features when
``finetune.cache_features`` allows it. ``trainables.trainable.train_stage1`` switches to this phase
at epoch ``finetune.epochs + 1`` (and rebuilds it, without re-initialising, on resume).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainables.data import DataSplits
from trainables.loop import Classifier, Phase, encode, splits_with


def head_retraining_phase(prev: Phase, images: dict[str, Dataset], splits: DataSplits, ft,
                          device: torch.device, epochs: int, reinit_seed: int | None) -> Phase:
    """cRT's phase B: everything frozen, the head re-initialised (unless resuming) and retrained class-balanced."""
    model: Classifier = prev.model
    model.requires_grad_(False)
    head = model.head
    if reinit_seed is not None:
        torch.manual_seed(reinit_seed)
        for m in head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    head.requires_grad_(True)
    if ft.cache_features and not isinstance(model.encoder, nn.Identity):
        eval_data = {s: splits_with(splits, s, images["test" if s == "test" else "val"].transform)
                     for s in ("train", "val", "test")}
        feats = {s: encode(model.encoder, ds, ft.batch_size, device, ft.amp) for s, ds in eval_data.items()}
        data = {s: TensorDataset(feats[s], torch.as_tensor(getattr(splits, s).labels)) for s in feats}
        phase_model: nn.Module = Classifier(nn.Identity(), head)
    else:
        data, phase_model = prev.data, model
    # The methods contract: phase B trains with the method's own loss (plain CE for cRT).
    return Phase(phase_model, data, prev.loss_fn, epochs, balanced=True, first_epoch=prev.first_epoch + prev.epochs)
