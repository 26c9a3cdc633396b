"""``tuner.oracle`` of the drop-in: the KerasTuner oracle object the tuner was built on,
holding the chief's oracle state.

The search's oracle runs on the chief. ``tuner.oracle`` is the very object the tuner
was given (``Tuner(oracle=...)``, or the one ``RandomSearch`` and the others build), of
its own KerasTuner class, with ``ClusterOracle`` mixed in: before a search it is that
oracle as KerasTuner has it (``create_trial`` and the rest work on it, locally); after
a search, ``reload()`` and reattaching it holds a copy of the chief's oracle state
(``sync``): its trials (KerasTuner's ``Trial`` objects, with every metric the chief
saw), its space grown by the trials, and its algorithm's own state (Hyperband's
brackets and iteration, ...), as KerasTuner's ``reload`` reads its oracle's files. So
``trials``, ``get_trial``, ``get_best_trials``, ``get_space`` and the class's own
attributes answer as KerasTuner's do. The chief's state is data only (JSON and
KerasTuner's configs); a record that does not parse leaves the copy as it was.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from keras_tuner import HyperParameters

if TYPE_CHECKING:
    from tunecluster.api.keras_tuner import Tuner

log = logging.getLogger("tunecluster.keras_tuner")


class ClusterOracle:
    """Mixed into the tuner's KerasTuner oracle class (``cluster_oracle``)."""

    tuner: Tuner

    @property
    def trials(self) -> dict[str, Any]:
        """KerasTuner's trials by id; those of the chief's oracle once a search ran (read
        on first use after the tuner reattached to its project's job)."""
        if self.__dict__.get("_tc_stale"):
            self.sync()
        return self.__dict__.setdefault("_tc_trials", {})

    @trials.setter
    def trials(self, value: dict[str, Any]) -> None:
        self.__dict__["_tc_trials"] = value

    def mark_stale(self) -> None:
        """The tuner reattached to a job: read its oracle state on first use."""
        self.__dict__["_tc_stale"] = True

    @property
    def hyperparameters(self) -> HyperParameters:
        """The search space: the one found at submit (``build_model`` run once here, as
        KerasTuner does), grown by the entries trials declared once synced. One object
        per space (KerasTuner's own code grows it in place, ``update_space``)."""
        given = self.__dict__.get("_tc_given")  # the tuner's hyperparameters= object
        if given is not None and not self.tune_new_entries:
            return given  # KerasTuner adds nothing to a space given this way
        space = self._space_config()
        cached = self.__dict__.get("_tc_space")
        if cached is None or cached[0] is not space:
            found = HyperParameters.from_config(space or {"space": []})
            if given is not None:  # KerasTuner grows the object it was given, in place
                given.merge([p for p in found.space if not given._exists(p.name, p.conditions)])
                found = given
            cached = (space, found)
            self.__dict__["_tc_space"] = cached
        return cached[1]

    @hyperparameters.setter
    def hyperparameters(self, value: HyperParameters) -> None:
        # KerasTuner's own code sets it (set_state); the tuner keeps the space
        self.tuner._space = value.get_config()

    def get_space(self) -> HyperParameters:
        return self.hyperparameters.copy()

    def _space_config(self) -> dict[str, Any] | None:
        if self.tuner._space is None:
            if self.tuner.job is not None:
                self.tuner._space = self.tuner.job.record().space
            else:
                self.tuner._discover_space()
        return self.tuner._space

    def sync(self) -> bool:
        """Take the chief's persisted oracle state. False (the copy left as it was) when
        there is no job, no state yet, or a record that does not parse."""
        import copy

        import redis

        from tunecluster.engine.oracle_state import restore_state
        from tunecluster.errors import TuneclusterError

        self.__dict__["_tc_stale"] = False
        job = self.tuner.job
        if job is None:
            return False
        try:
            state_json, trial_states = job.client.store.jobs.oracle_state(job.id)
        except (TuneclusterError, redis.RedisError, OSError):
            return False  # an embedded cluster is gone after its search: what was read stays
        if not state_json:
            return False
        space = self.tuner._space
        replica = copy.copy(self)  # restored aside: a failure leaves this one whole
        try:
            restore_state(replica, state_json, trial_states)
        except Exception as exc:  # noqa: BLE001 - data from Redis: any shape at all
            self.tuner._space = space
            log.warning("search %s: its oracle state does not parse (%s); tuner.oracle"
                        " keeps what it had", job.id, str(exc).splitlines()[0][:200]
                        if str(exc) else type(exc).__name__)
            return False
        self.__dict__.update(replica.__dict__)
        self._display.oracle = self
        return True

    def learn_space(self) -> None:
        """The search's state as the chief's oracle holds it now (see ``sync``)."""
        self.sync()


def cluster_oracle(oracle: Any, tuner: Tuner) -> Any:
    """``oracle`` itself, now of its class with ``ClusterOracle`` mixed in; its objective
    the tuner's (the cluster's default objective where it gave none)."""
    cls = type(oracle)
    if not isinstance(oracle, ClusterOracle):
        mixed = type(cls.__name__, (ClusterOracle, cls), {"__module__": cls.__module__,
                                                         "__qualname__": cls.__qualname__})
        given = oracle.__dict__.pop("hyperparameters", None)
        trials = oracle.__dict__.pop("trials", {})
        oracle.__class__ = mixed
        oracle.trials = trials
        if given is not None and given.space:  # KerasTuner's oracle keeps this object
            oracle.__dict__["_tc_given"] = given
    oracle.tuner = tuner
    oracle.objective = tuner.objective
    # where KerasTuner's oracle keeps its files (what it saves of trials made here)
    oracle._set_project_dir(tuner.directory, tuner.project_name)
    return oracle
