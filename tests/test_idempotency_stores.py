from __future__ import annotations

from typing import Any

import pytest

from melange.idempotency import IdempotencyStore, InMemoryIdempotencyStore
from tests.idempotency_contract import IdempotencyStoreContract, StoreFactory


class TestInMemoryIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        def make(**options: Any) -> IdempotencyStore:
            return InMemoryIdempotencyStore(**options)

        return make


def test_expired_claims_are_swept() -> None:
    store = InMemoryIdempotencyStore(ttl_seconds=0.001, lease_seconds=0.001)
    for n in range(5000):
        store.claim("c", str(n))
        store.complete("c", str(n))
    assert len(store._expiry) < 5000


def test_ttl_and_lease_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        InMemoryIdempotencyStore(ttl_seconds=0)
