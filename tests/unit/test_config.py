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


def test_type_and_value_errors_in_one_pass():
    with pytest.raises(HFedMoEError) as exc:
        load_config(None, ["train.lr=abc", "data.partition=dirichlet0.5"])
    msg = str(exc.value)
    assert "2 problems" in msg and "train.lr: expected float, got 'abc'" in msg
    assert "data.partition: expected one of" in msg and "'dirichlet0.5'" in msg


@pytest.mark.parametrize(("override", "field"), [
    ("train.lr=inf", "train.lr"), ("method.beta=inf", "method.beta"), ("clients.memory_scale=inf", "clients.memory_scale"),
    ("federation.clients_per_round=inf", "federation.clients_per_round"), ("train.momentum=nan", "train.momentum"),
    ("seed=-1", "seed"), ("seed=12345678901234567890", "seed"), ("train.momentum=-1", "train.momentum"),
    ("model.num_experts=1000", "model.num_experts"), ("federation.rounds=1000000000000", "federation.rounds"),
    ("data.max_length=4096", "data.max_length"), ("federation.clients_per_round=2.5", "federation.clients_per_round"),
])
def test_ranges_name_the_field_once(override, field):
    with pytest.raises(HFedMoEError) as exc:
        load_config(None, [override])
    msg = str(exc.value)
    assert "1 problem)" in msg and f"{field}: expected" in msg


def test_tiny_hidden_must_fit_heads():
    with pytest.raises(HFedMoEError, match=r"model.tiny_hidden: expected a multiple of 2 or 3 .*got 35"):
        load_config(None, ['model.name="tiny-moe"', "model.tiny_hidden=35"])
    load_config(None, ['model.name="tiny-moe"', "model.tiny_hidden=34"])


def test_non_utf8_config_is_one_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"seed = 0\n# caf\xe9\n")
    with pytest.raises(HFedMoEError, match="--config: expected a UTF-8 TOML file"):
        load_config(path)
