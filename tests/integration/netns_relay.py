#!/usr/bin/env python3
"""netns_relay.py - a slow, lossy IPv4 switch between network namespaces,
for kernels without netem (tests/integration/netns_lib.sh).

For every NS=ADDR argument it opens a TUN device "lossy0" inside namespace
NS (/run/netns/NS) and forwards each IPv4 packet read from any of them to
the device of the namespace that owns the packet's destination address,
after --delay-ms, dropping each packet with probability --loss (a seeded
generator: the same run drops the same packets).  Packets to unknown
addresses, and anything that is not IPv4, are discarded.  Prints "ready" on
stdout once every device exists; on SIGTERM it prints what it did
("forwarded N lost M discarded K") on stdout and exits 0.

usage: netns_relay.py --delay-ms MS --loss P [--seed N] NS=ADDR...
"""
import argparse
import ctypes
import fcntl
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
DEVICE = b"lossy0"


class Stop(Exception):
    pass


def open_tun(libc, ns):
    nsfd = os.open("/run/netns/" + ns, os.O_RDONLY)
    try:
        if libc.setns(nsfd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            sys.exit("setns %s: %s" % (ns, os.strerror(err)))
    finally:
        os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", DEVICE, IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--loss", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("hosts", nargs="+", metavar="NS=ADDR")
    a = ap.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    by_addr = {}
    fds = []
    for h in a.hosts:
        ns, _, addr = h.partition("=")
        fd = open_tun(libc, ns)
        by_addr[socket.inet_aton(addr)] = fd
        fds.append(fd)

    def on_term(_sig, _frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(a.seed)
    delay = a.delay_ms / 1000.0
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    queue = []  # (due, seq, fd, packet)
    seq = forwarded = lost = discarded = 0
    print("ready", flush=True)
    try:
        while True:
            timeout = None
            if queue:
                timeout = max(0.0, (queue[0][0] - time.monotonic()) * 1000.0)
            for fd, _ev in poller.poll(timeout):
                pkt = os.read(fd, 65536)
                dst = by_addr.get(pkt[16:20]) if len(pkt) >= 20 and pkt[0] >> 4 == 4 else None
                if dst is None:
                    discarded += 1
                    continue
                if rng.random() < a.loss:
                    lost += 1
                    continue
                heapq.heappush(queue, (time.monotonic() + delay, seq, dst, pkt))
                seq += 1
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _due, _seq, dst, pkt = heapq.heappop(queue)
                try:
                    os.write(dst, pkt)
                    forwarded += 1
                except OSError:  # the device is down
                    discarded += 1
    except Stop:
        print("forwarded %d lost %d discarded %d" % (forwarded, lost, discarded), flush=True)


if __name__ == "__main__":
    main()
