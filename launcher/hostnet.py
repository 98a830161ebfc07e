"""Which address and interface a multi-host job's ranks meet on.

- MASTER_ADDR: the first node of the allocation as an address (not a name every host resolves on
  its own), refused when it is loopback and the job has more than one host: the other hosts would
  dial themselves ("MASTER_ADDR resolving to localhost").
- GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME: unless the user set them, each rank takes the interface
  that its own host's routing uses to reach MASTER_ADDR (computed on that host: names differ from
  host to host). Without them gloo and NCCL pick the interface of the hostname's address, which on a
  host with several networks need not reach the other hosts (torch.distributed's documentation,
  "Choosing the network interface to use").

- host_name(): the name of the host this process stands for, the one every module uses.

`python3 -m llmlaunch.launcher.hostnet exec -- CMD ...` sets the interface variables and execs CMD
(each task srun starts).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Callable, Mapping

IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
HOSTNAME_ENV = "LLMLAUNCH_HOSTNAME"


def host_name(environ: Mapping[str, str] = os.environ) -> str:
    """The host this process stands for: LLMLAUNCH_HOSTNAME when set (tests and containers that share
    one UTS name while standing for several hosts), else the UTS hostname (socket.gethostname(): under
    Slurm the node's name). The one answer for preflight's host groups, ranks.json, the liveness
    heartbeats and the run directory's owner."""
    return environ.get(HOSTNAME_ENV) or socket.gethostname()


def master_address(first_node: str, nodes: int,
                   resolve: Callable[[str], str] = socket.gethostbyname) -> str:
    """The address of `first_node` that the job's `nodes` hosts dial. ValueError (naming the node
    and what to fix) when it does not resolve, or resolves to loopback on a multi-host job."""
    try:
        addr = resolve(first_node)
    except OSError as exc:
        raise ValueError(f"the job's first node {first_node!r} does not resolve ({exc}): give it an "
                         "entry in /etc/hosts or DNS, or set LLMLAUNCH_MASTER_ADDR") from None
    if nodes > 1 and ipaddress.ip_address(addr).is_loopback:
        raise ValueError(f"the job's first node {first_node!r} resolves to {addr}, a loopback "
                         f"address the other {nodes - 1} host(s) cannot reach: fix its entry in "
                         "/etc/hosts (or DNS), or set LLMLAUNCH_MASTER_ADDR to an address they reach")
    return addr


def free_port(address: str = "") -> int:
    """A port free on `address` now ('' all of this host's: a MASTER_PORT other hosts dial;
    '127.0.0.1' for ranks on this machine only)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def interface_with_address(source: str, interfaces: Mapping[str, list]) -> str:
    """The name of the interface holding address `source` (psutil.net_if_addrs() shape:
    {name: [snic(family, address, ...)]}). ValueError when none does."""
    for name, addrs in interfaces.items():
        if any(getattr(a, "address", None) == source for a in addrs):
            return name
    raise ValueError(f"no interface holds {source}")


def source_address_to(addr: str) -> str:
    """The local address this host's routing uses to reach `addr` (a UDP socket's connect picks
    the route; no packet is sent)."""
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((addr, 9))
        return s.getsockname()[0]


def socket_ifname_env(environ: Mapping[str, str], master_addr: str,
                      interface_to: Callable[[str], str]) -> dict[str, str]:
    """The interface variables to set: those the user left unset, each naming the interface that
    reaches `master_addr` (interface_to(master_addr)). Nothing for a loopback master (one host)."""
    unset = [v for v in IFNAME_VARIABLES if not environ.get(v)]
    if not unset or ipaddress.ip_address(master_addr).is_loopback:
        return {}
    name = interface_to(master_addr)
    return {v: name for v in unset}


def interface_to(addr: str) -> str:
    import psutil

    return interface_with_address(source_address_to(addr), psutil.net_if_addrs())


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "master-addr":
        try:
            print(master_address(argv[1], int(argv[2])))
        except ValueError as exc:
            print(f"llmlaunch: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if len(argv) >= 3 and argv[:2] == ["exec", "--"]:
        try:
            os.environ.update(socket_ifname_env(os.environ, os.environ["MASTER_ADDR"], interface_to))
        except (KeyError, ValueError, OSError) as exc:
            print(f"llmlaunch: error on {host_name()}: no interface reaches MASTER_ADDR="
                  f"{os.environ.get('MASTER_ADDR')!r} ({exc}); set GLOO_SOCKET_IFNAME and "
                  "NCCL_SOCKET_IFNAME", file=sys.stderr)
            return 2
        os.execvp(argv[2], argv[2:])
    print("usage: python3 -m llmlaunch.launcher.hostnet master-addr NAME NODES | exec -- CMD ...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
