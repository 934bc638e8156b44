"""Test-only network guard: ``is_loopback`` for in-process checks; imported as ``sitecustomize``
in a server process with ``$DERMTRIAGE_NETGUARD_LOG`` set, it blocks and logs every
connection or name lookup that would leave this machine."""
import ipaddress
import os
import socket

_LOG = os.environ.get("DERMTRIAGE_NETGUARD_LOG")


def is_loopback(family, address) -> bool:
    """True for a Unix socket or a loopback host (127/8, ::1, 'localhost')."""
    if family == getattr(socket, "AF_UNIX", None) or isinstance(address, (str, bytes)):
        return True
    host = str(address[0]).split("%")[0]
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _record(what):
    with open(_LOG, "a") as f:
        f.write(what + "\n")


if _LOG:
    _connect, _connect_ex, _sendto, _getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                    socket.socket.sendto, socket.getaddrinfo)

    def connect(self, address):
        if not is_loopback(self.family, address):
            _record(f"connect {address!r}")
            raise OSError(101, "network is unreachable (blocked by the DermTriage test guard)")
        return _connect(self, address)

    def connect_ex(self, address):
        if not is_loopback(self.family, address):
            _record(f"connect_ex {address!r}")
            return 101
        return _connect_ex(self, address)

    def sendto(self, data, *args):
        if not is_loopback(self.family, args[-1]):
            _record(f"sendto {args[-1]!r}")
            raise OSError(101, "network is unreachable (blocked by the DermTriage test guard)")
        return _sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not is_loopback(socket.AF_INET, (name, 0)):
            _record(f"getaddrinfo {name!r}")
            raise socket.gaierror(socket.EAI_NONAME, "name lookup blocked by the DermTriage test guard")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo = getaddrinfo
