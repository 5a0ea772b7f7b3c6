"""free_ports() hands out ports no outgoing connection can take before their owner binds
them: a restarted worker once failed to bind its metrics port because a Kafka client's
connection had been given it as its source port."""

from __future__ import annotations

import socket
from pathlib import Path

from flowmill.local.ports import LOOPBACK, free_ports


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_and_nodeport_ranges() -> None:
    low, high = ephemeral_range()
    ports = free_ports(50)
    assert len(set(ports)) == 50
    for port in ports:
        assert not low <= port <= high, f"{port} is in the ephemeral range {low}-{high}"
        assert not 30000 <= port <= 32767, f"{port} is in Kubernetes' NodePort range"
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", ports[0]))
        sock.listen()


def test_a_port_someone_listens_on_is_not_handed_out() -> None:
    listeners = []
    try:
        taken = set()
        for port in free_ports(200):
            sock = socket.socket()
            sock.bind((LOOPBACK, port))
            sock.listen()
            listeners.append(sock)
            taken.add(port)
        assert not taken & set(free_ports(200))
    finally:
        for sock in listeners:
            sock.close()
