"""Loopback-only network guard for the Jina side of `flowmesh-bench compare`.

`install()` makes every attempt of this Python process to reach or resolve anything but a
loopback address raise `NonLoopbackRefused` (and log it), through every path Jina 3.34 and its
libraries use:

- the socket module: `socket.socket.connect`, `connect_ex`, `sendto`, `socket.getaddrinfo`,
  `gethostbyname(_ex)`, `gethostbyaddr`, `create_connection` (urllib, requests, aiohttp and
  asyncio's default event loop all end there: the loop resolves through `socket.getaddrinfo`
  and connects through `socket.socket.connect`);
- uvloop, which Jina and uvicorn prefer and which resolves and connects in C (libuv): its
  `Loop.getaddrinfo`, `create_connection`, `create_datagram_endpoint`, `sock_connect`;
- gRPC, whose C core resolves and connects by itself (Jina's gateway reaches its executors over
  gRPC): `grpc.insecure_channel`, `grpc.secure_channel` and their `grpc.aio` twins refuse a
  non-loopback target;
- Jina's own lookups of this machine's addresses: `jina.helper.get_public_ip` (which asks three
  web services) returns None and `get_internal_ip` returns 127.0.0.1, in `jina.helper` and in
  every `jina.*` module that imported them by name (the orchestrator's `address_public`).

uvloop, gRPC and Jina are patched when they are imported (an import hook), so installing the
guard costs nothing in a process that never imports them. `sitecustomize.py` beside this file
installs it in every Python process started with this folder on PYTHONPATH, so that Jina's
executor processes get it whether multiprocessing forks or spawns them.

Every refusal is written to stderr and, when FLOWMESH_NETGUARD_LOG names a file, appended to it,
so that the harness sees refusals that the code which attempted them swallowed.

Run as a script, it checks itself: `python flowmesh_netguard.py --self-test`.
"""

import importlib
import ipaddress
import os
import socket
import sys

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_installed = False


class NonLoopbackRefused(PermissionError):
    """An attempt to reach or resolve a non-loopback address."""


def _host_text(host):
    """`host` as plain lowercase text: no brackets around an IPv6 address, zone or final dot."""
    text = bytes(host).decode("ascii", "replace") if isinstance(host, (bytes, bytearray)) else str(host)
    text = text.strip().lower().rstrip(".")
    if len(text) > 1 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    return text.partition("%")[0]


def is_loopback(host):
    """Whether `host` (a name, an address, bytes or None) can only mean this machine."""
    if host is None:
        return True  # getaddrinfo(None, ...) gives the wildcard or loopback addresses
    text = _host_text(host)
    if text in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    # An IPv4-mapped IPv6 address is as loopback as the IPv4 address it carries.
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _refuse(what, host):
    msg = f"flowmesh network guard (pid {os.getpid()}): refused {what} to non-loopback {host!r}"
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except Exception:  # a closed stderr must not hide the refusal itself
        pass
    log = os.environ.get("FLOWMESH_NETGUARD_LOG")
    if log:
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(msg + "\n")
        except OSError:
            pass
    raise NonLoopbackRefused(msg)


def _check_host(what, host):
    if not is_loopback(host):
        _refuse(what, host)


def _check_sockaddr(sock_family, address, what):
    if sock_family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) and address else address
        _check_host(what, host)


def grpc_target_host(target):
    """The host of a gRPC channel target (`host:port`, `dns:///host:port`, `ipv4:a:p,b:p`,
    `[v6]:port`); `None` for a Unix socket, which is local."""
    t = str(target).strip()
    if t.startswith("unix:") or t.startswith("unix-abstract:"):
        return None
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if t.startswith(scheme):
            t = t[len(scheme):]
            break
    if t.startswith("//"):  # dns://authority/host:port or dns:///host:port
        t = t[2:].split("/", 1)[-1]
    hosts = []
    for part in t.split(","):
        part = part.strip()
        if part.startswith("["):
            hosts.append(part[1:part.index("]")] if "]" in part else part)
        elif part.count(":") == 1:
            hosts.append(part.rsplit(":", 1)[0])
        else:
            hosts.append(part)  # no port, or a bare IPv6 address
    bad = [h for h in hosts if not is_loopback(h)]
    return bad[0] if bad else "127.0.0.1"


def _patch_socket():
    real = {
        "connect": socket.socket.connect,
        "connect_ex": socket.socket.connect_ex,
        "sendto": socket.socket.sendto,
        "getaddrinfo": socket.getaddrinfo,
        "gethostbyname": socket.gethostbyname,
        "gethostbyname_ex": socket.gethostbyname_ex,
        "gethostbyaddr": socket.gethostbyaddr,
        "create_connection": socket.create_connection,
    }

    def connect(self, address):
        _check_sockaddr(self.family, address, "connect")
        return real["connect"](self, address)

    def connect_ex(self, address):
        _check_sockaddr(self.family, address, "connect_ex")
        return real["connect_ex"](self, address)

    def sendto(self, data, *args):
        if args:
            _check_sockaddr(self.family, args[-1], "sendto")
        return real["sendto"](self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        _check_host("DNS lookup (getaddrinfo)", host)
        res = real["getaddrinfo"](host, *args, **kwargs)
        # A loopback name must resolve to loopback addresses only.
        return [
            r
            for r in res
            if r[0] not in (socket.AF_INET, socket.AF_INET6) or is_loopback(r[4][0])
        ]

    def gethostbyname(host):
        _check_host("DNS lookup (gethostbyname)", host)
        return real["gethostbyname"](host)

    def gethostbyname_ex(host):
        _check_host("DNS lookup (gethostbyname_ex)", host)
        return real["gethostbyname_ex"](host)

    def gethostbyaddr(host):
        _check_host("reverse DNS lookup (gethostbyaddr)", host)
        return real["gethostbyaddr"](host)

    def create_connection(address, *args, **kwargs):
        _check_host("create_connection", address[0] if address else None)
        return real["create_connection"](address, *args, **kwargs)

    # Each guarded function replaces the one of the same name in `real`.
    for owner, guarded in (
        (socket.socket, (connect, connect_ex, sendto)),
        (socket, (getaddrinfo, gethostbyname, gethostbyname_ex, gethostbyaddr, create_connection)),
    ):
        for function in guarded:
            setattr(owner, function.__name__, function)


def _patch_uvloop(module):
    loop = getattr(module, "Loop", None)
    if loop is None or getattr(loop, "_flowmesh_guarded", False):
        return
    real_getaddrinfo = loop.getaddrinfo
    real_create_connection = loop.create_connection
    real_create_datagram_endpoint = loop.create_datagram_endpoint
    real_sock_connect = loop.sock_connect

    async def getaddrinfo(self, host, *args, **kwargs):
        _check_host("DNS lookup (uvloop getaddrinfo)", host)
        return await real_getaddrinfo(self, host, *args, **kwargs)

    async def create_connection(self, protocol_factory, host=None, *args, **kwargs):
        if kwargs.get("sock") is None and host is not None:
            _check_host("connect (uvloop create_connection)", host)
        return await real_create_connection(self, protocol_factory, host, *args, **kwargs)

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, **kwargs):
        if remote_addr is not None:
            _check_host("connect (uvloop create_datagram_endpoint)", remote_addr[0])
        return await real_create_datagram_endpoint(
            self, protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
        )

    async def sock_connect(self, sock, address):
        _check_sockaddr(sock.family, address, "connect (uvloop sock_connect)")
        return await real_sock_connect(self, sock, address)

    loop.getaddrinfo = getaddrinfo
    loop.create_connection = create_connection
    loop.create_datagram_endpoint = create_datagram_endpoint
    loop.sock_connect = sock_connect
    loop._flowmesh_guarded = True


def _guard_channel(factory, what):
    if getattr(factory, "_flowmesh_guarded", False):
        return factory

    def channel(target, *args, **kwargs):
        host = grpc_target_host(target)
        if host is not None:
            _check_host(what, host)
        return factory(target, *args, **kwargs)

    channel._flowmesh_guarded = True
    channel.__doc__ = factory.__doc__
    return channel


def _patch_grpc(module, prefix):
    for name in ("insecure_channel", "secure_channel"):
        f = getattr(module, name, None)
        if f is not None:
            setattr(module, name, _guard_channel(f, f"gRPC channel ({prefix}.{name})"))


def _no_public_ip(*_args, **_kwargs):
    """flowmesh: never ask web services for this machine's public address."""
    return None


def _loopback_internal_ip(*_args, **_kwargs):
    """flowmesh: this machine's address for others is loopback."""
    return "127.0.0.1"


_JINA_ORIGINALS = {}


def _patch_jina_module(module):
    helper = sys.modules.get("jina.helper")
    if module.__name__ == "jina.helper":
        _JINA_ORIGINALS["get_public_ip"] = getattr(module, "get_public_ip", None)
        _JINA_ORIGINALS["get_internal_ip"] = getattr(module, "get_internal_ip", None)
        helper = module
    if helper is None:
        return
    for name, replacement in (("get_public_ip", _no_public_ip), ("get_internal_ip", _loopback_internal_ip)):
        original = _JINA_ORIGINALS.get(name)
        current = getattr(module, name, None)
        if current is not None and (current is original or module is helper):
            setattr(module, name, replacement)


def patch_loaded_jina():
    """Patches every `jina.*` module already imported (the import hook does it for later ones)."""
    if "jina.helper" in sys.modules:
        _patch_jina_module(sys.modules["jina.helper"])
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "jina" or name.startswith("jina.")):
            _patch_jina_module(module)


def _after_import(name, module):
    if name == "uvloop":
        _patch_uvloop(module)
    elif name == "grpc":
        _patch_grpc(module, "grpc")
    elif name == "grpc.aio":
        _patch_grpc(module, "grpc.aio")
    elif name == "jina" or name.startswith("jina."):
        _patch_jina_module(module)


class _PostImportHook:
    """A meta path finder that lets the other finders find a module, then patches it once it has
    run."""

    _busy = set()

    @staticmethod
    def _wanted(name):
        return name in ("uvloop", "grpc", "grpc.aio") or name == "jina" or name.startswith("jina.")

    def find_spec(self, name, path, target=None):
        if not self._wanted(name) or name in self._busy:
            return None
        self._busy.add(name)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            _after_import(name, module)

        loader.exec_module = exec_module
        return spec


def install():
    """Installs the guard in this process (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    _patch_socket()
    for name in ("uvloop", "grpc", "grpc.aio"):
        if name in sys.modules:
            _after_import(name, sys.modules[name])
    patch_loaded_jina()
    sys.meta_path.insert(0, _PostImportHook())


def _optional_module(name):
    """The module `name`, imported now, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _child_probe(q):
    try:
        socket.getaddrinfo("example.com", 80)
        q.put("not refused")
    except Exception as e:
        q.put("refused" if type(e).__name__ == "NonLoopbackRefused" else f"{type(e).__name__}: {e}")


def _self_test():
    """Checks that the guard refuses what it must and lets loopback through."""
    install()
    import asyncio
    import urllib.request

    failures = []

    def refused(e, depth=0):
        # Libraries wrap the guard's error (urllib's URLError keeps it as `reason`).
        if isinstance(e, NonLoopbackRefused):
            return True
        if e is None or depth > 5:
            return False
        return any(refused(x, depth + 1) for x in (getattr(e, "reason", None), e.__cause__, e.__context__)
                   if isinstance(x, BaseException))

    def expect_refused(what, f):
        try:
            f()
        except Exception as e:  # anything but the guard's error means the guard did not see it
            if refused(e):
                print(f"  ok  refused: {what}")
            else:
                failures.append(f"{what}: {type(e).__name__}: {e}")
            return
        failures.append(f"{what}: not refused")

    expect_refused("socket.create_connection(('192.0.2.1', 80))",
                   lambda: socket.create_connection(("192.0.2.1", 80), timeout=1))
    expect_refused("socket.getaddrinfo('example.com', 80)", lambda: socket.getaddrinfo("example.com", 80))
    expect_refused("socket.gethostbyname('example.com')", lambda: socket.gethostbyname("example.com"))

    def raw_connect():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(("192.0.2.1", 80))

    expect_refused("socket.socket.connect(('192.0.2.1', 80))", raw_connect)

    def raw_connect_ex():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.connect_ex(("192.0.2.1", 80))

    expect_refused("socket.socket.connect_ex(('192.0.2.1', 80))", raw_connect_ex)
    expect_refused("urllib.request.urlopen('http://example.com/')",
                   lambda: urllib.request.urlopen("http://example.com/", timeout=1))

    def asyncio_connect(host):
        async def go():
            await asyncio.open_connection(host, 80)
        asyncio.run(go())

    expect_refused("asyncio.open_connection('example.com', 80)", lambda: asyncio_connect("example.com"))
    expect_refused("asyncio.open_connection('192.0.2.1', 80)", lambda: asyncio_connect("192.0.2.1"))

    uvloop = _optional_module("uvloop")
    if uvloop is not None:
        def uv(host):
            async def go():
                await asyncio.open_connection(host, 80)
            loop = uvloop.new_event_loop()
            try:
                loop.run_until_complete(go())
            finally:
                loop.close()

        expect_refused("uvloop open_connection('example.com', 80)", lambda: uv("example.com"))
        expect_refused("uvloop open_connection('192.0.2.1', 80)", lambda: uv("192.0.2.1"))
    grpc = _optional_module("grpc")
    if grpc is not None:
        import grpc.aio

        expect_refused("grpc.insecure_channel('example.com:443')", lambda: grpc.insecure_channel("example.com:443"))
        expect_refused("grpc.aio.insecure_channel('dns:///192.0.2.1:80')",
                       lambda: grpc.aio.insecure_channel("dns:///192.0.2.1:80"))
        grpc.insecure_channel("127.0.0.1:1").close()
    helper = _optional_module("jina.helper")
    orch = _optional_module("jina.orchestrate.orchestrator")
    if helper is not None and orch is not None:
        if helper.get_public_ip() is not None or orch.get_public_ip() is not None:
            failures.append("jina's get_public_ip was not replaced")
        else:
            print("  ok  jina.helper.get_public_ip and the orchestrator's return None")

    # A process that multiprocessing spawns (a fresh interpreter, as Jina's executors may be)
    # gets the guard from sitecustomize.py when this folder is on PYTHONPATH.
    here = os.path.dirname(os.path.abspath(__file__))
    if here in [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_child_probe, args=(q,))
        p.start()
        p.join(60)
        outcome = q.get(timeout=5) if p.exitcode == 0 else f"exit code {p.exitcode}"
        if outcome == "refused":
            print("  ok  refused in a spawned process (sitecustomize)")
        else:
            failures.append(f"spawned process: {outcome}")
    else:
        print("  skip spawned process: this folder is not on PYTHONPATH")

    # Loopback still works: a listening socket on 127.0.0.1 and a connect to it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        socket.create_connection(("localhost", port), timeout=2).close()
        print("  ok  loopback connects and resolves")

    if failures:
        print(f"FAILED network guard self-test: {failures}")
        return 1
    print("PASSED network guard self-test")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        # The module by its own name, as sitecustomize.py installs it: one guard, one error class.
        import flowmesh_netguard

        sys.exit(flowmesh_netguard._self_test())
    sys.stderr.write("usage: flowmesh_netguard.py --self-test\n")
    sys.exit(2)
