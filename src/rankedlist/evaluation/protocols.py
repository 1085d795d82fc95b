"""Named evaluation presets of the standard deep-metric-learning benchmarks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is evaluated.

    Attributes:
        name: preset name.
        ks: the Recall@K cut-offs reported.
        separate_gallery: queries are searched against a separate gallery (In-Shop); otherwise
            the query set is its own gallery with each query's item excluded by index.
    """

    name: str
    ks: tuple[int, ...]
    separate_gallery: bool = False


# In the order messages list them (rankedlist.report.PROTOCOL_NAMES): the demo first.
PROTOCOLS: dict[str, Protocol] = {
    "glyphs": Protocol("glyphs", (1, 2, 4, 8)),
    "cub200": Protocol("cub200", (1, 2, 4, 8)),
    "cars196": Protocol("cars196", (1, 2, 4, 8)),
    "sop": Protocol("sop", (1, 10, 100, 1000)),
    "inshop": Protocol("inshop", (1, 10, 20, 30, 40, 50), separate_gallery=True),
    "default": Protocol("default", (1, 2, 4, 8)),
}


def get_protocol(protocol: str | Protocol) -> Protocol:
    """Look a preset up by name (a ``Protocol`` instance passes through)."""
    if isinstance(protocol, Protocol):
        return protocol
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(
            f"unknown evaluation protocol {protocol!r}: choose one of {sorted(PROTOCOLS)} "
            "or pass a Protocol(name, ks)"
        )
    return PROTOCOLS[protocol]
