"""Lists of policy specs as the quality benchmark takes them on its command line.

    split_policies("fixed:64,fiited:K=8,budget=0.25,torch:64")
        -> ["fixed:64", "fiited:K=8,budget=0.25", "torch:64"]
    policy_kind("fiited:K=8")  -> "fiited"
"""

from __future__ import annotations

import re

POLICY_KINDS = ("fixed", "fiited", "adaembed", "torch", "dml", "amtl")

# A comma starts a new policy only where a policy kind follows it: fiited:K=8,budget=0.25 is one.
_POLICY_SPLIT = re.compile(r",\s*(?=(?:" + "|".join(POLICY_KINDS) + r")\b(?!\s*=))", re.I)


class PolicySpecError(ValueError):
    """A policy spec that cannot be built; str() is one line naming the spec."""


def split_policies(text: str) -> list[str]:
    """'fixed:64,fiited:K=8,budget=0.25,torch:64' -> ['fixed:64', 'fiited:K=8,budget=0.25',
    'torch:64']: split on commas followed by a policy kind name."""
    return [p.strip() for p in _POLICY_SPLIT.split(text) if p.strip()]


def policy_kind(spec: str) -> str:
    return spec.partition(":")[0].strip().lower()
