#!/usr/bin/env python3
"""mpard's GET /metrics over HTTP (--metrics-listen) against bad HTTP.

Starts a coordinator with the metrics listener on a loopback port, then:
a good GET and HEAD are answered 200 with the Prometheus text; a wrong
path 404, a wrong method 405 (with Allow), garbage 400, oversized headers
431, a long target 414, a body 413, HTTP/2 505, a sender too slow to finish
its request 408 within the deadline, a peer that closes mid-request, more
connections than the cap 503.  Each closes that connection only: mpard
still answers /metrics and its status socket afterwards, and
mpar_connections_closed_total{reason} counts every case.

usage: metrics_http.py MPARD
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

DEAD_AFTER_MS = 1500  # the HTTP deadline of a connection


def fail(msg, log=None):
    print("FAIL: " + msg, file=sys.stderr)
    if log is not None:
        with open(log) as f:
            sys.stderr.write(f.read()[-4000:])
    sys.exit(1)


def exchange(port, data, limit_s=5.0, pause_after=None):
    """Sends data, reads until mpard closes; returns (bytes, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
    t0 = time.time()
    try:
        if data:
            s.sendall(data)
        if pause_after is not None:
            time.sleep(pause_after)
        out = b""
        s.settimeout(limit_s)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                fail("mpard did not close the connection within %.1f s" % limit_s)
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    return out, time.time() - t0


def status_of(reply):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    return int(m.group(1)) if m else None


def expect(port, name, data, want, **kw):
    reply, secs = exchange(port, data, **kw)
    got = status_of(reply)
    if got != want:
        fail("%s: expected %d, got %r" % (name, want, reply[:200]))
    print("ok %s -> %d (%.2f s)" % (name, got, secs))
    return reply, secs


def scrape(port):
    reply, _ = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    if status_of(reply) != 200:
        fail("GET /metrics: %r" % reply[:200])
    return head.decode(), body.decode()


def closed_counts(body):
    out = {}
    for m in re.finditer(r'^mpar_connections_closed_total\{reason="([a-z_]+)"\} (\d+)$', body, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def main():
    mpard = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="mpar-metrics-http-")
    log = os.path.join(tmp, "coord.log")
    sock = os.path.join(tmp, "s")
    with open(log, "w") as lf:
        proc = subprocess.Popen([mpard, "--coordinator", "--name", "c", "--devices", "none",
                                 "--listen", "127.0.0.1:0", "--socket", sock, "--state-dir", tmp,
                                 "--heartbeat-ms", "500", "--dead-after-ms", str(DEAD_AFTER_MS),
                                 "--metrics-listen", "127.0.0.1:0"],
                                stdout=lf, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(200):
            with open(log) as f:
                m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", f.read())
            if m:
                port = int(m.group(1))
                break
            if proc.poll() is not None:
                fail("mpard exited", log)
            time.sleep(0.05)
        if port is None:
            fail("mpard did not log its metrics address", log)

        head, body = scrape(port)
        if "Content-Type: text/plain; version=0.0.4" not in head:
            fail("content type: %r" % head)
        for series in ("mpar_build_info{", "mpar_cluster_nodes{state=\"alive\"} 0",
                       "# TYPE mpar_connections_closed_total counter"):
            if series not in body:
                fail("no %s in /metrics" % series)
        print("ok GET /metrics -> 200, %d bytes of text" % len(body))
        reply, _ = expect(port, "HEAD /metrics", b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200)
        if not reply.endswith(b"\r\n\r\n"):
            fail("HEAD carried a body: %r" % reply[-100:])

        expect(port, "wrong path", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404)
        reply, _ = expect(port, "wrong method", b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405)
        if b"Allow: GET, HEAD" not in reply:
            fail("405 without Allow: %r" % reply)
        expect(port, "garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400)
        expect(port, "no colon", b"GET /metrics HTTP/1.1\r\nbroken header\r\n\r\n", 400)
        expect(port, "huge headers", b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100000 + b"\r\n\r\n",
               431)
        expect(port, "long target", b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\n\r\n", 414)
        expect(port, "a body", b"POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", 413)
        expect(port, "HTTP/2", b"GET /metrics HTTP/2.0\r\n\r\n", 505)
        _, secs = expect(port, "slow sender", b"GET /metr", 408, limit_s=DEAD_AFTER_MS / 1000 + 5)
        if secs < DEAD_AFTER_MS / 1000 * 0.9:
            fail("the slow sender was cut after %.2f s, before its deadline" % secs)
        # A peer that leaves mid-request: no answer, the connection is counted.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        if s.recv(100) != b"":
            fail("an answer to a request that never ended")
        s.close()
        print("ok half a request, then EOF -> closed")

        # More connections than the cap (64): the extra ones get 503.
        idle = []
        for _ in range(64):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.2)
        expect(port, "the 65th connection", b"", 503)
        for s in idle:
            s.close()
        time.sleep(0.2)

        # mpard goes on: /metrics and the status socket answer, and every
        # case above is counted by reason.
        _, body = scrape(port)
        c = closed_counts(body)
        want = {"http_served": 2, "http_not_found": 1, "http_method_not_allowed": 1,
                "http_bad_request": 3, "http_too_large": 3, "http_timeout": 1, "http_eof": 1,
                "http_too_many": 1}
        for k, v in want.items():
            if c.get(k, -1) < v:
                fail("mpar_connections_closed_total{reason=\"%s\"} is %s, expected >= %d\n%s"
                     % (k, c.get(k), v, body))
        print("ok counted: " + ", ".join("%s %d" % (k, c[k]) for k in want))
        u = socket.socket(socket.AF_UNIX)
        u.settimeout(5)
        u.connect(sock)
        u.sendall(b'{"cmd":"status"}\n')
        line = u.makefile().readline()
        u.close()
        if "coordinator" not in json.loads(line).get("roles", []):
            fail("status socket: %r" % line)
        with open(log) as f:
            text = f.read()
        for r in ("http_bad_request", "http_too_large", "http_timeout"):
            if "closed (%s)" % r not in text:
                fail("no log line for %s" % r, log)
        print("ok mpard still answers; bad requests logged")
        proc.terminate()
        if proc.wait(timeout=10) != 0:
            fail("mpard exited %d" % proc.returncode, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
