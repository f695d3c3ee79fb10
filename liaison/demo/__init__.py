"""The demo federation and `liaison init`: agencies, their data, folders, keys and processes.

``federation`` writes a federation folder (keys, configs, policies, PKI);
``data`` generates the demo agencies' records and local schemas; ``run``
builds, starts, queries and audits the whole federation; ``processes``
starts and stops its services.
"""
