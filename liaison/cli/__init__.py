"""The command line: `liaison` and its subcommands, their output, batches and image triage.

``main`` holds the parser and the query, node, gateway, token, init, demo and
policy commands; ``audit`` and ``hashes`` the auditor's and the hashing
commands; ``render`` turns results into tables and JSON.
"""
