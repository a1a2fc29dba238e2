"""The client's address, for the failed-authentication limit and the audit log.

Behind a reverse proxy every connection comes from the proxy, so one client's bad tokens
would lock out every client behind it. ``server.trusted_proxies`` lists the proxies whose
``X-Forwarded-For`` is believed: the client is the right-most address in that header that is
not itself a trusted proxy (each proxy appends the address it received the request from, so
everything left of the first untrusted hop may be made up by the client). Without trusted
proxies the header is ignored: anyone could send it.

A gateway listening on "::" sees IPv4 peers as IPv4-mapped IPv6 addresses
(``::ffff:10.0.0.5``); every address is read in its IPv4 form where it has one, so that an
IPv4 proxy matches its IPv4 network and one client is one address however it arrived.
"""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web

from gateway.api.context import SETTINGS
from gateway.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def client_address(request: web.Request) -> str:
    """The address the request came from, through trusted proxies; "unknown" if none."""
    peer_text = request.remote or ""
    peer = _address(peer_text)
    named = (peer_text or "unknown") if peer is None else str(peer)
    proxies = trusted_networks(request.app[SETTINGS].server.trusted_proxies)
    if not proxies or not _within(peer, proxies):
        return named
    hops = [hop.strip() for header in request.headers.getall("X-Forwarded-For", [])
            for hop in header.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if not _within(address, proxies):
            return "unknown" if address is None else str(address)
    return named


@functools.cache
def trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """``server.trusted_proxies`` parsed; an entry that is no address or network is an error
    naming the setting."""
    networks: list[Network] = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {entry!r} is not an IP address or "
                              "network") from None
        networks.append(network)
        # Addresses are compared in IPv4 form when IPv4-mapped (see _address), so a network
        # written in the mapped form, or one containing all of it, names IPv4 ones too.
        if isinstance(network, ipaddress.IPv6Network):
            if network.subnet_of(_IPV4_MAPPED):
                networks.append(ipaddress.IPv4Network(
                    (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)))
            elif network.supernet_of(_IPV4_MAPPED):
                networks.append(ipaddress.IPv4Network("0.0.0.0/0"))
    return tuple(networks)


def _address(text: str) -> Address | None:
    """The address ``text`` names, IPv4 when it is IPv4-mapped; None when it names none."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)
