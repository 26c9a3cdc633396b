"""ASHA over TPE (``asha_sampler: tpe``) through the chief's own oracle host: new
configurations come from TPE over the first rung's scores, so they gather where the
first rung scored well, while ASHA's promotions are as for random draws; a restored
host draws what the one it replaces would have."""

from __future__ import annotations

import pytest

from tunecluster.engine.oracle_host import OracleHost
from tunecluster.errors import SpecError
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json

HPS = {"dropout": {"float": [0.0, 0.9]}}
BEST_X = 0.7


def _spec(sampler: str = "tpe", **search: object):
    return parse_spec({"name": "tpe-asha", "data": {"dataset": "digits"},
                       "model": {"builtin": "mlp", "hyperparameters": HPS},
                       "train": {"epochs": 9},
                       "search": {"algorithm": "asha", "objective": "val_loss",
                                  "max_trials": 40, "seed": 11, "asha_sampler": sampler,
                                  "tpe_startup_trials": 8, **search}})


def _host(sampler: str = "tpe") -> OracleHost:
    spec = _spec(sampler)
    return OracleHost.create(spec, space_to_json(build_space(spec.model.hyperparameters)))


def _run(host: OracleHost, count: int) -> list[dict]:
    """``count`` trials, each ended at once with a loss that is least at BEST_X."""
    drawn = []
    for _ in range(count):
        status, trial, values = host.create_trial()
        assert status == "RUNNING"
        for epoch in range(values["tuner/initial_epoch"], values["tuner/epochs"]):
            loss = (values["dropout"] - BEST_X) ** 2 + 1 / (epoch + 1)
            host.update(trial, epoch, {"val_loss": loss})
        host.end(trial, completed=True)
        drawn.append(values)
    return drawn


def _new_draws(values: list[dict]) -> list[float]:
    return [v["dropout"] for v in values if v["tuner/round"] == 0]


def test_new_configurations_gather_where_the_first_rung_scored_well() -> None:
    tpe = _new_draws(_run(_host("tpe"), 36))
    plain = _new_draws(_run(_host("random"), 36))
    assert type(_host("tpe").oracle).__name__ == "HostedTpeAshaOracle"
    # the first 8 draws are random; after them TPE models the first rung
    late_tpe = [abs(x - BEST_X) for x in tpe[8:]]
    late_random = [abs(x - BEST_X) for x in plain[8:]]
    assert len(late_tpe) >= 10 and len(late_random) >= 10
    assert sum(late_tpe) / len(late_tpe) < 0.5 * sum(late_random) / len(late_random)


def test_promotions_follow_ashas_rule_with_tpe_draws() -> None:
    values = _run(_host("tpe"), 30)
    promoted = [v for v in values if v["tuner/round"] >= 1]
    assert promoted  # the top 1/3 of the first rung went on
    firsts = {v["dropout"] for v in values if v["tuner/round"] == 0}
    assert all(v["dropout"] in firsts for v in promoted)  # continuations of drawn configurations
    assert len(firsts) == len(_new_draws(values))  # no configuration drawn twice


def test_a_restored_host_draws_what_the_one_it_replaces_would_have() -> None:
    host = _host("tpe")
    _run(host, 14)
    again = OracleHost.create(host.spec, host.space, host.state_json(),
                              host.trials_json(host.oracle.trials))
    assert again.oracle.num_initial_points == 8
    first, second = host.create_trial(), again.create_trial()
    assert first[0] == second[0] == "RUNNING" and first[2] == second[2]


def test_the_sampler_applies_to_asha_only() -> None:
    with pytest.raises(SpecError, match="search.asha_sampler: applies with search.algorithm:"
                                        " asha, not random"):
        _spec(algorithm="random")
    with pytest.raises(SpecError, match="asha_sampler"):
        _spec(sampler="grid")
