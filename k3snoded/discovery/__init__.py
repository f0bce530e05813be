"""Discovery: finds peers (mDNS, seed URLs) and authenticates what they say. Never liveness (D3).

Public modules: ``signing`` (keys, signed records/requests/responses), ``mdns``
(:class:`~k3snoded.discovery.mdns.MdnsDiscovery`), ``seed``
(:class:`~k3snoded.discovery.seed.SeedDiscovery`), ``peer_api`` (the signed ``GET /v1/peers``
server routes and client).
"""
