"""Seed streams: each random source of an evaluation draws from its own block of seeds.

A measurement that mixes two random sources must not seed both from the same number: the robustness
evaluation once seeded the Gaussian perturbation of a history with the very seed that drew the
velocity error's ε, so clip 0's perturbed context held its own target noise. Every source is a
`Stream`, and `stream_seed` maps (seed, stream, substream) into a block no other stream reaches:

    stream_seed = stream · 2^29 + substream · 2^24 + seed,   0 ≤ seed < 2^24, 0 ≤ substream < 2^5

All of it within 32 bits, because torch's CPU generator (mt19937) keeps only the low 32 bits of a seed:
2^32 + 5 draws what 5 draws. Evaluation noise is block 0, the plain seed, so the held-out velocity
errors published before the streams existed are unchanged.
"""

from __future__ import annotations

from enum import IntEnum

SEED_BITS = 24  # a user's seed: 0 ≤ seed < 2^24
SUBSTREAM_BITS = 5  # a stream's parts (e.g. one per perturbation kind): 0 ≤ substream < 2^5
STREAM_BITS = 3  # up to 8 streams; with the above, 32 bits, all that torch's CPU generator reads


class Stream(IntEnum):
    """The random sources of an evaluation, each with its own block of seeds (fewer than 2^STREAM_BITS)."""

    EVALUATION_NOISE = 0  # ε of the held-out velocity error (mimo.evaluation.velocity)
    SAMPLING_NOISE = 1  # the sampler's noise when a perturbed history is continued (mimo.evaluation.robustness)
    PERTURBATION = 2  # the perturbations of a history, one substream per kind


def stream_seed(seed: int, stream: Stream, substream: int = 0) -> int:
    """The generator seed of `stream` (and its `substream`) for a user's `seed`; distinct streams never share one."""
    if not 0 <= seed < 2**SEED_BITS:
        raise ValueError(f"an evaluation seed must be in [0, 2^{SEED_BITS}), got {seed}; pick a smaller seed")
    if not 0 <= substream < 2**SUBSTREAM_BITS:
        raise ValueError(f"a substream must be in [0, 2^{SUBSTREAM_BITS}), got {substream}")
    return (int(stream) << (SEED_BITS + SUBSTREAM_BITS)) + (substream << SEED_BITS) + seed
