"""The contract every idempotency store passes. Subclass with a ``make_store`` fixture."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from melange.idempotency.base import Claim, IdempotencyStore

__all__ = ["IdempotencyStoreContract", "StoreFactory"]

#: ``make_store(ttl_seconds=..., lease_seconds=...)``: a new store on the shared data.
StoreFactory = Callable[..., IdempotencyStore]


class IdempotencyStoreContract:
    """Subclasses provide ``make_store(ttl_seconds=..., lease_seconds=...)`` as a fixture.

    Two stores made by one ``make_store`` share their data, as two workers do,
    unless ``shared_by_workers`` is false (a store in one process's memory).
    """

    shared_by_workers = True

    def test_a_claim_is_exclusive_and_says_in_progress(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1") is Claim.ACQUIRED
        assert store.claim("billing", "m-1") is Claim.IN_PROGRESS

    def test_only_acquired_is_truthy(self) -> None:
        assert [bool(c) for c in Claim] == [c is Claim.ACQUIRED for c in Claim]

    def test_claims_are_per_consumer_and_message(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1") is Claim.ACQUIRED
        assert store.claim("shipping", "m-1") is Claim.ACQUIRED
        assert store.claim("billing", "m-2") is Claim.ACQUIRED

    def test_a_completed_claim_says_done_past_its_lease(self, make_store: StoreFactory) -> None:
        store = make_store(lease_seconds=0.2)
        assert store.claim("billing", "m-1")
        store.complete("billing", "m-1")
        assert store.claim("billing", "m-1") is Claim.DONE
        time.sleep(0.4)  # past the lease: the completion keeps it
        assert store.claim("billing", "m-1") is Claim.DONE

    def test_a_released_claim_can_be_taken_again(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1")
        store.release("billing", "m-1")
        assert store.claim("billing", "m-1") is Claim.ACQUIRED

    def test_an_expired_lease_can_be_taken_again(self, make_store: StoreFactory) -> None:
        store = make_store(lease_seconds=0.2)
        assert store.claim("billing", "m-1")
        time.sleep(0.4)
        assert store.claim("billing", "m-1") is Claim.ACQUIRED

    def test_the_lease_given_to_claim_wins_over_the_default(self, make_store: StoreFactory) -> None:
        store = make_store(lease_seconds=30)
        assert store.claim("billing", "m-1", 0.2)
        time.sleep(0.4)
        assert store.claim("billing", "m-1") is Claim.ACQUIRED

    def test_a_renewed_claim_outlives_its_first_lease(self, make_store: StoreFactory) -> None:
        store = make_store()
        assert store.claim("billing", "m-1", 0.3)
        time.sleep(0.15)
        store.renew("billing", "m-1", 1.0)
        time.sleep(0.3)  # past the first lease
        assert store.claim("billing", "m-1") is Claim.IN_PROGRESS

    def test_a_stale_worker_cannot_renew_or_release_a_newer_claim(
        self, make_store: StoreFactory
    ) -> None:
        if not self.shared_by_workers:
            pytest.skip("this store belongs to one worker: there is no other to be stale")
        slow, fast = make_store(), make_store()
        assert slow.claim("billing", "m-1", 0.2)
        time.sleep(0.4)  # the slow worker's lease expired
        assert fast.claim("billing", "m-1", 0.6) is Claim.ACQUIRED
        slow.release("billing", "m-1")
        assert fast.claim("billing", "m-1") is Claim.IN_PROGRESS
        slow.renew("billing", "m-1", 30)
        time.sleep(0.8)  # the fast worker's lease ran out: the stale renewal did nothing
        assert fast.claim("billing", "m-1") is Claim.ACQUIRED

    def test_a_completion_expires_after_its_ttl(self, make_store: StoreFactory) -> None:
        store = make_store(ttl_seconds=0.2)
        assert store.claim("billing", "m-1")
        store.complete("billing", "m-1")
        time.sleep(0.4)
        assert store.claim("billing", "m-1") is Claim.ACQUIRED

    def test_concurrent_claims_give_exactly_one_winner(self, make_store: StoreFactory) -> None:
        store = make_store()
        start = threading.Barrier(8)
        results: list[Claim] = []
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
        assert sorted(r.value for r in results) == ["acquired"] + ["in_progress"] * 7

    def test_close_is_idempotent(self, make_store: StoreFactory) -> None:
        store = make_store()
        store.close()
        store.close()
