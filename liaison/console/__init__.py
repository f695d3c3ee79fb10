"""The web console: investigators, duty officers and auditors in a browser.

A small Starlette application served over HTTPS beside a gateway (the
investigators' and auditors' pages) or beside a node (the duty officers'
inbox). It holds no authority of its own: every query, follow-up and decision
goes through the gateway's or node's gRPC interface with the signed-in
person's own token, through the same client libraries as the CLI, so the
ledgers cannot tell a console query from a CLI one.
"""
