import pytest
from pydantic import ValidationError

from core.optimizers import MULTI_OBJECTIVE, OPTIMIZERS
from core.spec import JobSpec

BASE = {"model_id": "m", "dataset_id": "d", "method": "magnitude", "optimizer": "nevergrad:NGOpt",
        "max_accuracy_drop": 0.005, "budget": {"trials": 10}, "seed": 1}


def test_valid_spec_keeps_values_and_defaults() -> None:
    spec = JobSpec.model_validate(BASE)
    assert spec.max_accuracy_drop == 0.005 and spec.budget.trials == 10 and spec.seed == 1
    assert spec.search.population == 8 and spec.search.calibrate


@pytest.mark.parametrize(("change", "message"), [
    ({"optimizer": "nevergrad:Nope"}, "unknown optimizer 'nevergrad:Nope'"),
    ({"method": "quantize"}, "unknown method 'quantize'"),
    ({"max_accuracy_drop": -0.1}, "max_accuracy_drop must be in [0, 1)"),
    ({"max_accuracy_drop": 1.0}, "max_accuracy_drop must be in [0, 1)"),
    ({"budget": {"trials": 0}}, "budget.trials must be at least 1"),
    ({"budget": {"trials": 10**9}}, "budget.trials must be at most"),
    ({"surprise": 1}, "Extra inputs are not permitted"),
])
def test_invalid_spec_names_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate({**BASE, **change})
    assert message in str(err.value)


def test_every_listed_optimizer_is_accepted() -> None:
    for name in OPTIMIZERS:
        # a Pareto optimizer serves the training methods only
        method = "l0" if name in MULTI_OBJECTIVE else "magnitude"
        spec = JobSpec.model_validate({**BASE, "method": method, "optimizer": name})
        assert spec.optimizer == name


def test_pareto_optimizers_and_parallel_trials_belong_to_training_methods() -> None:
    for extra, needle in (({"optimizer": "optuna:nsgaii"}, "Pareto front"),
                          ({"budget": {"trials": 4, "parallel": 2}}, "budget.parallel")):
        with pytest.raises(ValidationError, match=needle):
            JobSpec.model_validate({**BASE, "method": "magnitude", **extra})
        assert JobSpec.model_validate({**BASE, "method": "sgl", **extra}).method == "sgl"


def test_olmp_rounds_search_on_a_validation_subset_unless_the_spec_says() -> None:
    from core.methods.olmp import OLMP_SEARCH_SUBSET
    from core.spec import search_subset

    olmp = {**BASE, "method": "olmp", "optimizer": "ncs", "budget": {"trials": 300}}
    assert search_subset(JobSpec.model_validate(olmp)) == OLMP_SEARCH_SUBSET == 1000
    assert search_subset(JobSpec.model_validate({**olmp, "search": {"validation_subset": 400}})) == 400
    assert search_subset(JobSpec.model_validate(BASE)) is None  # magnitude: the whole split
