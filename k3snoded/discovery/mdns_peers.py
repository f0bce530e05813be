"""What mDNS discovery believes about its peers, and the only ways it may change (pure).

``MdnsDiscovery`` feeds verified announcements and goodbyes in; this table decides. The rules a
stranger on the LAN must not be able to bend:

- Only a **verified** announcement adds or changes a peer, and only when it is not older than
  the last one accepted from that node (a replay cannot roll a peer back). That timestamp is
  kept **after the peer leaves**, so a goodbye does not re-open replays of older records.
- An announcement is bound to its instance name: the name must be the one the node's signed
  fields give (``instance_name(node, cluster, address)`` for one of its signed addresses), so a
  captured record replayed under another instance name is refused, and cannot make a goodbye
  (or a silence) of that other name count for the node.
- A peer leaves on its **signed goodbye** (a verified record with ``b=1``, sent by ``close()``
  before the TTL-0 records), or when an unsigned goodbye is **confirmed**: the instance no
  longer answers a query (``confirm_gone``). An unverified TTL-0 packet alone removes nothing.
- The table of refused instance names is bounded (oldest forgotten first).
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict

from k3snoded.model import Peer

SERVICE_TYPE = "_k3snoded._tcp.local."
REJECTED_MAX = 1024
_LABEL_MAX = 63


def instance_name(node: str, cluster: str, address: str) -> str:
    """``<node>-<hash8>._k3snoded._tcp.local.``: unique per (cluster, node, address)."""
    digest = hashlib.sha256(f"{cluster}\0{node}\0{address}".encode()).hexdigest()[:8]
    label = f"{node[: _LABEL_MAX - 9]}-{digest}"
    return f"{label}.{SERVICE_TYPE}"


def instance_matches(name: str, peer: Peer) -> bool:
    """True if ``name`` is the instance name ``peer``'s own signed fields give."""
    return any(name == instance_name(peer.name, peer.cluster, a) for a in peer.addresses)


class Outcome(enum.Enum):
    NEW = "new"  # a peer we did not know
    CHANGED = "changed"  # a known peer says something else now
    UNCHANGED = "unchanged"
    OLDER = "older"  # older than what we accepted last: ignored
    LEFT = "left"  # its signed goodbye


class AnnouncedPeers:
    """Verified peers by node name, their instance names, and the refused instance names."""

    def __init__(self) -> None:
        self.peers: dict[str, Peer] = {}
        self.last_ts: dict[str, float] = {}  # node -> ts of the record accepted last; kept
        self.instances: dict[str, str] = {}  # instance name -> node name (verified peers only)
        self.rejected: OrderedDict[str, str] = OrderedDict()  # instance -> last reason

    def node_of(self, instance: str) -> str | None:
        return self.instances.get(instance)

    def accept(self, instance: str, peer: Peer, ts: float, *, leaving: bool = False) -> Outcome:
        """A verified announcement (the caller checked signature, cluster, instance binding)."""
        if ts < self.last_ts.get(peer.name, 0.0):
            return Outcome.OLDER
        self.last_ts[peer.name] = ts
        self.rejected.pop(instance, None)
        for other in [i for i, n in self.instances.items() if n == peer.name and i != instance]:
            del self.instances[other]  # the node moved (its address changed)
        if leaving:
            self.instances.pop(instance, None)
            return (
                Outcome.LEFT if self.peers.pop(peer.name, None) is not None else Outcome.UNCHANGED
            )
        self.instances[instance] = peer.name
        before = self.peers.get(peer.name)
        if before == peer:
            return Outcome.UNCHANGED
        self.peers[peer.name] = peer
        return Outcome.NEW if before is None else Outcome.CHANGED

    def confirm_gone(self, instance: str) -> str | None:
        """An unsigned goodbye was confirmed (the instance stopped answering): drop its node.

        Returns the node dropped, if ``instance`` still belonged to a verified peer. Its last
        timestamp stays, so older records of it are still refused.
        """
        node = self.instances.pop(instance, None)
        if node is None:
            return None
        self.peers.pop(node, None)
        return node

    def reject(self, instance: str, reason: str) -> None:
        self.rejected[instance] = reason
        self.rejected.move_to_end(instance)
        while len(self.rejected) > REJECTED_MAX:
            self.rejected.popitem(last=False)

    def forget_rejected(self, instance: str) -> None:
        self.rejected.pop(instance, None)
