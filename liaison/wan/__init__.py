"""A wide-area network on one machine: fault-injecting proxies between a gateway and its nodes.

``links`` describes what a link does to the bytes crossing it (delay, jitter,
bandwidth, loss as TCP would feel it, resets, blackholes, refusals);
``proxy`` is the asyncio TCP proxy that does it, one listening port per link;
``control`` runs that proxy as a process of its own, steered over its stdin;
``latency`` draws each agency's capital and round-trip time from a published
model; ``nodehost`` serves several nodes, each with its own identity and
state, from one process; ``testbed`` puts it all together.
"""
