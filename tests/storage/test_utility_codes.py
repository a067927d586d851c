"""One-byte utilities (storage/vhpi/utility_codes.py): unbiased, within a level, ordered."""

import numpy as np
import torch

from storage.vhpi import utility_codes as codes


def test_codes_are_unbiased_and_within_one_level() -> None:
    gen = torch.Generator().manual_seed(0)
    for v in (3e-8, 1e-5, 0.01, 0.7, 5.0, 250.0):
        x = torch.full((100_000,), v)
        got = codes.decode(codes.encode(x, gen))
        assert abs(float(got.mean()) / v - 1) < 0.005, v  # E[decode(encode(u))] = u
        step = 2 ** (1 / codes.PER_OCTAVE)
        assert float(got.min()) >= v / step * 0.999 and float(got.max()) <= v * step * 1.001


def test_zero_stays_zero_the_top_saturates_and_order_is_kept() -> None:
    gen = torch.Generator().manual_seed(1)
    assert int(codes.encode(torch.zeros(4), gen).max()) == 0
    top = codes.encode(torch.tensor([1e6, float("inf")]), gen)
    assert (top == 255).all()
    assert abs(float(codes.decode(top)[0]) / codes.max_value() - 1) < 1e-6
    # values two levels apart never swap places
    x = torch.exp2(torch.arange(-25.0, 8.0, 2 / codes.PER_OCTAVE * 1.01))
    c = codes.encode(x, gen).numpy()
    assert (np.diff(c.astype(int)) > 0).all()


def test_keyed_rounding_is_unbiased_and_a_function_of_what_is_rounded() -> None:
    """The store's rounding noise is a hash of (seed and step, key, position): unbiased like a
    generator's, and the same for an entry whichever store or order rounds it (shards of one
    model round as one store does)."""
    keys = torch.from_numpy(np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 100_000))
    noise = codes.keyed_noise(keys, (7 << 32) + 3, 0, 2)
    assert noise.shape == (100_000, 2) and 0 <= float(noise.min()) and float(noise.max()) < 1
    assert abs(float(noise.mean()) - 0.5) < 0.005 and abs(float(noise.std()) - 12**-0.5) < 0.005
    for v in (1e-5, 0.7, 250.0):
        got = codes.decode(codes.encode(torch.full((100_000,), v), noise=noise[:, 0]))
        assert abs(float(got.mean()) / v - 1) < 0.005, v
    perm = torch.randperm(100_000)
    assert torch.equal(codes.keyed_noise(keys[perm], (7 << 32) + 3, 0, 2), noise[perm])
    assert not torch.equal(codes.keyed_noise(keys, (7 << 32) + 4, 0, 2), noise)  # a new step
    assert not torch.equal(noise[:, 0], noise[:, 1])  # positions round apart
