"""Verifying bearer tokens from agencies' identity providers.

Shared by the gateway (investigators) and the node (its duty officers, who
decide follow-up requests): one strict verifier, configured per side.
"""
