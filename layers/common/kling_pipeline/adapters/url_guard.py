"""Fetching URLs we did not choose: only allow-listed hosts, never internal addresses, redirects re-checked.

Image URLs come from Kling (or a relay), so they are untrusted input: a URL pointing at the instance metadata
service or at something inside the VPC must not be fetched (SSRF). Every hop is checked, and the connection
goes to the very address that was checked, so a DNS answer that changes between check and connect (DNS
rebinding) cannot slip an internal address in. A host is untrusted in time too: a fetch given a deadline
ends at it, whatever the host sends or does not send.

The same guard and client deliver the producers' notifications (`notify_url`, adapters/notify_delivery.py): a
producer's URL is as untrusted as Kling's, so it gets the same checks, with one difference of policy
(`any_public_https`): any public https host may be called, not only allow-listed ones.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error

from kling_pipeline.contract.errors import ErrorCode

MAX_REDIRECTS = 3
MAX_POOLS = 32  # connection pools kept per GuardedHttp (one per host and checked address)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The redirects that keep the method and body: a POST answered 301/302/303 would become a GET, so for a POST
# those are answers (failures), not redirects.
SAME_METHOD_REDIRECTS = frozenset({307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "kling-pipeline/0.1 (image copy)"
_GET_HEADERS = {"User-Agent": USER_AGENT, "Accept": "image/png, image/jpeg, */*;q=0.1", "Accept-Encoding": "identity"}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class UrlNotAllowedError(ValueError):
    """The URL (or a redirect) points somewhere images may not be fetched from."""

    code = ErrorCode.URL_NOT_ALLOWED


class FetchError(Exception):
    """The fetch itself failed: DNS, connection, timeout, an HTTP error status, too many redirects.

    `url` (its query left out: signed URLs carry credentials there) and `http_status` say what answered.
    """

    def __init__(
        self, code: ErrorCode, message: str, *, url: str | None = None, http_status: int | None = None
    ) -> None:
        self.code = code
        self.url = url
        self.http_status = http_status
        super().__init__(message)


@dataclass(frozen=True)
class AllowEntry:
    """One IMAGE_HOST_ALLOWLIST entry: `[scheme://]host[:port]` or `[scheme://].suffix[:port]`.

    An exact `host` admits that host on any port over http or https (it was named on purpose, e.g. a local
    simulator). A `.suffix` admits its subdomains (not the suffix itself) over https on 443 only, unless the
    entry says otherwise: `http://.suffix` also admits plain http on 80, `.suffix:8443` that port instead.
    A scheme on an exact entry restricts it to that scheme.
    """

    host: str
    port: int | None = None
    scheme: str | None = None

    @property
    def is_suffix(self) -> bool:
        return self.host.startswith(".")

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.is_suffix:
            schemes = ("https", "http") if self.scheme == "http" else ("https",)
            wanted = self.port if self.port is not None else DEFAULT_PORTS[scheme]
            return scheme in schemes and port == wanted and host.endswith(self.host) and len(host) > len(self.host)
        return host == self.host and self.port in (None, port) and self.scheme in (None, scheme)


def parse_allowlist(entries: Iterable[str], *, name: str = "IMAGE_HOST_ALLOWLIST") -> tuple[AllowEntry, ...]:
    """Allow-list entries as IMAGE_HOST_ALLOWLIST (or `name`) spells them; ValueError names a malformed entry."""
    parsed = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        scheme, has_scheme, rest = entry.partition("://")
        if not has_scheme:
            scheme, rest = "", entry
        try:
            split = urlsplit(f"//{rest}")
            host, port = _normalise_host(split.hostname or ""), split.port
        except ValueError:
            host, port = "", None
        malformed = not host or split.path or split.query or split.username is not None or "*" in entry
        if malformed or (has_scheme and scheme not in DEFAULT_PORTS):
            raise ValueError(
                f"{name}: entry {raw!r} must be a host, host:port or .suffix, optionally after http:// or https://"
            )
        parsed.append(AllowEntry(host, port, scheme or None))
    return tuple(parsed)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def is_public_address(address: IpAddress) -> bool:
    """False for loopback, private, link-local (incl. 169.254.169.254), CGNAT, multicast, reserved, unspecified
    and site-local addresses, and for IPv6 addresses that embed a non-public IPv4 address (mapped, translated,
    compatible, NAT64, 6to4): a gateway would carry a request for one to the address it embeds."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries by one of the standard embeddings, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    last_32_bits = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in prefix for prefix in _NAT64_PREFIXES) or address in _TRANSLATED:
        return last_32_bits
    if address in _COMPATIBLE and int(address) > 1:  # `::` and `::1` are themselves non-public
        return last_32_bits
    return None


@dataclass(frozen=True)
class Destination:
    """A URL that passed the guard, and the checked address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str
    target: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


class UrlGuard:
    """Decides whether a URL may be fetched. Internal addresses pass only for an exact (`host`/`host:port`)
    allow-list entry, e.g. a local simulator; suffix entries admit public addresses only.

    `any_public_https`: an https URL on no entry passes too when every address of its host is public (the
    notification policy); plain http still needs an entry. `allowlist_name` and `field` name the variable and
    the URL's field in the messages.
    """

    def __init__(
        self,
        allowlist: Iterable[str],
        *,
        resolver: Resolver = system_resolver,
        any_public_https: bool = False,
        allowlist_name: str = "IMAGE_HOST_ALLOWLIST",
        field: str = "url",
    ) -> None:
        self._entries = parse_allowlist(allowlist, name=allowlist_name)
        self._resolve = resolver
        self._any_public_https = any_public_https
        self._list = allowlist_name
        self._field = field

    def check(self, url: str) -> Destination:
        """The Destination for `url`, or UrlNotAllowedError saying which rule it breaks."""
        try:
            parts = urlsplit(url)
            scheme, port = parts.scheme.lower(), parts.port
            host = _normalise_host(parts.hostname or "")
        except ValueError:
            raise UrlNotAllowedError(f"{self._field}: must be an absolute http(s) URL (got {url[:200]!r})") from None
        if scheme not in DEFAULT_PORTS or not host:
            raise UrlNotAllowedError(f"{self._field}: must be an absolute http(s) URL (got {url[:200]!r})")
        if parts.username is not None or parts.password is not None:
            raise UrlNotAllowedError(f"{self._field}: must not carry credentials (host {host})")
        port = port or DEFAULT_PORTS[scheme]
        matching = [entry for entry in self._entries if entry.matches(scheme, host, port)]
        if not matching and not (self._any_public_https and scheme == "https"):
            where = f"{self._field}: {scheme}://{host}:{port}"
            if self._any_public_https:
                raise UrlNotAllowedError(f"{where} must be https (plain http only for a host in {self._list})")
            raise UrlNotAllowedError(f"{where} is not in {self._list}")
        exact = any(not entry.is_suffix for entry in matching)
        addresses = self._addresses(host, port)
        if not exact:
            for address in addresses:
                if not is_public_address(address):
                    raise UrlNotAllowedError(
                        f"{self._field}: host {host} resolves to non-public address {address} "
                        f"(only an exact {self._list} entry may do that)"
                    )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Destination(url, scheme, host, port, str(addresses[0]), target)

    def _addresses(self, host: str, port: int) -> list[IpAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            resolved = [ipaddress.ip_address(raw) for raw in self._resolve(host, port)]
        except (OSError, ValueError) as exc:
            raise FetchError(
                ErrorCode.DNS_FAILED, f"{self._field}: host {host} could not be resolved ({exc})"
            ) from None
        if not resolved:
            raise FetchError(ErrorCode.DNS_FAILED, f"{self._field}: host {host} resolved to no address")
        return resolved


class _Cutoff:
    """Shuts the sockets of one fetch down once its deadline passes.

    Socket timeouts bound each read, not their sum: a host sending a byte every half second (in the headers or
    the body) would hold a fetch, and the worker reading it, as long as it liked. A shutdown wakes a read that
    is blocked in another thread at once; the read then fails or sees the stream end.
    """

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self._fired:  # connected while the deadline passed: cut at once
                _shut_down(sock)
            elif not self._ended.is_set():
                self._sockets.append(sock)

    def end(self) -> None:
        """Stop watching. Once this returns no socket is touched: a connection may go back to its pool and serve
        another fetch."""
        with self._lock:
            self._ended.set()
            self._sockets.clear()
        self._thread.join()

    def _run(self) -> None:
        # Fire only once time.monotonic() has reached the deadline, so a reader whose deadline has not passed
        # knows its stream was not cut.
        while (left := self._deadline - time.monotonic()) > 0:
            if self._ended.wait(left):
                return
        with self._lock:
            if self._ended.is_set():
                return
            self._fired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's shutdown, not SSLSocket's: that one drops the TLS state under a reader in another thread.
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_opening = threading.local()  # .cutoff: the _Cutoff of the fetch this thread is opening, if it has a deadline


def _watch_current(sock: socket.socket | None) -> None:
    cutoff: _Cutoff | None = getattr(_opening, "cutoff", None)
    if cutoff is not None:
        cutoff.watch(sock)


# The pool picks the connection inside urlopen; it hands its socket to the fetch's _Cutoff just before waiting
# for the status line, the first wait a host can drag out byte by byte (a connect is bounded by its timeout).
class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]  # as urllib3's own override
        _watch_current(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]  # as urllib3's own override
        _watch_current(self.sock)
        return super().getresponse()


class _HttpPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HttpsPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


@dataclass(frozen=True)
class _Request:
    method: str
    headers: Mapping[str, str]
    body: bytes | None = None
    follows: frozenset[int] = REDIRECT_STATUSES


_GET = _Request("GET", _GET_HEADERS)


class GuardedHttp:
    """GETs (and POSTs to) untrusted URLs through a UrlGuard, following redirects itself (each hop re-checked)."""

    def __init__(
        self,
        guard: UrlGuard,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        max_redirects: int = MAX_REDIRECTS,
        pool_size: int = 4,
        max_pools: int = MAX_POOLS,
    ) -> None:
        self._guard = guard
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_redirects = max_redirects
        self._pool_size = pool_size
        # Least recently used first; a long-lived container meets many CDN addresses, so the oldest pool is
        # closed once there are `max_pools` (its connections in use close when they are put back).
        self._pools: OrderedDict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = OrderedDict()
        self._max_pools = max_pools
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def fetch(self, url: str, *, deadline: float | None = None) -> Iterator[urllib3.BaseHTTPResponse]:
        """A 2xx response to stream inside the block; closed (and its connection released) after it.

        With `deadline` (a time.monotonic() value) nothing the host does keeps the caller past it: each connect
        and socket read waits at most the time left, and the fetch's socket is shut down the moment it passes,
        which ends a read in progress with an error or with what looks like the end of the body. So a body that
        ends once the deadline has passed may be cut short and must not be trusted. No answer in time is
        FetchError(COPY_TIMEOUT).
        """
        cutoff = None if deadline is None else _Cutoff(deadline)
        response = None
        try:
            response = self._open(url, deadline, cutoff, _GET)
            yield response
        finally:
            if cutoff is not None:
                cutoff.end()  # before the connection is released: it may serve another fetch next
            if response is not None:
                _discard(response)

    def open(self, url: str) -> urllib3.BaseHTTPResponse:
        """A 2xx response whose body is not read yet (stream it, then `release_conn()`); no deadline."""
        return self._open(url, None, None, _GET)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], *, deadline: float) -> int:
        """POST `body` with `headers`; the 2xx status, else FetchError (`http_status` says what answered).

        Only 307/308 are followed (re-checked, body sent again). The answer's body is never read, only closed:
        nothing a receiver sends back is trusted, kept or waited for beyond its status line, by `deadline`.
        """
        request = _Request("POST", headers, body, SAME_METHOD_REDIRECTS)
        cutoff = _Cutoff(deadline)
        response = None
        try:
            response = self._open(url, deadline, cutoff, request)
            return response.status
        finally:
            cutoff.end()
            if response is not None:
                _discard(response)

    def _open(
        self, url: str, deadline: float | None, cutoff: _Cutoff | None, request: _Request
    ) -> urllib3.BaseHTTPResponse:
        _opening.cutoff = cutoff
        try:
            return self._follow(url, deadline, request)
        finally:
            _opening.cutoff = None

    def _follow(self, url: str, deadline: float | None, request: _Request) -> urllib3.BaseHTTPResponse:
        method = request.method
        for _hop in range(self._max_redirects + 1):
            destination = self._guard.check(url)
            response = self._send(destination, deadline, request)
            if response.status not in request.follows:
                if 200 <= response.status < 300:
                    return response
                _discard(response)
                raise FetchError(
                    ErrorCode.HTTP_ERROR,
                    f"{method} {_short(url)}: HTTP {response.status}",
                    url=_short(url),
                    http_status=response.status,
                )
            location = response.headers.get("Location")
            _discard(response)
            if not location:
                raise FetchError(
                    ErrorCode.HTTP_ERROR,
                    f"{method} {_short(url)}: HTTP {response.status} without Location",
                    url=_short(url),
                    http_status=response.status,
                )
            url = urljoin(url, location)
        raise FetchError(
            ErrorCode.TOO_MANY_REDIRECTS,
            f"{method}: more than {self._max_redirects} redirects (last {_short(url)})",
            url=_short(url),
        )

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()

    def _send(self, destination: Destination, deadline: float | None, request: _Request) -> urllib3.BaseHTTPResponse:
        timeout = self._timeout(destination, deadline, request.method)
        method = request.method
        try:
            return self._pool(destination).urlopen(
                method,
                destination.target,
                body=request.body,
                headers={"Host": destination.host_header, **request.headers},
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
                timeout=timeout,
            )
        except Urllib3Error as exc:
            if deadline is not None and time.monotonic() >= deadline:  # timed out at, or cut by, the deadline
                raise FetchError(
                    ErrorCode.COPY_TIMEOUT,
                    f"{method} {_short(destination.url)}: no response before the deadline",
                    url=_short(destination.url),
                ) from None
            raise FetchError(
                ErrorCode.NETWORK_ERROR, f"{method} {_short(destination.url)}: {exc}", url=_short(destination.url)
            ) from None

    def _timeout(self, destination: Destination, deadline: float | None, method: str) -> urllib3.Timeout:
        if deadline is None:
            return urllib3.Timeout(connect=self._connect_timeout, read=self._read_timeout)
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError(
                ErrorCode.COPY_TIMEOUT,
                f"{method} {_short(destination.url)}: the deadline passed before the request",
                url=_short(destination.url),
            )
        return urllib3.Timeout(connect=min(self._connect_timeout, left), read=min(self._read_timeout, left))

    def _pool(self, destination: Destination) -> urllib3.HTTPConnectionPool:
        key = (destination.scheme, destination.address, destination.port, destination.host)
        evicted: list[urllib3.HTTPConnectionPool] = []
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = self._new_pool(destination)
                while len(self._pools) > self._max_pools:
                    evicted.append(self._pools.popitem(last=False)[1])
            self._pools.move_to_end(key)
        for old in evicted:
            old.close()
        return pool

    def _new_pool(self, destination: Destination) -> urllib3.HTTPConnectionPool:
        # Connect to the checked address; TLS still verifies the certificate against the host name.
        if destination.scheme == "https":
            return _HttpsPool(
                destination.address,
                destination.port,
                maxsize=self._pool_size,
                block=False,
                server_hostname=destination.host,
                assert_hostname=destination.host,
                cert_reqs="CERT_REQUIRED",
                ca_certs=certifi.where(),
            )
        return _HttpPool(destination.address, destination.port, maxsize=self._pool_size, block=False)


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".") if host.strip(".") else ""


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    # Close rather than drain: an unwanted body may be arbitrarily large.
    response.close()
    response.release_conn()


def _short(url: str) -> str:
    """The URL without its query (signed URLs carry credentials there), clipped for messages."""
    return url.split("?", 1)[0][:200]
