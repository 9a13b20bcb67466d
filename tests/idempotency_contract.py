"""The contract every idempotency store passes. Subclass with a ``make_store`` fixture."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from melange.idempotency import IdempotencyStore

StoreFactory = Callable[..., IdempotencyStore]


class IdempotencyStoreContract:
    """Subclasses provide ``make_store(ttl_seconds=..., lease_seconds=...)`` as a fixture."""

    def test_a_claim_is_exclusive(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1") is True
        assert store.claim("billing", "m-1") is False

    def test_claims_are_per_consumer_and_message(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1")
        assert store.claim("shipping", "m-1")
        assert store.claim("billing", "m-2")

    def test_a_completed_claim_is_kept(self, make_store: StoreFactory) -> None:
        store = make_store(lease_seconds=0.2)
        assert store.claim("billing", "m-1")
        store.complete("billing", "m-1")
        time.sleep(0.4)  # past the lease: the completion keeps it
        assert store.claim("billing", "m-1") is False

    def test_a_released_claim_can_be_taken_again(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1")
        store.release("billing", "m-1")
        assert store.claim("billing", "m-1") is True

    def test_an_expired_lease_can_be_taken_again(self, make_store: StoreFactory) -> None:
        store = make_store(lease_seconds=0.2)
        assert store.claim("billing", "m-1")
        time.sleep(0.4)
        assert store.claim("billing", "m-1") is True

    def test_a_completion_expires_after_its_ttl(self, make_store: StoreFactory) -> None:
        store = make_store(ttl_seconds=0.2)
        assert store.claim("billing", "m-1")
        store.complete("billing", "m-1")
        time.sleep(0.4)
        assert store.claim("billing", "m-1") is True

    def test_concurrent_claims_give_exactly_one_winner(self, make_store: StoreFactory) -> None:
        store = make_store()
        start = threading.Barrier(8)
        results: list[bool] = []
        lock = threading.Lock()

        def claim() -> None:
            start.wait()
            won = store.claim("billing", "race")
            with lock:
                results.append(won)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False] * 7 + [True]

    def test_close_is_idempotent(self, make_store: StoreFactory) -> None:
        store = make_store()
        store.close()
        store.close()
