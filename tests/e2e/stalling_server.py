"""Loopback TCP servers that accept connections and stall: what a hung tracking server, a
black-holed network or an overloaded proxy look like to a client.

`StallingServer(answer_after_s=None)` never answers (connections stay open until stop());
`StallingServer(answer_after_s=20)` reads each request and answers 503 after 20 s.
"""
from __future__ import annotations

import socket
import threading
from typing import Optional

from tests.testlib import free_port


class StallingServer:
    def __init__(self, answer_after_s: Optional[float] = None) -> None:
        self.answer_after_s = answer_after_s
        self.port = free_port()
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self._connections: list[socket.socket] = []
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name="stalling-accept", daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            self.accepted += 1
            self._connections.append(connection)
            if self.answer_after_s is not None:
                threading.Thread(target=self._answer_late, args=(connection,), daemon=True).start()

    def _answer_late(self, connection: socket.socket) -> None:
        try:
            connection.recv(65536)
            if self._stopped.wait(self.answer_after_s):
                return
            connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               b"Connection: close\r\n\r\n")
            connection.close()
        except OSError:
            pass

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        for connection in self._connections:
            try:
                connection.close()
            except OSError:
                pass
