#!/usr/bin/env python3
"""Bad inputs against a running mpard (control plane integration test).

Each case opens its own connection, misbehaves, and checks that mpard closed
that connection (and, where the protocol says so, replied first).  After
every case the caller's check that mpard still answers a status request
runs; this script only does the misbehaving.

usage: control_badinput.py CASE TCP_HOST:PORT UNIX_SOCKET STALL_MS
"""
import os
import random
import socket
import struct
import sys
import time


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_bytes(num: int, data: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num: int, v: int) -> bytes:
    return varint(num << 3) + varint(v)


def hello(version=1, nonce=b"\x01" * 32, role=1) -> bytes:
    h = field_varint(1, version) + field_bytes(2, nonce) + field_varint(3, role) + field_bytes(4, b"t")
    return field_bytes(10, h)


def tcp(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def read_until_closed(s, limit_s):
    """Reads until the peer closes; returns the bytes.  Fails on timeout."""
    s.settimeout(limit_s)
    data = b""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            break
        if not chunk:
            return data
        data += chunk
    raise SystemExit("FAIL: mpard did not close the connection within %.1f s" % limit_s)


def expect_error_frame(data, code=None):
    if len(data) < 4:
        raise SystemExit("FAIL: expected an Error frame before the close, got %r" % data)
    n = struct.unpack(">I", data[:4])[0]
    body = data[4:4 + n]
    # Envelope field 50 (error), wire type 2: tag 0x92 0x03.
    if b"\x92\x03" not in body:
        raise SystemExit("FAIL: reply is not an Error envelope: %r" % body)
    if code is not None:
        if b"\x08" + bytes([code]) not in body:
            raise SystemExit("FAIL: Error without code %d: %r" % (code, body))


def main():
    case, addr, usock, stall_ms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stall_s = stall_ms / 1000.0
    if case == "huge_length":
        s = tcp(addr)
        s.sendall(b"\xff\xff\xff\xff")
        expect_error_frame(read_until_closed(s, 5))
    elif case == "zero_length":
        s = tcp(addr)
        s.sendall(b"\x00\x00\x00\x00")
        read_until_closed(s, 5)
    elif case == "preauth_oversized":
        s = tcp(addr)
        s.sendall(struct.pack(">I", 4097) + b"\x00" * 100)
        expect_error_frame(read_until_closed(s, 5))
    elif case == "garbage_frame":
        s = tcp(addr)
        random.seed(3)
        s.sendall(frame(bytes(random.getrandbits(8) for _ in range(200))))
        read_until_closed(s, 5)
    elif case == "random_bytes":
        s = tcp(addr)
        random.seed(4)
        try:
            s.sendall(bytes(random.getrandbits(8) for _ in range(5000)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        read_until_closed(s, 5)
    elif case == "truncated":
        s = tcp(addr)
        s.sendall(frame(hello())[:10])
        s.shutdown(socket.SHUT_WR)
        read_until_closed(s, 5)
    elif case == "stall":
        s = tcp(addr)
        s.sendall(frame(hello())[:6])
        t0 = time.time()
        read_until_closed(s, stall_s * 3 + 2)
        took = time.time() - t0
        if took < stall_s * 0.8:
            raise SystemExit("FAIL: closed after %.2f s, before the stall timeout" % took)
    elif case == "idle_before_handshake":
        s = tcp(addr)
        read_until_closed(s, stall_s * 3 + 2)
    elif case == "wrong_version":
        s = tcp(addr)
        s.sendall(frame(hello(version=2)))
        expect_error_frame(read_until_closed(s, 5), code=1)
    elif case == "unknown_message":
        s = tcp(addr)
        s.sendall(frame(field_bytes(99, b"")))
        expect_error_frame(read_until_closed(s, 5), code=3)
    elif case == "out_of_order":
        s = tcp(addr)
        s.sendall(frame(field_bytes(32, b"")))  # ListNodes before the handshake
        expect_error_frame(read_until_closed(s, 5), code=3)
    elif case == "bad_enum":
        s = tcp(addr)
        s.sendall(frame(hello(role=77)))
        expect_error_frame(read_until_closed(s, 5), code=3)
    elif case == "json_malformed":
        s = socket.socket(socket.AF_UNIX)
        s.connect(usock)
        s.sendall(b"{\"cmd\": \n")
        data = read_until_closed(s, 5)
        if b"\"ok\":false" not in data:
            raise SystemExit("FAIL: no JSON error before the close: %r" % data)
    elif case == "json_oversized":
        s = socket.socket(socket.AF_UNIX)
        s.connect(usock)
        try:
            s.sendall(b"{\"cmd\":\"" + b"x" * (2 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_until_closed(s, 5)
        if b"too long" not in data:
            raise SystemExit("FAIL: no 'too long' JSON error: %r" % data[:200])
    elif case == "slow_reader":
        # Many requests, never reading the replies: mpard must drop us rather
        # than buffer without bound.
        s = socket.socket(socket.AF_UNIX)
        s.connect(usock)
        s.setblocking(False)
        req = b"{\"cmd\":\"nodes\"}\n" * 1000
        deadline = time.time() + 20
        closed = False
        while time.time() < deadline and not closed:
            try:
                s.send(req)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        if not closed:
            raise SystemExit("FAIL: mpard kept a reader that never reads")
    else:
        raise SystemExit("unknown case " + case)
    print("ok", case)


if __name__ == "__main__":
    main()
