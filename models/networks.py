"""CTR networks over padded embeddings.

Both networks take what a policy's `lookup` returns plus the batch's dense features and give one
logit per row:

    model(emb: float32[B, F, D], dense: float32[B, Dn] | None) -> float32[B]

- `DLRM`: a bottom MLP projects the dense features to D; the F field embeddings and that
  projection interact through pairwise dot products; a top MLP maps [projection, dot products]
  to the logit. Without dense features a learned D-vector takes the projection's place, so each
  field still has a first-order term (its dot product with that vector).
- `EmbeddingMLP`: the embeddings flattened and concatenated with the dense features, then an MLP.

Neither uses dropout or batch norm, so train and eval mode compute the same function: the
Learner may record the predictions of its training forward pass as progressive-validation
predictions.

Example:
    >>> schema = DatasetSchema("toy", fields=("user", "item"), dense=("age",))
    >>> model = build_model("dlrm", schema, dim=8, seed=0)
    >>> model(torch.zeros(4, 2, 8), torch.zeros(4, 1)).shape
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from storage.batch import DatasetSchema

DEFAULT_MLP_HIDDEN: tuple[int, ...] = (256, 128)
DEFAULT_DLRM_BOTTOM: tuple[int, ...] = (64,)
DEFAULT_DLRM_TOP: tuple[int, ...] = (256, 128)


def mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... with ReLU between them (and after the last
    one if `last_activation`). float32[B, sizes[0]] -> float32[B, sizes[-1]]."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM-style network: bottom MLP, pairwise dot interactions, top MLP.

    forward(emb: float32[B, F, D], dense: float32[B, Dn] | None) -> logits float32[B]

    The interaction set is z = [b, e_1, ..., e_F] (float32[B, F+1, D]) with b the bottom MLP's
    output (or a learned vector when num_dense == 0); the top MLP reads
    [b, <z_i, z_j> for i < j]: D + (F+1)F/2 inputs.
    """

    def __init__(
        self,
        num_fields: int,
        num_dense: int,
        dim: int,
        bottom: Sequence[int] = DEFAULT_DLRM_BOTTOM,
        top: Sequence[int] = DEFAULT_DLRM_TOP,
    ) -> None:
        super().__init__()
        if num_fields < 1 or dim < 1:
            raise ValueError(f"need num_fields >= 1 and dim >= 1, got {num_fields}, {dim}")
        self.num_fields, self.num_dense, self.dim = num_fields, num_dense, dim
        if num_dense:
            self.bottom: nn.Module | None = mlp([num_dense, *bottom, dim], last_activation=True)
            self.dense_stub: nn.Parameter | None = None
        else:
            self.bottom = None
            self.dense_stub = nn.Parameter(torch.randn(dim) / dim**0.5)
        n = num_fields + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("_pair_index", rows * n + cols, persistent=False)
        self.top = mlp([dim + len(rows), *top, 1], last_activation=False)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        b = emb.shape[0]
        if self.bottom is not None:
            if dense is None:
                raise ValueError("this DLRM has dense inputs; dense must not be None")
            x = self.bottom(dense)  # [B, D]
        else:
            x = self.dense_stub.expand(b, self.dim)  # type: ignore[union-attr]
        z = torch.cat([x.unsqueeze(1), emb], dim=1)  # [B, F+1, D]
        n = z.shape[1]  # (sizes spelled out: a batch of no rows, an idle rank's, must reshape)
        gram = torch.bmm(z, z.transpose(1, 2)).reshape(b, n * n)  # [B, (F+1)^2]
        pairs = gram[:, self._pair_index]  # [B, (F+1)F/2]
        return self.top(torch.cat([x, pairs], dim=1)).squeeze(1)


class EmbeddingMLP(nn.Module):
    """Plain MLP over the concatenated embeddings and dense features.

    forward(emb: float32[B, F, D], dense: float32[B, Dn] | None) -> logits float32[B]
    (the first layer reads F*D + Dn inputs).
    """

    def __init__(
        self,
        num_fields: int,
        num_dense: int,
        dim: int,
        hidden: Sequence[int] = DEFAULT_MLP_HIDDEN,
    ) -> None:
        super().__init__()
        if num_fields < 1 or dim < 1:
            raise ValueError(f"need num_fields >= 1 and dim >= 1, got {num_fields}, {dim}")
        self.num_fields, self.num_dense, self.dim = num_fields, num_dense, dim
        self.net = mlp([num_fields * dim + num_dense, *hidden, 1], last_activation=False)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        x = emb.reshape(emb.shape[0], emb.shape[1] * emb.shape[2])  # [B, F*D]
        if self.num_dense:
            if dense is None:
                raise ValueError("this MLP has dense inputs; dense must not be None")
            x = torch.cat([x, dense], dim=1)
        return self.net(x).squeeze(1)


MODEL_NAMES = ("mlp", "dlrm")


def build_model(
    name: str,
    schema: DatasetSchema,
    dim: int,
    seed: int = 0,
    hidden: Sequence[int] | None = None,
) -> nn.Module:
    """A network for `schema` over D = `dim` embeddings, initialised from `seed` alone (the
    global torch RNG is left as it was).

    name: "mlp" (hidden = its hidden sizes) or "dlrm" (hidden = its top MLP sizes).
    """
    name = name.strip().lower()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return EmbeddingMLP(
                schema.num_fields, schema.num_dense, dim, hidden=hidden or DEFAULT_MLP_HIDDEN
            )
        if name == "dlrm":
            return DLRM(schema.num_fields, schema.num_dense, dim, top=hidden or DEFAULT_DLRM_TOP)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
