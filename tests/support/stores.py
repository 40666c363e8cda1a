"""Claims without increments: the store's one claiming call, ``claim_and_add``, with none."""

from __future__ import annotations

from collections.abc import Sequence

from vastserver.store import Store


async def claim_many(store: Store, keys: Sequence[str], ttl_s: int) -> list[bool]:
    """True for each key claimed for the first time within ``ttl_s``."""
    return await store.claim_and_add(keys, ttl_s, (), 0.0)


async def claim(store: Store, key: str, ttl_s: int) -> bool:
    return (await claim_many(store, (key,), ttl_s))[0]
