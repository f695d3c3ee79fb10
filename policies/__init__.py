"""The policy engine: pure functions from (policy, request) to a decision.

No I/O happens here except reading a policy document in ``load``; the demo
agencies' policy documents live in ``policies/demo``.
"""

from policies.engine import Grant, PolicyDecision, decide
from policies.load import load_policy, parse_policy
from policies.model import Effect, Policy, Rule

__all__ = [
    "Effect",
    "Grant",
    "Policy",
    "PolicyDecision",
    "Rule",
    "decide",
    "load_policy",
    "parse_policy",
]
