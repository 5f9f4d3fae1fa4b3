"""BCO's running mean of the implicit rewards, kept by the algorithms whose loss reads it (DPO's ``bco_pair``,
KTO's ``bco``): part of the loss, so part of the state an exact resume restores."""
from __future__ import annotations

from ...kernels.losses import RunningMean


class RunningRewardShift:
    """Mixin for an ``Algorithm``: ``bco_running_mean`` (None when the loss has no shift) is the live mean in
    training; evaluation reads a throwaway copy, so held-out rewards never move the training shift."""

    bco_running_mean: RunningMean | None = None

    def bco_mean_for_this_call(self) -> RunningMean | None:
        """The running mean to hand the loss: the live one in training, a copy of it in evaluation."""
        if self.bco_running_mean is None or self.model.training:
            return self.bco_running_mean
        copy = RunningMean()
        copy.load_state_dict(self.bco_running_mean.state_dict())
        return copy

    def state(self) -> dict:
        """The running mean of the rewards (none without a shift)."""
        return {"bco_running_mean": self.bco_running_mean.state_dict()} if self.bco_running_mean else {}

    def restore(self, state: dict) -> None:
        if self.bco_running_mean is not None and "bco_running_mean" in state:
            self.bco_running_mean.load_state_dict(state["bco_running_mean"])
