"""What a node says about itself: a :class:`Peer` as short string fields, and as mDNS TXT.

The same fields travel in mDNS TXT records (signed with :func:`signing.sign_record`) and in the
peer API's ``GET /v1/peers`` answer. Keys are short because every TXT string (``key=value``)
is limited to 255 bytes:

====  ==========================================  =================
key   meaning                                     example
====  ==========================================  =================
v     format version                              ``1``
n     node name                                   ``n1``
c     cluster name                                ``lab``
a     addresses, comma-separated                  ``198.18.0.11``
p     peer-API port                               ``6480``
r     role now (none/server/agent)                ``server``
g     registration address, when known            ``198.18.0.100``
h     the cluster CA hash agents pin, when known  64 lower-case hex
t     ``1``: the servers take the agent token     ``1``
b     ``1``: the node leaves (signed goodbye)     ``1``
ts    signing time (Unix seconds, 3 decimals)     ``1764080000.123``
sig   HMAC-SHA256, URL-safe base64                43 characters
====  ==========================================  =================

Parsing raises ValueError with a short reason; it never trusts a field it has not checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from k3snoded.model import Peer, Role
from k3snoded.tokens import is_ca_hash

FORMAT_VERSION = "1"
LEAVING_FIELD = "b"  # "1" in the record a node signs as it leaves (receivers drop it at once)
TXT_ITEM_MAX = 255
_NAME_MAX = 63


def peer_to_fields(peer: Peer) -> dict[str, str]:
    """The unsigned fields announcing ``peer``."""
    fields = {
        "v": FORMAT_VERSION,
        "n": peer.name,
        "c": peer.cluster,
        "a": ",".join(peer.addresses),
        "p": str(peer.api_port),
        "r": peer.role.value,
    }
    if peer.registration:
        fields["g"] = peer.registration
    if peer.ca_hash:
        fields["h"] = peer.ca_hash
        if peer.agent_token:
            fields["t"] = "1"
    return fields


def _check_name(value: str, what: str) -> str:
    if not value or len(value) > _NAME_MAX or not value.isprintable() or "," in value:
        raise ValueError(f"bad {what} {value!r}")
    return value


def peer_from_fields(fields: Mapping[str, str]) -> Peer:
    """Parse announced fields (already verified) back into a Peer; ValueError if malformed."""
    if fields.get("v") != FORMAT_VERSION:
        raise ValueError(f"unsupported format version {fields.get('v')!r}")
    try:
        name, cluster, raw_addresses, raw_port, raw_role = (
            fields[k] for k in ("n", "c", "a", "p", "r")
        )
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    addresses: list[str] = []
    for item in raw_addresses.split(",") if raw_addresses else ():
        try:
            addresses.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"bad address {item!r}") from None
    if not raw_port.isascii() or not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ValueError(f"bad port {raw_port!r}")
    try:
        role = Role(raw_role)
    except ValueError:
        raise ValueError(f"bad role {raw_role!r}") from None
    registration = fields.get("g") or None
    if registration is not None:
        _check_name(registration, "registration address")
    ca_hash = fields.get("h") or None
    if ca_hash is not None and not is_ca_hash(ca_hash):
        raise ValueError("bad CA hash")
    if fields.get("t", "1") != "1" or ("t" in fields and ca_hash is None):
        raise ValueError(f"bad agent-token field {fields.get('t')!r}")
    return Peer(
        name=_check_name(name, "node name"),
        cluster=_check_name(cluster, "cluster name"),
        addresses=tuple(addresses),
        api_port=int(raw_port),
        role=role,
        registration=registration,
        ca_hash=ca_hash,
        agent_token=fields.get("t") == "1",
    )


def encode_txt(record: Mapping[str, str]) -> dict[bytes, bytes]:
    """TXT properties for zeroconf; ValueError if an item would exceed 255 bytes."""
    out: dict[bytes, bytes] = {}
    for key, value in record.items():
        k, v = key.encode(), value.encode()
        if not k or b"=" in k or len(k) + 1 + len(v) > TXT_ITEM_MAX:
            raise ValueError(f"TXT item {key!r} does not fit in {TXT_ITEM_MAX} bytes")
        out[k] = v
    return out


def decode_txt(properties: Mapping[bytes, bytes | None]) -> dict[str, str]:
    """Strings from zeroconf's TXT properties; ValueError on a key without value or bad UTF-8."""
    out: dict[str, str] = {}
    for key, value in properties.items():
        if value is None:
            raise ValueError(f"TXT key {key!r} without value")
        try:
            out[key.decode()] = value.decode()
        except UnicodeDecodeError:
            raise ValueError("TXT record is not UTF-8") from None
    return out
