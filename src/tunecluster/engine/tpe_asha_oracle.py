"""ASHA over TPE (``search.algorithm: asha`` with ``asha_sampler: tpe``): a BOHB-like search.

ASHA (``asha_oracle.py``) decides which trials go on, and when; this decides which new
configurations are drawn. Where plain ASHA draws them at random, here Optuna's TPE
(``tpe_oracle.py``) proposes each one from the scores of the configurations at the
first rung: every configuration reaches it and is scored there at the same budget, so
they compare, and there are as many of them as draws (BOHB models the largest budget
with enough observations; the first rung is the one that always has them). Configurations
still training their first rung count as TPE's constant liar has them.

The sampler is a function of the oracle's trials, as TPE's study is: nothing of its own
is persisted, and a chief that restores the oracle draws what the first would have.
"""

from __future__ import annotations

from typing import Any

from tunecluster.engine.asha_oracle import AshaOracle, _rung
from tunecluster.engine.tpe_oracle import KeepsStartupPoints, TPEOracle
from tunecluster.states import OracleStatus


class TpeAshaOracle(KeepsStartupPoints, AshaOracle):
    """``AshaOracle`` whose new configurations come from TPE over the first rung.
    ``num_initial_points``: configurations drawn at random before TPE models them."""

    def __init__(self, max_epochs: int, min_epochs: int = 1, factor: int = 3,
                 max_configs: int | None = None, num_initial_points: int = 10,
                 **kwargs: Any) -> None:
        super().__init__(max_epochs, min_epochs, factor, max_configs, **kwargs)
        self.num_initial_points = num_initial_points

    def _random_values(self) -> dict[str, Any] | None:
        """The next configuration, as TPE proposes it from the first rung (None: the space
        holds no configuration not tried)."""
        sampler = TPEOracle(objective=self.objective, max_trials=None,
                            num_initial_points=self.num_initial_points, seed=self.seed,
                            hyperparameters=self.hyperparameters)
        firsts = {tid: trial for tid, trial in self.trials.items() if _rung(trial) == 0}
        sampler.trials = firsts
        sampler.start_order = [tid for tid in self.start_order if tid in firsts]
        # a configuration is new as ASHA judges it (its place in the rungs left out)
        sampler._tried_so_far = self._tried_so_far
        sampler._compute_values_hash = self._compute_values_hash  # type: ignore[method-assign]
        sampler._seed_state = self._seed_state  # its random draws go on from this oracle's
        answer = sampler.populate_space("next")
        self._seed_state = sampler._seed_state
        if answer["status"] != OracleStatus.RUNNING:
            return None
        return dict(answer["values"])
