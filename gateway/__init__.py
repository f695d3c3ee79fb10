"""The gateway: authenticates investigators, signs requests, fans out, merges.

Arrows point inward: gateway code imports ``liaison`` (shared core), never
``node``.
"""
