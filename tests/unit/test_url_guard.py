"""The SSRF guard: allow-list entries, internal addresses, resolved addresses.

Policy tests use an injected resolver (no DNS, no sockets). The redirect tests need real HTTP on loopback and
live in tests/integration/test_url_guard_redirects.py.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_pipeline.adapters.url_guard import (
    FetchError,
    GuardedHttp,
    UrlGuard,
    UrlNotAllowedError,
    is_public_address,
    parse_allowlist,
)
from tests.fakes import static_dns

PUBLIC_IP = "8.8.8.8"


def _guard(*entries: str, dns: dict[str, list[str]] | None = None) -> UrlGuard:
    return UrlGuard(entries, resolver=static_dns(dns or {}))


# -- allow-list entries --------------------------------------------------------------------------------------


def test_entries_are_exact_hosts_host_ports_or_suffixes() -> None:
    entries = parse_allowlist([" CDN.KlingAI.com ", "127.0.0.1:8080", ".klingai.com", "[::1]:9000", ""])
    assert [(entry.host, entry.port, entry.is_suffix) for entry in entries] == [
        ("cdn.klingai.com", None, False),
        ("127.0.0.1", 8080, False),
        (".klingai.com", None, True),
        ("::1", 9000, False),
    ]
    # A scheme or port says explicitly what an entry admits beyond https on 443 (hardening #12).
    explicit = parse_allowlist(["http://cdn.klingai.com", ".klingai.com:8443", "HTTPS://.relay.example"])
    assert [(entry.host, entry.port, entry.scheme) for entry in explicit] == [
        ("cdn.klingai.com", None, "http"),
        (".klingai.com", 8443, None),
        (".relay.example", None, "https"),
    ]


@pytest.mark.parametrize(
    "entry",
    ["ftp://cdn.klingai.com", "cdn.klingai.com/path", "*.klingai.com", "https://", "host:port", "user@host"],
)
def test_malformed_entries_are_refused_with_the_entry_named(entry: str) -> None:
    with pytest.raises(ValueError, match="IMAGE_HOST_ALLOWLIST"):
        parse_allowlist([entry])


# -- hosts ---------------------------------------------------------------------------------------------------


def test_a_suffix_admits_subdomains_that_resolve_to_public_addresses() -> None:
    guard = _guard(".klingai.com", dns={"cdn.klingai.com": [PUBLIC_IP], "a.b.klingai.com": [PUBLIC_IP]})
    destination = guard.check("https://CDN.klingai.com./outputs/1.png?sig=abc")
    assert (destination.host, destination.port, destination.address) == ("cdn.klingai.com", 443, PUBLIC_IP)
    assert destination.target == "/outputs/1.png?sig=abc"
    assert destination.host_header == "cdn.klingai.com"
    assert guard.check("https://a.b.klingai.com/x.png").address == PUBLIC_IP


@pytest.mark.parametrize(
    "url", ["https://klingai.com/x.png", "https://evilklingai.com/x.png", "https://klingai.com.evil.test/x.png"]
)
def test_a_suffix_does_not_admit_the_bare_domain_or_look_alikes(url: str) -> None:
    guard = _guard(
        ".klingai.com",
        dns={"klingai.com": [PUBLIC_IP], "evilklingai.com": [PUBLIC_IP], "klingai.com.evil.test": [PUBLIC_IP]},
    )
    with pytest.raises(UrlNotAllowedError, match="not in IMAGE_HOST_ALLOWLIST"):
        guard.check(url)


def test_a_host_port_entry_admits_only_that_port() -> None:
    guard = _guard("127.0.0.1:8080")
    assert guard.check("http://127.0.0.1:8080/_sim/images/t/0.png").address == "127.0.0.1"
    with pytest.raises(UrlNotAllowedError):
        guard.check("http://127.0.0.1:8081/_sim/images/t/0.png")
    with pytest.raises(UrlNotAllowedError):
        guard.check("http://127.0.0.1/_sim/images/t/0.png")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://127.0.0.1:9999/x.png",
        "http://localhost/x.png",
        "http://10.0.0.5/x.png",
        "http://192.168.1.1/x.png",
        "http://[::1]/x.png",
        "http://0.0.0.0/x.png",
    ],
)
def test_internal_addresses_are_refused_when_not_allow_listed(url: str) -> None:
    guard = _guard(".klingai.com", "127.0.0.1:8080", dns={"localhost": ["127.0.0.1"]})
    with pytest.raises(UrlNotAllowedError):
        guard.check(url)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.10",
        "100.100.100.200",
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
    ],
)
def test_a_suffix_host_resolving_to_an_internal_address_is_refused(address: str) -> None:
    guard = _guard(".klingai.com", dns={"cdn.klingai.com": [address]})
    with pytest.raises(UrlNotAllowedError, match=re.escape(f"non-public address {ipaddress.ip_address(address)}")):
        guard.check("https://cdn.klingai.com/x.png")


def test_every_resolved_address_is_checked_not_just_the_first() -> None:
    guard = _guard(".klingai.com", dns={"cdn.klingai.com": [PUBLIC_IP, "10.0.0.1"]})
    with pytest.raises(UrlNotAllowedError, match=re.escape("10.0.0.1")):
        guard.check("https://cdn.klingai.com/x.png")


def test_an_exact_entry_may_point_at_an_internal_address() -> None:
    guard = _guard("sim.local:8080", dns={"sim.local": ["127.0.0.1"]})
    assert guard.check("http://sim.local:8080/x.png").address == "127.0.0.1"


def test_the_metadata_address_passes_only_as_an_exact_entry() -> None:
    assert _guard("169.254.169.254").check("http://169.254.169.254/x").address == "169.254.169.254"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cdn.klingai.com/x.png",
        "file:///etc/passwd",
        "//cdn.klingai.com/x.png",
        "cdn.klingai.com/x.png",
        "https://user:pw@cdn.klingai.com/x.png",
        "https://cdn.klingai.com:99999/x.png",
        "http:///x.png",
    ],
)
def test_only_plain_absolute_http_urls_pass(url: str) -> None:
    with pytest.raises(UrlNotAllowedError):
        _guard(".klingai.com", dns={"cdn.klingai.com": [PUBLIC_IP]}).check(url)


def test_a_host_that_does_not_resolve_is_a_fetch_error() -> None:
    with pytest.raises(FetchError) as raised:
        _guard(".klingai.com").check("https://nowhere.klingai.com/x.png")
    assert raised.value.code == "dns_failed"


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_passes_a_suffix_entry_exactly_when_it_is_global(address: ipaddress.IPv4Address) -> None:
    guard = _guard(".klingai.com", dns={"cdn.klingai.com": [str(address)]})
    try:
        guard.check("https://cdn.klingai.com/x.png")
        passed = True
    except UrlNotAllowedError:
        passed = False
    assert passed == (address.is_global and not address.is_multicast)
    assert passed == is_public_address(address)


@given(
    st.ip_addresses(v=4, network="10.0.0.0/8")
    | st.ip_addresses(v=4, network="169.254.0.0/16")
    | st.ip_addresses(v=4, network="127.0.0.0/8")
    | st.ip_addresses(v=4, network="192.168.0.0/16")
)
def test_private_loopback_and_link_local_ranges_are_never_public(address: ipaddress.IPv4Address) -> None:
    assert not is_public_address(address)
    assert not is_public_address(ipaddress.IPv6Address(f"::ffff:{address}"))


# -- hardening (issue 13) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::7f00:1",  # local-use NAT64 of 127.0.0.1
        "::10.0.0.1",  # IPv4-compatible
        "::127.0.0.1",
        "::ffff:0:a00:1",  # IPv4-translated
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "fec0::1",  # site-local
        "fec0:0:0:ffff::1",
    ],
)
def test_nat64_ipv4_compatible_and_site_local_addresses_are_refused(address: str) -> None:
    """Regression (hardening #11): addresses that embed, or are, a non-public address pass no suffix entry."""
    assert not is_public_address(ipaddress.ip_address(address))
    guard = _guard(".klingai.com", dns={"cdn.klingai.com": [address]})
    with pytest.raises(UrlNotAllowedError, match="non-public address"):
        guard.check("https://cdn.klingai.com/x.png")


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "2606:4700::1111"])
def test_addresses_embedding_a_public_address_stay_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url", ["http://cdn.klingai.com/x.png", "https://cdn.klingai.com:8443/x.png", "http://cdn.klingai.com:443/x.png"]
)
def test_a_suffix_entry_admits_https_on_443_only(url: str) -> None:
    """Regression (hardening #12): `.suffix` means https on port 443, not plain http or any port."""
    guard = _guard(".klingai.com", dns={"cdn.klingai.com": [PUBLIC_IP]})
    with pytest.raises(UrlNotAllowedError, match="not in IMAGE_HOST_ALLOWLIST"):
        guard.check(url)
    assert guard.check("https://cdn.klingai.com/x.png").port == 443


def test_a_suffix_entry_may_say_http_or_another_port_explicitly() -> None:
    dns = {"cdn.relay.example": [PUBLIC_IP]}
    assert _guard("http://.relay.example", dns=dns).check("http://cdn.relay.example/x.png").port == 80
    assert _guard(".relay.example:8443", dns=dns).check("https://cdn.relay.example:8443/x.png").port == 8443
    with pytest.raises(UrlNotAllowedError):
        _guard(".relay.example:8443", dns=dns).check("https://cdn.relay.example/x.png")
    with pytest.raises(UrlNotAllowedError):
        _guard("https://.relay.example", dns=dns).check("http://cdn.relay.example/x.png")


def test_connection_pools_are_bounded_and_the_oldest_closed() -> None:
    """Regression (hardening #13): one pool per resolved address, never evicted, grew without bound."""
    http = GuardedHttp(UrlGuard([".klingai.com"]), max_pools=3)
    destinations = [
        UrlGuard([".klingai.com"], resolver=static_dns({f"cdn{i}.klingai.com": [f"93.184.216.{i}"]})).check(
            f"https://cdn{i}.klingai.com/x.png"
        )
        for i in range(1, 6)
    ]
    pools = [http._pool(destination) for destination in destinations]
    assert len(http._pools) == 3
    assert [pool.pool is None for pool in pools] == [True, True, False, False, False]  # the two oldest closed
    assert http._pool(destinations[-1]) is pools[-1]  # reused, not rebuilt
