"""Liaison: federated, policy-filtered, signed and audited queries between agencies.

This is the shared core that gateway and node both build on: keys and signed
envelopes, the federation catalog, the query model, config loading and the
command line. Nothing here imports from ``gateway`` or ``node``.
"""

__version__ = "0.1.0"
