"""The order saga: four services, four processes, one business process.

``orders`` runs ``OrderSaga``; ``inventory`` reserves and releases stock;
``payments`` charges and refunds (declining above a limit); ``shipping``
ships. Each module defines its own event classes: the manifests are the
contract between them. ``python -m examples.saga`` runs it all.
"""
