"""Benchmarks, each runnable as a module and all of them by `make bench`.

``python -m liaison.bench`` (federated query against a direct call),
``python -m liaison.bench.policy``, ``python -m liaison.bench.ledger``,
``python -m liaison.bench.pdq``. Each measures its baseline in the same run
and reports ratios, as a table or ``--json``. What they share (the command
line, failures and exit statuses, machine info, latency summaries) is in
``runner``; they import nothing from each other for it.
"""
