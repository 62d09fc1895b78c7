"""A TLS endpoint in front of a plaintext TCP server, for the tests: it ends each client's TLS
session (Python's ``ssl``, a real handshake with the given certificate) and relays the bytes to the
server. Tansu 0.6.0 cannot serve TLS itself (its ``--cert`` and ``--key`` options reject each other),
so Kafka clients reach it through this one, as they would reach a broker's TLS listener."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path


class TLSProxy:
    def __init__(self, port: int, target_port: int, certfile: Path, keyfile: Path) -> None:
        self.port = port
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certfile, keyfile)
        self.sessions = 0  # TLS sessions set up (handshake done)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> TLSProxy:
        self._thread.start()
        listening = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, host="localhost", port=self.port, ssl=self.context), self._loop)
        self._server = listening.result(timeout=10)
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
