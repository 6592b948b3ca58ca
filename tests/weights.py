"""The after-training invariant of every training test, as TRL's tests check it: snapshot the parameters,
train, then every parameter that trains has changed and every frozen one is bit for bit the same.

- `snapshot(model)` before and `assert_trained(model, before)` after, around any training loop;
- `with trains_only_the_trainable():` around code that trains through a `transformers.Trainer` (the course's
  entry points, the command line run in-process): every `Trainer.train()` inside is checked this way, and
  the block fails if none ran.
"""
import re
from contextlib import contextmanager

import torch


def snapshot(model) -> dict:
    """{name: (a copy of the parameter, whether it trains)} for every parameter of `model`."""
    return {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}


def assert_trained(model, before: dict, may_stay: str | None = None) -> dict:
    """Every parameter that required grad in `before` changed, every other one did not. `may_stay`: a regex
    of trainable parameter names allowed to keep their value (e.g. a tower no batch reaches). Returns
    {"changed": [...], "frozen": [...]} (names) for a test that wants to say more."""
    now = dict(model.named_parameters())
    assert now.keys() == before.keys(), ("training added or removed parameters",
                                        sorted(now.keys() ^ before.keys())[:5])
    changed, frozen, stuck, moved = [], [], [], []
    for name, (old, trains) in before.items():
        same = torch.equal(now[name].detach(), old)
        if trains:
            changed.append(name)
            if same and not (may_stay and re.search(may_stay, name)):
                stuck.append(name)
        else:
            frozen.append(name)
            if not same:
                moved.append(name)
    assert changed, "nothing in the model trains"
    assert not stuck, f"{len(stuck)} of {len(changed)} trainable parameters did not change: {stuck[:5]}"
    assert not moved, f"{len(moved)} frozen parameters changed: {moved[:5]}"
    return {"changed": changed, "frozen": frozen}


@contextmanager
def trains_only_the_trainable(may_stay: str | None = None):
    """Check every `transformers.Trainer.train()` run inside the block with `assert_trained`; yields the list
    of their reports (one per train() call)."""
    from transformers import Trainer

    real_train, reports = Trainer.train, []

    def train(self, *args, **kwargs):
        before = snapshot(self.model)
        out = real_train(self, *args, **kwargs)
        reports.append(assert_trained(self.model, before, may_stay))
        return out

    Trainer.train = train
    try:
        yield reports
    finally:
        Trainer.train = real_train
    assert reports, "no Trainer.train() ran inside the block"
