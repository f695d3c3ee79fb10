"""What a link does to the bytes that cross it: pure descriptions, no I/O.

A link joins a client (the gateway) to a target (a node). Each direction has
its own one-way delay, jitter, bandwidth and loss. Loss is modelled as TCP
makes an application feel it: bytes are never lost, but a lost segment holds
back everything behind it until it is sent again, a pause of one
retransmission timeout (Linux never waits less than 200 ms, RFC 6298 with
``TCP_RTO_MIN``), so a lossy link is a link that stalls now and then.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from liaison.errors import ConfigError

# Payload bytes of one segment on a 1500-byte Ethernet path (1500 - 40 - 12 of timestamps).
SEGMENT_BYTES = 1448
MIN_RTO_MS = 200.0


class LinkMode(StrEnum):
    OPEN = "open"  # bytes flow, subject to the directions' delays and stalls
    BLACKHOLE = "blackhole"  # connections are accepted and kept, nothing crosses either way
    RESET = "reset"  # every connection, open or new, is reset (RST)
    DOWN = "down"  # the port refuses connections; open ones are reset


@dataclass(frozen=True, slots=True)
class Direction:
    """One direction of a link."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # each chunk's delay is delay_ms ± jitter_ms, uniformly
    bandwidth_bps: float | None = None  # bytes per second; None: as fast as loopback
    loss: float = 0.0  # probability that a segment is lost
    stall_ms: float = MIN_RTO_MS  # how long a loss holds the direction back

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.stall_ms < 0:
            raise ConfigError(f"delays must not be negative (got {self})")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"loss must be a probability below 1 (got {self.loss})")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ConfigError(f"bandwidth must be positive or None (got {self.bandwidth_bps})")

    def stall_probability(self, size: int) -> float:
        """The chance that a chunk of ``size`` bytes loses at least one of its segments."""
        if self.loss <= 0.0 or size <= 0:
            return 0.0
        return 1.0 - (1.0 - self.loss) ** math.ceil(size / SEGMENT_BYTES)

    def transmission_s(self, size: int) -> float:
        return 0.0 if self.bandwidth_bps is None else size / self.bandwidth_bps


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Both directions of a link and its mode; replaced whole when a link changes."""

    to_target: Direction = field(default_factory=Direction)  # requests: gateway -> node
    to_client: Direction = field(default_factory=Direction)  # answers: node -> gateway
    mode: LinkMode = LinkMode.OPEN

    @classmethod
    def wan(
        cls,
        rtt_ms: float,
        *,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        bandwidth_bps: float | None = None,
    ) -> LinkProfile:
        """A symmetric path of round-trip time ``rtt_ms``; a loss stalls for 200 ms + one RTT."""
        one_way = Direction(
            delay_ms=rtt_ms / 2,
            jitter_ms=jitter_ms,
            bandwidth_bps=bandwidth_bps,
            loss=loss,
            stall_ms=MIN_RTO_MS + rtt_ms,
        )
        return cls(one_way, one_way)

    @property
    def rtt_ms(self) -> float:
        return self.to_target.delay_ms + self.to_client.delay_ms

    def with_mode(self, mode: LinkMode) -> LinkProfile:
        return replace(self, mode=mode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "to_target": asdict(self.to_target),
            "to_client": asdict(self.to_client),
            "mode": self.mode.value,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LinkProfile:
        try:
            return cls(
                Direction(**doc.get("to_target", {})),
                Direction(**doc.get("to_client", {})),
                LinkMode(doc.get("mode", LinkMode.OPEN.value)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"not a link profile ({exc}); expected to_target, to_client (each with "
                "delay_ms, jitter_ms, bandwidth_bps, loss, stall_ms) and mode "
                f"({', '.join(m.value for m in LinkMode)})"
            ) from None


@dataclass(frozen=True, slots=True)
class LinkStats:
    """What crossed a link since it was added."""

    connections: int = 0  # accepted
    open_connections: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    stalls: int = 0  # losses felt as retransmission pauses
    resets: int = 0  # connections this proxy reset

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LinkStats:
        return cls(**{k: int(v) for k, v in doc.items()})
