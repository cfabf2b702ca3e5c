"""Search spaces (playbook 4.4): specs, unit-cube mappings, conditional branches, JSON."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import qmc

from playbook import tune
from playbook.tune import Categorical, Discrete, Fixed, Halton, Int, Real, SearchSpace
from playbook.tune.space import spec_from_dict

BELOW_ONE = float(np.nextafter(1.0, 0.0))


def optimizer_space() -> SearchSpace:
    return SearchSpace({
        "optimizer": Categorical(["adam", "nesterov"], role="scientific", branches={
            "adam": {
                "lr": Real(1e-4, 1e-2, scale="log"),
                "beta1": Real(0.8, 0.999, scale="reverse_log"),
                "eps": Real(1e-10, 1e-6, scale="log"),
            },
            "nesterov": {
                "lr": Real(1e-3, 1.0, scale="log"),
                "momentum": Real(0.8, 0.99, scale="reverse_log"),
            },
        }),
        "weight_decay": Real(1e-6, 1e-2, scale="log"),
        "batch_size": Discrete([256, 64, 128]),
        "layers": Int(2, 8),
        "dropout": Fixed(0.1),
    })


# ---------------------------------------------------------------------------------------------
# mappings
# ---------------------------------------------------------------------------------------------


def test_real_linear_edges():
    r = Real(-2.0, 3.0)
    assert r.from_unit(0.0) == -2.0
    assert r.from_unit(0.5) == 0.5
    assert 3.0 - 1e-12 < r.from_unit(BELOW_ONE) <= 3.0
    assert not r.is_log


def test_real_log_edges_and_midpoint():
    r = Real(1e-4, 1e-1, scale="log")
    assert r.from_unit(0.0) == pytest.approx(1e-4, rel=1e-12)
    assert r.from_unit(BELOW_ONE) == pytest.approx(1e-1, rel=1e-12)
    assert r.from_unit(0.5) == pytest.approx(math.sqrt(1e-4 * 1e-1), rel=1e-12)
    assert r.from_unit(1 / 3) == pytest.approx(1e-3, rel=1e-12)
    assert r.is_log


def test_real_reverse_log():
    r = Real(0.9, 0.9999, scale="reverse_log")
    assert r.from_unit(0.0) == pytest.approx(0.9, rel=1e-12)
    assert r.from_unit(BELOW_ONE) == pytest.approx(0.9999, rel=1e-12)
    # 1 - x is log-uniform: the midpoint is 1 - sqrt(0.1 * 0.0001) = 0.99683...
    assert r.from_unit(0.5) == pytest.approx(1 - math.sqrt(0.1 * 1e-4), rel=1e-12)
    assert r.from_unit(0.5) > 0.99  # most of the mass near 1, unlike a linear scale
    assert r.is_log


@pytest.mark.parametrize(
    "spec",
    [Real(-1.0, 1.0), Real(1e-5, 10.0, scale="log"), Real(0.5, 0.999, scale="reverse_log")],
    ids=["linear", "log", "reverse_log"],
)
def test_real_to_unit_inverts_from_unit(spec):
    for u in np.linspace(0, 1, 11):
        assert spec.to_unit(spec.from_unit(u)) == pytest.approx(u, abs=1e-9)
    assert spec.to_unit(spec.lo) == pytest.approx(0.0, abs=1e-12)
    assert spec.to_unit(spec.hi) == pytest.approx(1.0, abs=1e-12)


def test_int_linear_has_no_end_bias():
    spec = Int(1, 5)
    us = (np.arange(10000) + 0.5) / 10000
    counts = Counter(spec.from_unit(u) for u in us)
    assert counts == {1: 2000, 2: 2000, 3: 2000, 4: 2000, 5: 2000}
    assert spec.from_unit(0.0) == 1
    assert spec.from_unit(BELOW_ONE) == 5
    assert spec.from_unit(1.0) == 5  # clipped


def test_int_log_shares_follow_log_ratio():
    spec = Int(1, 7, scale="log")
    us = (np.arange(80000) + 0.5) / 80000
    counts = Counter(spec.from_unit(u) for u in us)
    assert sorted(counts) == list(range(1, 8))
    for m in range(1, 8):
        expected = math.log((m + 1) / m) / math.log(8)
        assert counts[m] / 80000 == pytest.approx(expected, abs=1e-4)
    assert spec.is_log


@pytest.mark.parametrize("spec", [Int(-3, 4), Int(1, 1000, scale="log")], ids=["linear", "log"])
def test_int_to_unit_round_trip(spec):
    for v in range(spec.lo, spec.hi + 1, max(1, (spec.hi - spec.lo) // 50)):
        u = spec.to_unit(v)
        assert 0 < u < 1
        assert spec.from_unit(u) == v


def test_choices_floor_u_k_and_to_unit():
    c = Categorical(["a", "b", "c"])
    assert [c.from_unit(u) for u in (0.0, 0.33, 1 / 3, 0.66, 2 / 3, BELOW_ONE)] == ["a", "a", "b", "b", "c", "c"]
    assert [c.to_unit(v) for v in "abc"] == [pytest.approx(1 / 6), pytest.approx(0.5), pytest.approx(5 / 6)]
    d = Discrete([128, 32, 64])
    assert d.values == (32, 64, 128)  # ordered numbers
    us = (np.arange(3000) + 0.5) / 3000
    assert Counter(d.from_unit(u) for u in us) == {32: 1000, 64: 1000, 128: 1000}
    assert d.to_unit(64) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'z'"):
        c.to_unit("z")


def test_fixed():
    f = Fixed({"a": [1, 2]})
    assert f.from_unit(0.3) == {"a": [1, 2]}
    assert f.role == "fixed" and not f.varied
    assert Fixed(3, role="scientific").role == "scientific"


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------


def test_hyperparameters_keys_roles_dims():
    space = optimizer_space()
    hps = space.hyperparameters()
    assert [h.key for h in hps] == [
        "optimizer",
        "optimizer=adam/lr",
        "optimizer=adam/beta1",
        "optimizer=adam/eps",
        "optimizer=nesterov/lr",
        "optimizer=nesterov/momentum",
        "weight_decay",
        "batch_size",
        "layers",
        "dropout",
    ]
    assert [h.name for h in hps][:5] == ["optimizer", "lr", "beta1", "eps", "lr"]
    assert space["optimizer=adam/lr"].condition == ("optimizer", "adam")
    assert space["weight_decay"].condition is None
    assert space["optimizer"].role == "scientific"
    assert space["dropout"].role == "fixed"
    assert [h.varied for h in hps] == [True] * 9 + [False]
    # Every varied hyperparameter, conditional ones included, owns one Halton dimension.
    assert space.num_dims == 9
    assert [h.dim for h in hps] == list(range(9)) + [None]
    assert space["optimizer=adam/lr"].spec is not space["optimizer=nesterov/lr"].spec
    assert [h.key for h in space.scientific()] == ["optimizer"]


def test_active():
    space = optimizer_space()
    adam_lr = space["optimizer=adam/lr"]
    assert adam_lr.active({"optimizer": "adam"})
    assert not adam_lr.active({"optimizer": "nesterov"})
    assert not adam_lr.active({})
    assert space["weight_decay"].active({})


def test_point_to_params_flat_names_active_only():
    space = optimizer_space()
    u = np.full(space.num_dims, 0.0)
    p = space.point_to_params(u)
    assert p == {
        "optimizer": "adam",
        "lr": pytest.approx(1e-4),
        "beta1": pytest.approx(0.8),
        "eps": pytest.approx(1e-10),
        "weight_decay": pytest.approx(1e-6),
        "batch_size": 64,  # smallest of the sorted Discrete values
        "layers": 2,
        "dropout": 0.1,
    }
    u[0] = 0.75
    p = space.point_to_params(u)
    assert p["optimizer"] == "nesterov" and p["lr"] == pytest.approx(1e-3)
    assert set(p) == {"optimizer", "lr", "momentum", "weight_decay", "batch_size", "layers", "dropout"}
    with pytest.raises(ValueError, match="3 coordinates"):
        space.point_to_params([0.1, 0.2, 0.3])


def test_sample_is_halton_point():
    space = optimizer_space()
    pts = Halton(space.num_dims, seed=5).random(20)
    for i in (0, 7, 19):
        assert space.sample(i, seed=5) == space.point_to_params(pts[i])
    assert space.samples(20, seed=5) == [space.point_to_params(p) for p in pts]
    assert space.samples([19, 3], seed=5) == [space.sample(19, 5), space.sample(3, 5)]
    assert isinstance(space.sample(0, 5)["layers"], int)
    assert isinstance(space.sample(0, 5)["lr"], float)


def test_conditional_branches_each_covered_uniformly():
    space = SearchSpace({
        "opt": Categorical(["adam", "sgd", "nesterov"], role="scientific", branches={
            "adam": {"lr": Real(1e-4, 1e-1, scale="log")},
            "sgd": {"lr": Real(1e-3, 1.0, scale="log")},
            "nesterov": {"lr": Real(1e-3, 1.0, scale="log"), "momentum": Real(0.0, 0.99)},
        }),
        "wd": Real(0.0, 1.0),
    })
    n = 300
    params = space.samples(n, seed=3)
    counts = Counter(p["opt"] for p in params)
    for v in ("adam", "sgd", "nesterov"):
        assert abs(counts[v] - n / 3) <= 3, counts
    rng = np.random.default_rng(0)
    for value in ("adam", "sgd", "nesterov"):
        spec = space[f"opt={value}/lr"].spec
        u = np.array([spec.to_unit(p["lr"]) for p in params if p["opt"] == value])
        wd = np.array([p["wd"] for p in params if p["opt"] == value])
        # The branch's own lr is well spread: its 2-D (lr, wd) discrepancy beats uniform random
        # samples of the same size by a wide margin.
        ours = qmc.discrepancy(np.column_stack([u, wd]), method="CD")
        rand = np.mean([qmc.discrepancy(rng.random((len(u), 2)), method="CD") for _ in range(20)])
        assert ours < rand / 3, (value, ours, rand)
        # and covers every tenth of the range
        assert np.all(np.bincount(np.floor(u * 10).astype(int), minlength=10) >= len(u) // 10 - 2)


def test_nested_branches():
    space = SearchSpace({
        "opt": Categorical(["adam", "sgd"], branches={
            "sgd": {"sched": Categorical(["cos", "step"], branches={"step": {"gamma": Real(0.1, 0.9)}})},
        }),
    })
    assert [h.key for h in space.hyperparameters()] == ["opt", "opt=sgd/sched", "opt=sgd/sched=step/gamma"]
    gamma = space["opt=sgd/sched=step/gamma"]
    assert gamma.condition == ("sched", "step")
    assert gamma.path == (("opt", "sgd"), ("sched", "step"))
    assert gamma.active({"opt": "sgd", "sched": "step"})
    assert not gamma.active({"opt": "adam", "sched": "step"})
    for p in space.samples(64, seed=0):
        assert ("gamma" in p) == (p["opt"] == "sgd" and p["sched"] == "step")
        assert ("sched" in p) == (p["opt"] == "sgd")
    assert SearchSpace.from_json(space.to_json()) == space


def test_json_round_trip():
    space = optimizer_space()
    d = json.loads(json.dumps(space.to_dict()))
    back = SearchSpace.from_dict(d)
    assert back == space
    assert [h.key for h in back.hyperparameters()] == [h.key for h in space.hyperparameters()]
    assert back.samples(10, seed=9) == space.samples(10, seed=9)
    assert back.to_dict() == space.to_dict()
    # non-string categorical values keep their types through JSON
    odd = SearchSpace({"c": Categorical([1, True, None, 2.5, "x"], branches={1: {"a": Real(0, 1)}})})
    back = SearchSpace.from_json(odd.to_json())
    assert back["c"].spec.values == (1, True, None, 2.5, "x")
    assert [type(v) for v in back["c"].spec.values] == [int, bool, type(None), float, str]
    assert [h.key for h in back.hyperparameters()] == ["c", "c=1/a"]


def test_spec_repr_and_equality():
    assert Real(0.0, 1.0) == Real(0.0, 1.0)
    assert Real(0.0, 1.0) != Real(0.0, 1.0, scale="linear", role="scientific")
    assert "scale='log'" in repr(Real(1e-3, 1.0, scale="log"))
    assert spec_from_dict(Int(1, 9, scale="log").to_dict()) == Int(1, 9, scale="log")


def test_fix_splices_branch():
    space = optimizer_space()
    fixed = space.fix(optimizer="nesterov")
    keys = [h.key for h in fixed.hyperparameters()]
    assert keys == ["optimizer", "lr", "momentum", "weight_decay", "batch_size", "layers", "dropout"]
    assert fixed["optimizer"].spec == Fixed("nesterov", role="scientific")
    assert fixed["optimizer"].role == "scientific" and not fixed["optimizer"].varied
    assert fixed["lr"].spec == Real(1e-3, 1.0, scale="log")
    assert fixed.num_dims == 5
    assert all(p["optimizer"] == "nesterov" for p in fixed.samples(8, seed=0))
    with pytest.raises(ValueError, match="'rmsprop'"):
        space.fix(optimizer="rmsprop")
    with pytest.raises(ValueError, match="'lr'"):
        space.fix(lr=0.1)  # conditional, not top level


def test_public_names():
    for name in ["SearchSpace", "Real", "Int", "Discrete", "Categorical", "Fixed", "Halton", "Study", "Trial",
                 "TrialRecord", "list_studies", "studies_per_scientific_value", "joint_study"]:
        assert hasattr(tune, name), name


# ---------------------------------------------------------------------------------------------
# validation: every bad spec raises ValueError naming the bad value
# ---------------------------------------------------------------------------------------------

BAD_SPECS = [
    (lambda: Real(1.0, 1.0), r"lo=1\.0 >= hi=1\.0"),
    (lambda: Real(2.0, 1.0), r"lo=2\.0 >= hi=1\.0"),
    (lambda: Real(0.0, 1.0, scale="log"), r"lo=0\.0"),
    (lambda: Real(-1.0, 1.0, scale="log"), r"lo=-1\.0"),
    (lambda: Real(0.5, 1.0, scale="reverse_log"), r"hi=1\.0"),
    (lambda: Real(0.0, 1.0, scale="cubic"), r"'cubic'.*'linear', 'log', 'reverse_log'"),
    (lambda: Real(float("nan"), 1.0), r"lo=nan"),
    (lambda: Real(0.0, float("inf")), r"hi=inf"),
    (lambda: Real("0", 1.0), r"lo='0'"),
    (lambda: Real(0.0, 1.0, role="boss"), r"'boss'.*nuisance"),
    (lambda: Real(0.0, 1.0, role="fixed"), r"'fixed'.*Fixed"),
    (lambda: Int(3, 3), r"lo=3 >= hi=3"),
    (lambda: Int(1.5, 3), r"lo=1\.5"),
    (lambda: Int(0, 8, scale="log"), r"lo=0"),
    (lambda: Int(1, 8, scale="reverse_log"), r"'reverse_log'"),
    (lambda: Discrete([]), r"empty"),
    (lambda: Discrete([1, 2, 2]), r"Duplicate value 2"),
    (lambda: Discrete(["a", 1]), r"'a'"),
    (lambda: Discrete("abc"), r"'abc'"),
    (lambda: Categorical([]), r"empty"),
    (lambda: Categorical(["adam", "sgd", "adam"]), r"Duplicate value 'adam'"),
    (lambda: Categorical([[1, 2]]), r"\[1, 2\]"),
    (lambda: Categorical(["a"], role="hmm"), r"'hmm'"),
    (lambda: Categorical(["adam"], branches={"sgd": {"lr": Real(0.1, 1.0)}}), r"'sgd'.*\['adam'\]"),
    (lambda: Categorical(["adam"], branches={"adam": {"lr": 0.1}}), r"'lr'"),
    (lambda: Categorical(["adam"], branches={"adam": {"a/b": Real(0.1, 1.0)}}), r"'a/b'"),
    (lambda: Fixed(object()), r"Fixed value <object"),
    (lambda: Fixed(float("nan")), r"nan"),
    (lambda: Fixed(1, role="nuisance"), r"'nuisance'"),
    (lambda: SearchSpace({"lr": 0.1}), r"'lr'"),
    (lambda: SearchSpace({"": Real(0.0, 1.0)}), r"''"),
    (lambda: SearchSpace([("lr", Real(0.0, 1.0))]), r"dict"),
    (
        lambda: SearchSpace({"lr": Real(0.1, 1.0), "opt": Categorical(["a"], branches={"a": {"lr": Real(0.1, 1.0)}})}),
        r"'lr'.*'opt=a/lr'",
    ),
    (
        lambda: SearchSpace({
            "o1": Categorical(["a"], branches={"a": {"x": Real(0.1, 1.0)}}),
            "o2": Categorical(["b"], branches={"b": {"x": Real(0.1, 1.0)}}),
        }),
        r"'x'.*'o1=a/x'.*'o2=b/x'",
    ),
    (lambda: SearchSpace.from_dict({"params": [{"name": "x", "type": "bogus"}]}), r"'bogus'"),
    (lambda: SearchSpace.from_dict({"params": [{"type": "real", "lo": 0, "hi": 1}]}), r"'name'"),
    (lambda: SearchSpace.from_dict({"nope": []}), r"'params'"),
    (lambda: SearchSpace.from_dict({"version": 99, "params": []}), r"99"),
    (
        lambda: SearchSpace.from_dict({"params": [
            {"name": "opt", "type": "categorical", "values": ["a"], "branches": [["z", []]]},
        ]}),
        r"'z'",
    ),
]


@pytest.mark.parametrize("make,match", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_spec_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()
