"""The C table of prepare's duplicate check: 48 bits per key, and no key added is ever missed.

``openai_batch_fingerprints`` (``native/``) is checked against a plain Python model of it: a key
is the pair (its low 16 bits, its next 32 bits, 0 counted as 1). A key added must always be found
again, through every growth of its table; keys that differ only outside those bits look alike.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

MASK = (1 << 64) - 1


def _model_key(key: int) -> tuple[int, int]:
    key &= MASK
    return key & 0xFFFF, ((key >> 16) & 0xFFFF_FFFF) or 1


def _model_check_add(model: set[tuple[int, int]], keys: list[int]) -> list[int]:
    found = []
    for at, key in enumerate(keys):
        k = _model_key(key)
        if k in model:
            found.append(at)
        model.add(k)
    return found


def test_the_table_finds_exactly_the_keys_the_model_finds(native_fingerprints: Any) -> None:
    rng = random.Random(7)
    table, model = native_fingerprints(), set[tuple[int, int]]()
    crowded = [rng.getrandbits(48) << 16 | 0x1234 for _ in range(20_000)]  # one table grows far
    for round_no in range(30):
        keys = [rng.getrandbits(64) - (1 << 63) for _ in range(5_000)]  # signed, as hash() gives them
        keys += rng.sample(crowded, 700)
        keys += [rng.choice(keys) for _ in range(50)]  # repeats within the call
        if round_no:
            keys += [k + (1 << 64) * rng.choice((1, -1, 5)) for k in rng.sample(keys, 100)]  # same mod 2**64
        keys += [rng.getrandbits(16) | (1 << 48) * rng.getrandbits(16), 1 << 16 | 7, 7]  # fingerprints 0, 1
        rng.shuffle(keys)
        assert table.check_add(keys) == _model_check_add(model, keys)
    assert len(table) == len(model)
    assert table.nbytes >= 4 * len(model)


def test_every_key_added_is_found_again_and_no_other_key_is(native_fingerprints: Any) -> None:
    rng = random.Random(11)
    table = native_fingerprints()
    added = [rng.getrandbits(64) for _ in range(200_000)]
    assert table.check_add(added) == []  # 48 random bits: no two alike among 200,000
    assert table.check_add(iter(added)) == list(range(len(added)))
    fresh = [rng.getrandbits(64) for _ in range(200_000)]
    assert table.check_add(fresh) == []


def test_bad_keys_are_refused(native_fingerprints: Any) -> None:
    table = native_fingerprints()
    with pytest.raises(TypeError, match="integers"):
        table.check_add([1, "2"])
    with pytest.raises(TypeError):
        table.check_add(5)
    with pytest.raises(TypeError):
        native_fingerprints(100)
