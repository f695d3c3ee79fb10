"""The policy engine: pure functions from (policy, request) to a decision.

No I/O happens here except reading a policy document in ``load``; the demo
agencies' policy documents live in ``policies/demo``. ``decide`` decides a
query; ``decide_followup`` bounds what a duty officer may release on a
follow-up request (approve rules).
"""

from policies.engine import Grant, PolicyDecision, decide
from policies.followup import FollowUpBounds, decide_followup, may_decide, may_release
from policies.load import load_policy, parse_policy
from policies.model import Effect, Policy, Rule

__all__ = [
    "Effect",
    "FollowUpBounds",
    "Grant",
    "Policy",
    "PolicyDecision",
    "Rule",
    "decide",
    "decide_followup",
    "load_policy",
    "may_decide",
    "may_release",
    "parse_policy",
]
