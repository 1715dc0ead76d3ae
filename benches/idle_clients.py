#!/usr/bin/env python3
"""Idle agent connections for benches/idle.sh: opens connections to pag0's forward proxy, makes
one call on each, then keeps them open and idle until stdin closes (or SIGTERM).

  idle_clients.py --proxy 127.0.0.1:8402 --auth demo:KEY \
      --plain 10000 --plain-url http://127.0.0.1:8080/ \
      --tunnels 2000 --tunnel-target localhost:8443 --ca pag0-ca/ca.crt

--plain: keep-alive connections to the forward proxy, each after one absolute-form GET.
--tunnels: CONNECT tunnels that pag0 intercepts: TLS with pag0's leaf (trusted through --ca),
one GET inside, then idle.
Prints "ready PLAIN TUNNELS" once every connection made its call, then holds them until SIGTERM
or SIGINT, and prints how many pag0 kept open ("open N of M").
"""
import argparse
import asyncio
import base64
import signal
import ssl


async def read_response(reader):
    """Reads one HTTP/1.1 response with a Content-Length body; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def plain(args, auth, held, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(*args.proxy)
        host = args.plain_url.split("/")[2]
        writer.write(
            f"GET {args.plain_url} HTTP/1.1\r\nHost: {host}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        status = await read_response(reader)
        if status != 200:
            raise RuntimeError(f"plain call answered {status}")
        held.append((reader, writer))


async def tunnel(args, auth, context, held, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(*args.proxy)
        target = args.tunnel_target
        writer.write(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"CONNECT answered {head[:60]!r}")
        host = target.rsplit(":", 1)[0]
        await writer.start_tls(context, server_hostname=host)
        writer.write(f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status = await read_response(reader)
        if status != 200:
            raise RuntimeError(f"call inside the tunnel answered {status}")
        held.append((reader, writer))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--auth", required=True, help="PROJECT:KEY")
    p.add_argument("--plain", type=int, default=0)
    p.add_argument("--plain-url")
    p.add_argument("--tunnels", type=int, default=0)
    p.add_argument("--tunnel-target")
    p.add_argument("--ca")
    p.add_argument("--parallel", type=int, default=100)
    args = p.parse_args()
    host, port = args.proxy.rsplit(":", 1)
    args.proxy = (host, int(port))
    auth = base64.b64encode(args.auth.encode()).decode()
    gate = asyncio.Semaphore(args.parallel)
    held = []
    jobs = [plain(args, auth, held, gate) for _ in range(args.plain)]
    if args.tunnels:
        context = ssl.create_default_context(cafile=args.ca)
        jobs += [tunnel(args, auth, context, held, gate) for _ in range(args.tunnels)]
    await asyncio.gather(*jobs)
    print(f"ready {args.plain} {args.tunnels}", flush=True)
    # Hold every connection until a signal ends the process (the transports keep reading, so a
    # connection pag0 closed shows as EOF).
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    alive = sum(1 for reader, _ in held if not reader.at_eof())
    print(f"open {alive} of {len(held)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
