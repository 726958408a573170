"""gunicorn's gthread worker, reading every request whole before one of its threads sees it.

gthread hands a connection to a thread as soon as its first bytes arrive; the thread then blocks until
the request is complete. Twelve clients that send half a request's headers (or a body slowly) held every
thread, and /health stopped answering. This worker reads in its main loop instead, without blocking,
as a buffering proxy would: a thread gets a connection only when its request line, headers and body
(``Content-Length``, up to SEGAGENT_MAX_BODY_MB) are all here. A client gets :data:`READ_SECONDS` to send
its whole request, then is dropped; headers over :data:`MAX_HEADER_BYTES` are answered 431. A chunked
body (Label Studio sends none) is still read by the thread, after the headers. The graceful close after
a last response (gthread lingers up to 2 s for the client's FIN, blocking its main loop) lingers in the
main loop's poller instead. ``segagent serve`` runs it
(``--worker-class segagent_backend.buffering_worker.BufferingThreadWorker``).
"""
from __future__ import annotations

import errno
import re
import selectors
import socket
import time
from collections import deque
from functools import partial

from gunicorn import util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

#: seconds a client has to send one whole request (headers and body), counted from its first byte
#: (a new connection) or from its being readable again (a kept-alive one)
READ_SECONDS = 30.0
#: request line and headers larger than this are answered 431 (gunicorn's own limits are far below it)
MAX_HEADER_BYTES = 64 * 1024
RECV_BYTES = 256 * 1024
#: after the last response: seconds (and bytes) a closing connection is drained for the client's FIN, as
#: gunicorn's ``util.close_graceful`` does, but without blocking
LINGER_SECONDS, LINGER_BYTES = 2.0, 65536

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.IGNORECASE)
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Type: application/json\r\n"
              b"Content-Length: 44\r\n\r\n{\"error\": \"request headers are too large\"}\n\n")


def request_complete(buffer: bytes, max_body: int):
    """True: ``buffer`` holds a whole request (or enough for a thread: headers of a chunked or
    oversized body); None: not yet; False: headers too large."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return False if len(buffer) > MAX_HEADER_BYTES else None
    head = bytes(buffer[:end + 2])
    if _TRANSFER_ENCODING.search(head):
        return True
    found = _CONTENT_LENGTH.search(head)
    length = int(found.group(1)) if found else 0
    if length > max_body:  # the app answers 413 without reading it
        return True
    return True if len(buffer) >= end + 4 + length else None


class _Conn(TConn):
    """A connection whose graceful close lingers in its worker's poller."""

    def __init__(self, worker: "BufferingThreadWorker", *args):
        super().__init__(*args)
        self.worker = worker

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class BufferingThreadWorker(ThreadWorker):
    """A ThreadWorker whose main loop reads each request whole (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: deque = deque()  # connections whose request is still arriving, oldest first
        self.lingering: deque = deque()  # [socket, close at, bytes drained] of closing connections, oldest first
        self.max_body = 32 * 1024 * 1024

    def init_process(self):
        from .settings import Settings

        try:
            self.max_body = Settings.from_env().max_body_mb * 1024 * 1024
        except Exception:  # the app names a bad setting when it loads; keep the default here
            pass
        super().init_process()

    def _buffers(self, conn: TConn) -> bool:
        # TLS and HTTP/2 by prior knowledge read on their own: those keep gthread's way
        return not self.cfg.is_ssl and not negotiation.prior_knowledge_allowed(self.cfg, conn.client)

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self, self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        if not self._buffers(conn):
            client_sock.setblocking(True)
            self.enqueue_req(conn)
            return
        self._start_reading(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request starts: read it here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if not self._buffers(conn):
            self.enqueue_req(conn)
            return
        self._start_reading(conn)

    def _start_reading(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.inbox = bytearray()
        conn.read_until = time.monotonic() + READ_SECONDS
        self.reading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _forget(self, sock, watched: list, entry) -> None:
        """Stop polling ``sock`` and drop ``entry`` from ``watched``; either may be gone already (a socket
        closed by the peer, a connection dropped twice)."""
        try:
            self.poller.unregister(sock)
        except (OSError, KeyError, ValueError):
            pass
        try:
            watched.remove(entry)
        except ValueError:
            pass

    def _stop_reading(self, conn: TConn) -> None:
        self._forget(conn.sock, self.reading, conn)

    def _drop(self, conn: TConn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()

    def _on_readable(self, conn: TConn, _sock) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client hung up before its request was complete
            self._drop(conn)
            return
        conn.inbox += data
        complete = request_complete(conn.inbox, self.max_body)
        if complete is None:
            return
        if complete is False:
            try:
                conn.sock.send(_TOO_LARGE)
            except OSError:
                pass
            self._drop(conn)
            return
        self._stop_reading(conn)
        conn.sock.setblocking(True)
        if conn.parser is None:
            conn.init()  # the HTTP/1.x parser; reads nothing (no TLS, no preface to sniff)
        conn.parser.unreader.unread(bytes(conn.inbox))
        conn.inbox = None
        conn.data_ready = True
        self.enqueue_req(conn)

    def linger(self, sock: socket.socket) -> None:
        """Send FIN, then drain what the client still sends until it closes (or LINGER_SECONDS/BYTES)."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            util.close(sock)
            return
        entry = [sock, time.monotonic() + LINGER_SECONDS, 0]
        self.lingering.append(entry)
        self.poller.register(sock, selectors.EVENT_READ, partial(self._on_lingering, entry))

    def _on_lingering(self, entry: list, _sock) -> None:
        try:
            data = entry[0].recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry[2] += len(data)
        if not data or entry[2] >= LINGER_BYTES:
            self._close_lingering(entry)

    def _close_lingering(self, entry: list) -> None:
        self._forget(entry[0], self.lingering, entry)
        util.close(entry[0])

    def murder_pending(self):
        """gthread's pending connections, requests not complete after READ_SECONDS (all of them once the
        worker stops) and closing connections past LINGER_SECONDS."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading and (self.reading[0].read_until <= now or not self.alive):
            self._drop(self.reading[0])
        while self.lingering and self.lingering[0][1] <= now:
            self._close_lingering(self.lingering[0])
