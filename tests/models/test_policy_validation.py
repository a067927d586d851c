"""Policy specs are validated when parsed: a bad parameter, an unknown one, an unknown kind or a
malformed spec is a ValueError with one line naming it, before anything is built or connected."""

from __future__ import annotations

import pytest

from models.policies.registry import parse_policy

BAD = [
    # (spec, what the message must name)
    ("fixed:-8", "dim"),
    ("fixed:0", "dim"),
    ("fixed:abc", "dim"),
    ("fixed:64,fixd:64", "fixd:64"),
    ("fixed:64,32", "32"),
    ("fixed:64,pad=-1", "pad"),
    ("fixed:64,lr=nan", "lr"),
    ("fixed:64,interval=0", "interval"),
    ("fixed:64,bogus=1", "bogus"),
    ("fiited:interval=0", "interval"),
    ("fiited:interval=-3", "interval"),
    ("fiited:budget=0", "budget"),
    ("fiited:budget=1.5", "budget"),
    ("fiited:budget=nan", "budget"),
    ("fiited:gamma=1.5", "gamma"),
    ("fiited:gamma=-0.1", "gamma"),
    ("fiited:widths=4-0-60", "widths"),
    ("fiited:widths=4-x-60", "widths"),
    ("fiited:dim=0", "dim"),
    ("fiited:dim=abc", "dim"),
    ("fiited:K=0", "K"),
    ("fiited:lr=-1", "lr"),
    ("fiited:lr=1e999", "lr"),
    ("fiited:eps=0", "eps"),
    ("fiited:min_count=0", "min_count"),
    ("fiited:max_entries=0", "max_entries"),
    ("fiited:max_bytes=-5", "max_bytes"),
    ("fiited:evict_after=0", "evict_after"),
    ("fiited:optimizer=sgd", "optimizer"),
    ("fiited:normalize=row", "normalize"),
    ("fiited:keep_first=maybe", "keep_first"),
    ("fiited:budget=0.25,budget=0.5", "budget"),
    ("fiited:64", "64"),
    ("fiited:nonsense", "nonsense"),
    ("adaembed:budget=2", "budget"),
    ("dml:penalty=-1", "penalty"),
    ("dml:tau=0", "tau"),
    ("dml:relayout=0", "relayout"),
    ("dml:harden=-1", "harden"),
    ("dml:speed=nan", "speed"),
    ("dml:frobnicate=1", "frobnicate"),
    ("amtl:hidden=0", "hidden"),
    ("amtl:high=0", "high"),
    ("amtl:start=9", "start"),
    ("amtl:gain=inf", "gain"),
    ("amtl:warmup=-1", "warmup"),
    ("torch:0", "dim"),
    ("torch:8,rows=0", "rows"),
    ("torch:8,rowz=10", "rowz"),
    ("fixd:64", "fixd"),
    ("", "policy"),
    ("fixed:64,hot=", "hot"),
]


@pytest.mark.parametrize(("spec", "names"), BAD)
def test_a_bad_spec_is_refused_with_one_line_naming_the_parameter(spec: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_policy(spec, num_fields=3)
    message = str(info.value)
    assert names in message, message
    assert "\n" not in message, message


@pytest.mark.parametrize("spec", [
    "fixed:64", "fixed", "fixed:dim=16", "fixed:8,pad=64", "fiited", "fiited:budget=0.25",
    "fiited:K=8,budget=0.25,interval=1", "fiited:budget=1,gamma=0",
    "fiited:widths=4-4-8-16-32,max_bytes=64MiB",
    "fiited:max_bytes=none,max_entries=none", "fiited:keep_first=false", "adaembed",
    "adaembed:budget=0.5", "dml", "dml:penalty=0,relayout=5", "amtl", "amtl:start=1,hidden=4",
    "torch:8", "torch:8,rows=1024", "FIXED:8",
])
def test_good_specs_still_parse(spec: str) -> None:
    parse_policy(spec, num_fields=3)
