import pytest

from hfedmoe.config import apply_overrides, config_from_dict, load_config, validate
from hfedmoe.errors import HFedMoEError


def test_defaults_validate():
    cfg = config_from_dict({})
    validate(cfg)
    assert cfg.method.name == "hfedmoe"


def test_overrides_parse_toml_literals():
    cfg = load_config(None, ["federation.rounds=3", "method.beta=0.2", "clients.fixed_budgets=[1, 2]",
                             "data.dataset=trec", "seed=7"])
    assert cfg.federation.rounds == 3 and cfg.method.beta == 0.2
    assert cfg.clients.fixed_budgets == [1, 2] and cfg.data.dataset == "trec" and cfg.seed == 7


def test_every_problem_reported_at_once():
    with pytest.raises(HFedMoEError) as exc:
        load_config(None, ["method.lam=1.5", "method.beta=-1", "model.top_k=9", "data.partition=zipf"])
    msg = str(exc.value)
    assert "4 problems" in msg
    for field, actual in [("method.lam", "1.5"), ("method.beta", "-1"), ("model.top_k", "9"), ("data.partition", "zipf")]:
        assert field in msg and actual in msg


def test_unknown_and_mistyped_fields():
    with pytest.raises(HFedMoEError, match=r"method\.betta: unknown field"):
        config_from_dict({"method": {"betta": 0.1}})
    with pytest.raises(HFedMoEError, match=r"federation\.rounds: expected int, got 'three'"):
        config_from_dict({"federation": {"rounds": "three"}})


def test_bad_override_syntax():
    with pytest.raises(HFedMoEError, match="key=value"):
        apply_overrides({}, ["rounds"])
    with pytest.raises(HFedMoEError, match="section.field"):
        apply_overrides({}, ["a.b.c=1"])


def test_unknown_profile_named():
    with pytest.raises(HFedMoEError, match="clients.profiles.*'toaster'"):
        load_config(None, ['clients.profiles=["toaster"]'])


def test_missing_config_file(tmp_path):
    with pytest.raises(HFedMoEError, match="--config: file not found"):
        load_config(tmp_path / "nope.toml")
