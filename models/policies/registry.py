"""The policy registry: a spec's kind -> the policy class that implements it, and
`parse_policy`, the one way a spec string becomes a policy.

    policy = parse_policy("fiited:budget=0.25", num_fields=F, seed=0)

Spec strings:

    fixed:d                                   every ID gets d dims (D = d)
    fiited[:budget=0.25,widths=4-4-8-16-32,gamma=0.99,interval=50,...]
                                              default chunks: 4-4-8-16-32 (narrow first chunks);
                                              K=8 gives the paper's K equal chunks
    adaembed[:budget=...]                     FIITED with K = 1
    torch:d[,rows=N]                          torch nn.Embedding(sparse=True), hashed rows; a
                                              reference for speed, not a product policy
    dml[:penalty=0.02,...]                    Dimension Mask Layer: a learned length per field
    amtl[:penalty=0.001,...]                  AMTL: a learned length per value, from frequency
    any spec + ,hot=PATH                      hot start from a fixed:64 save (hot_start.py)

One path for every kind: `split_spec` checks the spec's shape, `split_params` (params.py) takes
the kind's own parameters (its class's `Params`, a pydantic model), and the class's
`from_params` builds it from them and the rest (the chunk store's, as a StoreConfig). A spec is
validated when parsed, before anything is built or connected: an unknown kind, an unknown or
repeated parameter, a stray word (`fixed:64,fixd:64`) or a value out of range (dims and
intervals >= 1, budgets in (0, 1], gamma in [0, 1], finite numbers) is a ValueError of one line
naming it: "policy 'fiited:interval=0': interval='0': Input should be greater than or equal
to 1".
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from models.policies.amtl import AMTLPolicy
from models.policies.chunked import AdaEmbedPolicy, FiitedPolicy, FixedPolicy
from models.policies.dml import DimensionMaskPolicy
from models.policies.hot_start import hot_start
from models.policies.params import split_params
from models.policies.torch_embedding import TorchEmbeddingPolicy
from models.policy import EmbeddingPolicy
from storage.settings import describe_validation_error

POLICIES: dict[str, type[EmbeddingPolicy]] = {
    "fixed": FixedPolicy,
    "fiited": FiitedPolicy,
    "adaembed": AdaEmbedPolicy,
    "dml": DimensionMaskPolicy,
    "amtl": AMTLPolicy,
    "torch": TorchEmbeddingPolicy,
}
KINDS = tuple(POLICIES)
_DIM_FIRST = ("fixed", "torch")  # kinds whose first parameter may be a bare dim: fixed:64


def parse_policy(spec: str, num_fields: int, seed: int = 0,
                 device: str = "cpu") -> EmbeddingPolicy:
    """Build a policy from its spec string (see module docstring). Raises ValueError with one
    line naming the refused parameter."""
    try:
        return _build_policy(spec, num_fields, seed, device)
    except ValidationError as exc:
        raise ValueError(f"policy {spec!r}: {describe_validation_error(exc)}") from exc
    except ValueError as exc:
        message = " ".join(str(exc).split())  # one line, whatever raised it
        raise ValueError(f"policy {spec!r}: {message}") from exc


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'fixed:64,pad=128' -> ('fixed', {'dim': '64', 'pad': '128'}), checking the shape: a
    known kind, key=value parameters each given once, a bare dim only first in fixed/torch."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; expected fixed:d, fiited:..., "
                         "adaembed, dml, amtl or torch:d")
    params: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in arg.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            if not part:
                continue  # "fixed:64," : an empty part says nothing
            if i == 0 and kind in _DIM_FIRST:
                key, value = "dim", part
            elif ":" in part and part.partition(":")[0].strip().lower() not in KINDS:
                # a mistyped second policy ("fixed:64,fixd:64") reads as a stray word
                raise ValueError(f"unknown policy kind {part.partition(':')[0].strip()!r} in "
                                 f"{part!r}; expected fixed, fiited, adaembed, dml, amtl or torch")
            else:
                hint = " (one policy per spec)" if ":" in part else ""
                raise ValueError(f"unexpected {part!r}: parameters are key=value{hint}")
        if not key:
            raise ValueError(f"{part!r}: a parameter needs a name")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice")
        params[key] = value.strip()
    return kind, params


def _build_policy(spec: str, num_fields: int, seed: int, device: str) -> EmbeddingPolicy:
    kind, params = split_spec(spec)
    hot = params.pop("hot", None)
    if hot is not None and not hot:
        raise ValueError("hot= needs the path of a fixed:64 save")
    cls = POLICIES[kind]
    own, rest = split_params(params, cls.Params)
    rest.setdefault("device", device)  # where its tables live: cpu or cuda
    policy = cls.from_params(own, rest, num_fields=num_fields, seed=seed, spec=spec)
    if hot is not None:
        hot_start(policy, Path(hot))
    return policy
