"""The test suite's network seal, loaded by every Python process it starts (tests/conftest.py puts this
folder first on PYTHONPATH, and installs the same seal in the pytest process itself).

A connection or a name lookup for anything but this machine raises OSError, as it would offline, and is
appended to $GENSTUDY_NET_LOG, from which conftest.py fails the test that caused it. Loopback stays open:
torchrun's rendezvous and Gloo talk to 127.0.0.1."""

import os
import socket


def is_local(host):
    host = host.decode() if isinstance(host, bytes) else host
    return host in (None, "", "localhost", "::1", "0.0.0.0", socket.gethostname()) or str(host).startswith(
        "127."
    )


def refuse(what):
    with open(os.environ["GENSTUDY_NET_LOG"], "a") as f:
        f.write(f"{what}\n")
    raise OSError(f"network access is disabled in the test suite ({what})")


def install():
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def remote(sock, address):
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0])

    def sealed_connect(self, address):
        if remote(self, address):
            refuse(f"connect {address}")
        return connect(self, address)

    def sealed_connect_ex(self, address):
        if remote(self, address):
            refuse(f"connect {address}")
        return connect_ex(self, address)

    def sealed_getaddrinfo(host, *args, **kwargs):
        if not is_local(host):
            refuse(f"name lookup {host}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
        sealed_connect,
        sealed_connect_ex,
        sealed_getaddrinfo,
    )
    socket.sealed = True


if os.environ.get("GENSTUDY_NET_LOG") and not getattr(socket, "sealed", False):
    install()
