"""Benchmark: the h2 reverse tunnel against raw TLS, in one run, on loopback.

Usage: ``python scripts/bench_tunnel.py [--quick] [--requests N] [--size BYTES] [--bulk-mib N] [--json]``

Rows (every TLS connection is real mutual TLS on 127.0.0.1 with certificates from a throwaway CA; both ends
run in this one process, so every number includes both ends' CPU on one core):

* request/response of ``--size`` bytes echoed back, at 1 and 10 concurrent clients:
  - raw TLS, keep-alive connections (the baseline) and a new TLS connection per request;
  - the tunnel (one TLS connection, :mod:`registry.host.h2tunnel`), on persistent streams (one per client)
    and on a new stream per request (kubectl opens one connection, so one stream, per invocation);
* a one-way bulk transfer of ``--bulk-mib`` MiB on one raw TLS connection and on one tunnel stream.

The table shows throughput, p50/p99 latency and the ratio to the matching raw-TLS keep-alive row.
"""

from __future__ import annotations

import argparse
import functools
import json
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import benchlib  # puts the repository root on sys.path
import trio
from benchlib import percentile, positive

from registry.core.identity import REGISTRY_SERVER_NAME, CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.h2tunnel import H2Tunnel, TunnelStream
from registry.host.tls import client_context, server_context

ALPN = "kubeport-tunnel/1"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    requests: int
    size: int
    bulk_mib: int
    as_json: bool


@dataclass
class Row:
    name: str
    concurrency: int
    count: int
    seconds: float
    latencies: list[float]
    unit: str = "req/s"
    baseline: float | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def cells(self) -> list[str]:
        ratio = f"{self.rate / self.baseline:.2f}x" if self.baseline else "baseline"
        if self.unit == "MiB/s":
            return [self.name, str(self.concurrency), f"{self.count} MiB", f"{self.rate:,.1f} MiB/s", "", "", ratio]
        p50 = percentile(self.latencies, 0.5) * 1000
        p99 = percentile(self.latencies, 0.99) * 1000
        return [
            self.name,
            str(self.concurrency),
            str(self.count),
            f"{self.rate:,.0f} req/s",
            f"{p50:.2f}",
            f"{p99:.2f}",
            ratio,
        ]


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    now = datetime.now(tz=UTC)
    ca = CertAuthority.generate("bench-tunnel", now=now)
    server_key, agent_key = generate_private_key(), generate_private_key()
    server_cert = ca.issue(
        public_key_pem(server_key), Identity(name="frontdoor", kind="registry"), ttl=timedelta(hours=1), now=now
    )
    agent_cert = ca.issue(
        public_key_pem(agent_key),
        Identity(name="agent", kind="agent", host_id="bench"),
        ttl=timedelta(hours=1),
        now=now,
    )
    server = server_context(server_cert, server_key, [ca.cert_pem], client_certs="required")
    server.set_alpn_protocols([ALPN])
    client = client_context([ca.cert_pem], agent_cert, agent_key)
    client.set_alpn_protocols([ALPN])
    return server, client


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = await stream.receive_some(size - len(out))
        if not chunk:
            raise RuntimeError("peer closed early")
        out += chunk
    return bytes(out)


async def serve_echo(stream: trio.abc.Stream) -> None:
    """Echo until EOF; a stream that starts with ``B`` and an 8-byte length is a bulk sink that answers with
    the byte count once that many bytes arrived (TLS has no half-close, so the length marks the end)."""
    first = await stream.receive_some()
    if first[:1] == b"B":
        head = first + await read_exactly(stream, max(0, 9 - len(first)))
        expected, total = int.from_bytes(head[1:9], "big"), len(head) - 9
        while total < expected:
            data = await stream.receive_some()
            if not data:
                break
            total += len(data)
        await stream.send_all(total.to_bytes(8, "big"))
        return
    data = first
    while data:
        await stream.send_all(data)
        data = await stream.receive_some()


async def timed_clients(
    concurrency: int, total: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client(index: int) -> None:
        for _ in range(total // concurrency):
            start = time.perf_counter()
            await one(index)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(client, index)
    return time.perf_counter() - start, latencies


async def run(config: Config) -> str:
    machine = benchlib.machine_info()
    server_ctx, client_ctx = contexts()
    payload = b"r" * config.size
    rows: list[Row] = []

    async with trio.open_nursery() as nursery:
        # -- raw TLS echo server -------------------------------------------------------------------------------
        async def raw_handler(tcp: trio.SocketStream) -> None:
            tls = trio.SSLStream(tcp, server_ctx, server_side=True)
            try:
                await serve_echo(tls)
            except trio.BrokenResourceError:
                pass
            finally:
                await trio.aclose_forcefully(tls)

        listeners = await nursery.start(functools.partial(trio.serve_tcp, raw_handler, 0, host="127.0.0.1"))
        raw_port = listeners[0].socket.getsockname()[1]

        async def dial(port: int) -> trio.SSLStream[trio.SocketStream]:
            tls = trio.SSLStream(
                await trio.open_tcp_stream("127.0.0.1", port), client_ctx, server_hostname=REGISTRY_SERVER_NAME
            )
            await tls.do_handshake()
            return tls

        # -- the tunnel: the front door (client) accepts the agent's (server's) TLS connection ----------------
        accepted, incoming = trio.open_memory_channel[H2Tunnel](1)

        async def tunnel_handler(tcp: trio.SocketStream) -> None:
            tls = trio.SSLStream(tcp, server_ctx, server_side=True)
            await tls.do_handshake()
            tunnel = H2Tunnel(tls, side="client")
            await accepted.send(tunnel)
            await tunnel.run()

        listeners = await nursery.start(functools.partial(trio.serve_tcp, tunnel_handler, 0, host="127.0.0.1"))
        agent = H2Tunnel(await dial(listeners[0].socket.getsockname()[1]), side="server")

        async def agent_handler(stream: TunnelStream) -> None:
            await stream.accept()
            await serve_echo(stream)
            await stream.send_eof()

        await nursery.start(agent.run, agent_handler)
        front: H2Tunnel = await incoming.receive()
        await front.wait_ready()

        for concurrency in (1, 10):
            # raw TLS, keep-alive
            conns = [await dial(raw_port) for _ in range(concurrency)]

            async def raw_keepalive(index: int, conns: list[trio.SSLStream[trio.SocketStream]] = conns) -> None:
                await conns[index].send_all(payload)
                await read_exactly(conns[index], len(payload))

            seconds, lat = await timed_clients(concurrency, config.requests, raw_keepalive)
            base = Row("raw TLS, keep-alive", concurrency, len(lat), seconds, lat)
            rows.append(base)
            for conn in conns:
                await trio.aclose_forcefully(conn)

            # raw TLS, new connection per request
            async def raw_new(index: int) -> None:
                conn = await dial(raw_port)
                await conn.send_all(payload)
                await read_exactly(conn, len(payload))
                await trio.aclose_forcefully(conn)

            seconds, lat = await timed_clients(concurrency, max(concurrency, config.requests // 5), raw_new)
            rows.append(
                Row("raw TLS, new connection per request", concurrency, len(lat), seconds, lat, baseline=base.rate)
            )

            # tunnel, persistent streams
            streams = [await front.open_stream([], authority="bench") for _ in range(concurrency)]

            async def tunnel_persistent(index: int, streams: list[TunnelStream] = streams) -> None:
                await streams[index].send_all(payload)
                await read_exactly(streams[index], len(payload))

            seconds, lat = await timed_clients(concurrency, config.requests, tunnel_persistent)
            rows.append(Row("h2 tunnel, persistent streams", concurrency, len(lat), seconds, lat, baseline=base.rate))
            for stream in streams:
                await stream.aclose()

            # tunnel, a new stream per request
            async def tunnel_new(index: int) -> None:
                stream = await front.open_stream([], authority="bench")
                await stream.send_all(payload)
                await stream.send_eof()
                await read_exactly(stream, len(payload))
                await stream.aclose()

            seconds, lat = await timed_clients(concurrency, config.requests, tunnel_new)
            rows.append(
                Row("h2 tunnel, new stream per request", concurrency, len(lat), seconds, lat, baseline=base.rate)
            )

        # -- bulk --------------------------------------------------------------------------------------------
        block = b"B" * MiB

        async def bulk(stream: trio.abc.Stream) -> float:
            start = time.perf_counter()
            await stream.send_all(b"B" + (config.bulk_mib * MiB).to_bytes(8, "big"))
            for _ in range(config.bulk_mib):
                await stream.send_all(block)
            counted = int.from_bytes(await read_exactly(stream, 8), "big")
            if counted != config.bulk_mib * MiB:
                raise RuntimeError(f"bulk transfer lost bytes: {counted}")
            return time.perf_counter() - start

        conn = await dial(raw_port)
        raw_bulk = Row("raw TLS, one-way bulk", 1, config.bulk_mib, await bulk(conn), [], unit="MiB/s")
        await trio.aclose_forcefully(conn)
        rows.append(raw_bulk)
        stream = await front.open_stream([], authority="bench")
        tunnel_bulk = await bulk(stream)
        await stream.aclose()
        rows.append(
            Row("h2 tunnel, one stream, one-way bulk", 1, config.bulk_mib, tunnel_bulk, [], "MiB/s", raw_bulk.rate)
        )
        stats = {"front_door": front.statistics(), "agent": agent.statistics()}
        nursery.cancel_scope.cancel()

    if config.as_json:
        return json.dumps(
            {
                "machine": machine,
                "config": benchlib.config_json(config),
                "rows": [
                    {"name": r.name, "c": r.concurrency, "count": r.count, "rate": r.rate, "unit": r.unit} for r in rows
                ],
                "tunnel_statistics": stats,
            },
            indent=2,
        )
    lines = [
        f"bench_tunnel: {config.size}-byte echo, {config.requests} requests per row (new-connection rows: 1/5),"
        f" {config.bulk_mib} MiB bulk; both ends in one process",
        benchlib.machine_line(machine),
        "",
        *benchlib.table_lines(
            "| path | c | requests | throughput | p50 ms | p99 ms | vs raw keep-alive |",
            "|---|---|---|---|---|---|---|",
            (row.cells() for row in rows),
        ),
        "",
        f"tunnel buffers: peak per stream {stats['agent']['peak_stream_buffered']:,} bytes on the agent side,"
        f" {stats['front_door']['peak_stream_buffered']:,} on the front door side",
    ]
    return "\n".join(lines)


def parse_config(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="bench_tunnel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and a smaller bulk transfer")
    parser.add_argument("--requests", type=positive(1_000_000), help="requests per row (default 3000; quick 300)")
    parser.add_argument("--size", type=positive(16 * MiB), default=256, help="bytes per request and response")
    parser.add_argument("--bulk-mib", type=positive(4096), help="MiB in the bulk rows (default 64; quick 8)")
    parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    requests = args.requests or (300 if args.quick else 3000)
    bulk = args.bulk_mib or (8 if args.quick else 64)
    return Config(requests=requests, size=args.size, bulk_mib=bulk, as_json=args.as_json)


def main(argv: Sequence[str] | None = None) -> int:
    return benchlib.run_main("bench_tunnel", run, parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())
