"""An agency's node: verifies signed requests, applies its own policy, answers.

Arrows point inward: node code imports ``liaison`` (shared core) and
``policies``, never ``gateway``.
"""
