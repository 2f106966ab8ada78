#!/usr/bin/env python3
"""Open N keep-alive connections to one HTTP server, send one request on each, read the
response, keep them all open, and report the resident memory of the server's process tree.

Prints one line of key=value fields on stdout, e.g.
  IDLE opened=10000 failed=0 non200=0 closed=0 rss_before_kb=5120 rss_kb=40960 ...

Used by run.sh (test `idle`); standard library only.
"""
import argparse
import asyncio
import os
import resource
import sys
import time


def tree(pid):
    """pid and all its descendants (nginx: master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss(pid):
    """(sum of VmRSS over the tree, largest single VmRSS in the tree), in KiB."""
    vals = [status_kb(p, "VmRSS") for p in tree(pid)]
    return sum(vals), max(vals or [0])


def established_to(port):
    """TCP connections in state ESTABLISHED whose remote port is `port` (IPv4 and IPv6)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


async def one(args, request, conns, counts):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(args.host, args.port, limit=1 << 16), args.timeout)
    except (OSError, asyncio.TimeoutError) as e:
        counts["failed"] += 1
        counts.setdefault("first_error", f"connect: {e!r}")
        return
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip().lower()
        if "content-length" in hdrs:
            await asyncio.wait_for(reader.readexactly(int(hdrs["content-length"])), args.timeout)
        elif "chunked" in hdrs.get("transfer-encoding", ""):
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        if status != 200:
            counts["non200"] += 1
            counts.setdefault("first_error", f"status {status}")
        if "close" in hdrs.get("connection", ""):
            counts["server_said_close"] += 1
        conns.append((reader, writer))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        counts["failed"] += 1
        counts.setdefault("first_error", f"request: {e!r}")
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--header", action="append", default=[], help="extra request header, 'Name: value'")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200, help="connections being opened at once")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--pid", type=int, required=True, help="server process (its tree is measured)")
    ap.add_argument("--origin-pid", type=int, default=0)
    ap.add_argument("--origin-port", type=int, default=0, help="count connections to this port")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + 1024
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
        except (ValueError, OSError):
            pass
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < args.conns + 64:  # room for /proc reads and the event loop
        sys.exit(f"open-file limit {nofile} is too low for {args.conns} connections")

    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
               + "".join(h + "\r\n" for h in args.header) + "\r\n").encode()
    before, before_main = rss(args.pid)
    origin_before = rss(args.origin_pid)[0] if args.origin_pid else 0
    up_before = established_to(args.origin_port) if args.origin_port else 0
    counts = {"failed": 0, "non200": 0, "server_said_close": 0}
    conns = []
    sem = asyncio.Semaphore(args.concurrency)

    async def limited():
        async with sem:
            await one(args, request, conns, counts)

    t0 = time.monotonic()
    await asyncio.gather(*(limited() for _ in range(args.conns)))
    open_secs = time.monotonic() - t0
    await asyncio.sleep(args.settle)
    after, after_main = rss(args.pid)
    hwm = sum(status_kb(p, "VmHWM") for p in tree(args.pid))
    origin_after = rss(args.origin_pid)[0] if args.origin_pid else 0
    up_after = established_to(args.origin_port) if args.origin_port else 0
    await asyncio.sleep(0.2)  # let EOFs that raced with the reading be seen
    closed = sum(1 for r, _ in conns if r.at_eof())
    print(f"IDLE opened={len(conns)} failed={counts['failed']} non200={counts['non200']} "
          f"closed={closed} server_said_close={counts['server_said_close']} "
          f"rss_before_kb={before} rss_kb={after} rss_main_kb={after_main} hwm_kb={hwm} "
          f"origin_rss_before_kb={origin_before} origin_rss_kb={origin_after} "
          f"upstream_conns_added={up_after - up_before} "
          f"open_secs={open_secs:.2f} nofile={nofile}")
    if "first_error" in counts:
        print(f"first error: {counts['first_error']}", file=sys.stderr)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
