"""Seeded random task orders for continual merging (docs/methods.md, "OPCM").

The reference shuffles its model list once per run with Python's `random.shuffle`, after `L.seed_everything(seed)`
(which calls `random.seed(seed)`) when a seed is given; the paper's 10 runs per configuration used no seed, so their
orders cannot be recovered. Here order i is `random.Random(s_i).shuffle(tasks)`, exactly the order the reference
draws when run with `seed=s_i` on the same task list, and the per-order seeds s_i come from one master
`random.Random(seed)`. So the orders are reproducible from `seed`, independent across seeds (no shifted overlap as
with s_i = seed + i), and asking for more orders extends the list without changing the first ones.
"""
from __future__ import annotations

import random
from typing import Sequence

# The reference's `L.seed_everything` accepts seeds in [0, 2**32 − 1].
_SEED_BITS = 32


def order_seeds(num_orders: int, seed: int) -> list[int]:
    """The reference-compatible seed of each of `num_orders` orders drawn from master seed `seed`."""
    if num_orders < 1:
        raise ValueError(f"num_orders={num_orders}: need at least one task order")
    master = random.Random(seed)
    return [master.getrandbits(_SEED_BITS) for _ in range(num_orders)]


def shuffled(tasks: Sequence[str], order_seed: int) -> list[str]:
    """`tasks` in the order the reference's `random.seed(order_seed); random.shuffle(tasks)` gives."""
    order = list(tasks)
    random.Random(order_seed).shuffle(order)
    return order


def task_orders(tasks: Sequence[str], num_orders: int, seed: int) -> list[list[str]]:
    """`num_orders` random permutations of `tasks`, reproducible from `seed`."""
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task list has duplicates: {list(tasks)}")
    return [shuffled(tasks, s) for s in order_seeds(num_orders, seed)]
