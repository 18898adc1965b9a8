"""Loopback-only networking for the Jina client checks (jina_client_check.py, jina_grpc_check.py).

`install()` must run before jina, aiohttp or grpc are imported. It sets the environment Jina reads
(no telemetry, no uvloop: uvloop connects and resolves in C, around the Python-level guard; no
proxies), then patches socket.socket.connect/connect_ex/sendto and socket.getaddrinfo & co. so that
anything but a loopback address raises. Every refused attempt is kept in `REFUSED`, which the
checks report at the end as a failure. grpcio's C core connects on its own: the gRPC check only
ever gives it the loopback address it is handed, with no proxy variable left.
"""

import ipaddress
import os
import socket
import sys

REFUSED = []

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "GRPC_PROXY",
               "http_proxy", "https_proxy", "all_proxy", "grpc_proxy")


class NonLoopbackRefused(PermissionError):
    """Raised for any attempt to reach or resolve a non-loopback address."""


def is_loopback(host):
    if host is None:
        return True  # getaddrinfo(None, ...) only yields loopback / wildcard
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    name = str(host).strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.split("%", 1)[0]  # an IPv6 zone id
    if name in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _refuse(what, host):
    msg = f"network guard: refused {what} to non-loopback host {host!r}"
    REFUSED.append(msg)
    sys.stderr.write(msg + "\n")
    raise NonLoopbackRefused(msg)


def _check_sockaddr(sock, address, what):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) and address else address
        if not is_loopback(host):
            _refuse(what, host)


def _guard_lookup(real, what):
    def guarded(host, *args, **kwargs):
        if not is_loopback(host):
            _refuse(what, host)
        return real(host, *args, **kwargs)
    return guarded


def install():
    os.environ["JINA_OPTOUT_TELEMETRY"] = "1"
    os.environ["JINA_DISABLE_UVLOOP"] = "1"
    sys.modules.setdefault("uvloop", None)  # any `import uvloop` fails loudly
    os.environ.setdefault("JINA_LOG_LEVEL", "WARNING")
    for var in _PROXY_VARS:
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = os.environ["no_grpc_proxy"] = "*"

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        _check_sockaddr(self, address, "connect")
        return real_connect(self, address)

    def connect_ex(self, address):
        _check_sockaddr(self, address, "connect")
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        if args:
            _check_sockaddr(self, args[-1], "sendto")
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            _refuse("DNS lookup (getaddrinfo)", host)
        found = real_getaddrinfo(host, *args, **kwargs)
        # `localhost` must resolve to loopback only; anything else is dropped.
        return [r for r in found
                if r[0] not in (socket.AF_INET, socket.AF_INET6) or is_loopback(r[4][0])]

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = _guard_lookup(socket.gethostbyname, "DNS lookup (gethostbyname)")
    socket.gethostbyname_ex = _guard_lookup(socket.gethostbyname_ex,
                                            "DNS lookup (gethostbyname_ex)")
    socket.gethostbyaddr = _guard_lookup(socket.gethostbyaddr,
                                         "reverse DNS lookup (gethostbyaddr)")
