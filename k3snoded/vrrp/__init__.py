"""The VRRPv3 speaker (RFC 5798, IPv4) that holds the registration VIP on server nodes.

Public API: :class:`~k3snoded.vrrp.speaker.VrrpSpeaker` and its
:class:`~k3snoded.vrrp.speaker.SpeakerStatus`. The pieces: ``packet`` (codec), ``machine``
(pure state machine), ``netlink`` (the address, over rtnetlink with pyroute2's message
classes), ``garp`` (gratuitous ARP).
See docs/vrrp.md.
"""
