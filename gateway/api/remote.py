"""The client's address, for the failed-authentication limit and the audit log.

Behind a reverse proxy every connection comes from the proxy, so one client's bad tokens
would lock out every client behind it. ``server.trusted_proxies`` lists the proxies whose
``X-Forwarded-For`` is believed: the client is the right-most address in that header that is
not itself a trusted proxy (each proxy appends the address it received the request from, so
everything left of the first untrusted hop may be made up by the client). Without trusted
proxies the header is ignored: anyone could send it.
"""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web

from gateway.api.context import SETTINGS
from gateway.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: web.Request) -> str:
    """The address the request came from, through trusted proxies; "unknown" if none."""
    peer = request.remote or ""
    proxies = trusted_networks(request.app[SETTINGS].server.trusted_proxies)
    if not proxies or not _within(_address(peer), proxies):
        return peer or "unknown"
    hops = [hop.strip() for header in request.headers.getall("X-Forwarded-For", [])
            for hop in header.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if not _within(address, proxies):
            return hop if address is not None else "unknown"
    return peer


@functools.cache
def trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """``server.trusted_proxies`` parsed; an entry that is no address or network is an error
    naming the setting."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {entry!r} is not an IP address or "
                              "network") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _within(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)
