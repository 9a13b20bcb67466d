"""The consume engine both consume loops own (``MessageDispatcher`` and its asyncio twin).

One message is received, decided, handled and settled in these steps, each
a module with a typed interface:

- ``routing``: which attached consumers take which event (``Routes``);
- ``decisions``: what to do with one message (``MessagePipeline``, ``Plan``),
  and ``async_decisions``, the same decisions awaited (``AsyncDecisions``);
- ``queues``: the queues consumed, their dead-letter queue and visibility;
- ``holding``: the messages held while handled, kept hidden, acknowledged in groups;
- ``settling``: applying an outcome to the broker (``Settler``);
- ``pacing``: when to receive, how many, and the backoff during an outage.

Each step that needs the broker yields ``melange.broker_calls.BrokerCall``s,
so it is written once and run by either loop (``run_calls``, ``run_calls_async``).

docs/architecture.md walks one message through them.
"""

__all__: list[str] = []
