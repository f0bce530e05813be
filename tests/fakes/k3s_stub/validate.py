"""Flag validation done before anything starts (pkg/cli/{server,agent}); kept light to import."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse

from tests.fakes.k3s_stub import logs
from tests.fakes.k3s_stub.flags import Args


def token_text(args: Args) -> str:
    """``--token-file`` (content, trailing whitespace trimmed; a missing file is waited for)
    wins over ``--token``."""
    from tests.fakes.k3s_stub.tokens import read_token_file

    text = args.get_str("token")
    if args.get_str("token-file"):
        try:
            text = read_token_file(args.get_str("token-file"))
        except OSError as exc:
            logs.fatal(str(exc) if not exc.errno else f"failed to read token file: {exc}")
    return text


def validate_server(args: Args) -> None:
    """The flag checks of pkg/cli/server/server.go (fatal, exit 1)."""
    endpoint = args.get_str("datastore-endpoint")
    if args.get_str("cluster-reset-restore-path") and not args.get_bool("cluster-reset"):
        logs.fatal("invalid flag use; --cluster-reset required with --cluster-reset-restore-path")
    if args.get_bool("disable-apiserver") and endpoint:
        logs.fatal("invalid flag use; cannot use --disable-apiserver with --datastore-endpoint")
    if args.get_bool("disable-etcd") and endpoint:
        logs.fatal("invalid flag use; cannot use --disable-etcd with --datastore-endpoint")
    if args.get_bool("disable-etcd") and not args.get_str("server"):
        logs.fatal("invalid flag use; --server is required with --disable-etcd")
    if args.get_bool("cluster-reset") and args.get_str("server"):
        logs.fatal(
            "cannot perform cluster-reset while server URL is set - remove server from "
            "configuration before resetting"
        )
    if os.geteuid() != 0 and not (args.get_bool("rootless") or args.get_bool("disable-agent")):
        logs.fatal("server must run as root, or with --rootless and/or --disable-agent")
    _networks(args)


_EGRESS_MODES = ("agent", "cluster", "pod", "disabled")


def _networks(args: Args) -> None:
    """The address checks of the server's network flags (`invalid <flag> <value>`)."""
    for flag in ("cluster-cidr", "service-cidr"):
        for value in args.get_list(flag):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                logs.fatal(f"invalid {flag} {value}")
    for value in args.get_list("cluster-dns"):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            logs.fatal(f"invalid cluster-dns address {value}")
    ports = args.get_str("service-node-port-range")
    low, _, high = ports.partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
        logs.fatal(f"invalid port range {ports}")
    mode = args.get_str("egress-selector-mode")
    if mode not in _EGRESS_MODES:
        logs.fatal(f"invalid egress-selector-mode {mode}")


def validate_agent(args: Args) -> None:
    """pkg/cli/agent: token, then server, then the supervisor URL scheme."""
    if not token_text(args):
        logs.fatal("--token is required")
    server = args.get_str("server")
    if not server:
        logs.fatal("--server is required")
    if urllib.parse.urlsplit(server).scheme != "https":
        logs.fatal(f"only https:// URLs are supported, invalid scheme: {server}")
    if os.geteuid() != 0 and not args.get_bool("rootless"):
        logs.fatal("agent requires additional privilege if not run with --rootless")
