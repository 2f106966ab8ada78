#!/usr/bin/env python3
"""Markdown table for one benches/vs-nginx/run.sh run.

    python3 benches/vs-nginx/report.py RESULTS.tsv [RESULTS.meta]

The TSV has one value per row: round, test, target, metric, value. Ratios are
gatehouse / nginx, computed per round (the two targets ran next to each other in time) and then
the median over rounds is taken; the absolute values are medians over rounds as well. A
measurement marked failed (socket errors, non-2xx, missing trail records, idle connections that
did not stay open) is left out of every median and its test is flagged.
"""
import statistics
import sys
from collections import defaultdict

NGINX = {"small": "nginx", "big": "nginx", "idle": "nginx", "tls": "nginx-tls", "handshake": "nginx-tls"}
GW = {"small": "gatehouse", "big": "gatehouse", "idle": "gatehouse", "tls": "gatehouse-tls", "handshake": "gatehouse-tls"}
TITLE = {
    "small": "small GET, keep-alive, HTTP",
    "tls": "small GET, keep-alive, TLS",
    "big": "64 MiB GET, HTTP",
    "handshake": "new TLS connection per request",
    "idle": "idle keep-alive connections",
}


def load(path):
    data = defaultdict(dict)  # (round, test, target) -> {metric: float}
    for i, line in enumerate(open(path)):
        f = line.rstrip("\n").split("\t")
        if i == 0 and f[0] == "round":
            continue
        if len(f) != 5:
            continue
        rnd, test, target, metric, value = f
        try:
            data[(int(rnd), test, target)][metric] = float(value)
        except ValueError:
            pass
    return data


def derive(m, test):
    secs = m.get("secs") or float("nan")
    req = m.get("requests", 0)
    if "requests" in m:
        m["rps"] = req / secs
        m["mbps"] = m.get("bytes", 0) / secs / 1e6
        m["cpu_us_req"] = m.get("proxy_cpu_s", 0) / max(req, 1) * 1e6
        m["origin_us_req"] = m.get("origin_cpu_s", 0) / max(req, 1) * 1e6
        m["cpu_s_gb"] = m.get("proxy_cpu_s", 0) / max(m.get("bytes", 0) / 1e9, 1e-12)
        m["p50_ms"] = m.get("p50_us", 0) / 1000
        m["p99_ms"] = m.get("p99_us", 0) / 1000
    if test == "idle" and "rss_kb" in m:
        m["rss_mib"] = m["rss_kb"] / 1024
        m["rss_before_mib"] = m.get("rss_before_kb", 0) / 1024
        m["kib_per_conn"] = (m["rss_kb"] - m.get("rss_before_kb", 0)) / max(m.get("opened", 1), 1)
    if test == "peak_rss":
        m["hwm_mib"] = m.get("hwm_kb", 0) / 1024
        m["hwm_main_mib"] = m.get("hwm_main_kb", 0) / 1024
    return m


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(v, digits):
    if v != v:
        return "–"
    return f"{v:,.{digits}f}"


def main(tsv, meta_path=None):
    data = load(tsv)
    for (rnd, test, target), m in data.items():
        derive(m, test)
    rounds = sorted({k[0] for k in data})
    tests = []
    for (_, test, _) in sorted(data, key=lambda k: k[0]):
        if test not in tests and test != "peak_rss":
            tests.append(test)

    meta = {}
    if meta_path:
        for line in open(meta_path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v

    def valid(test, target):
        """round -> metrics of the measurements that did not fail."""
        return {r: data[(r, test, target)] for r in rounds
                if (r, test, target) in data and not data[(r, test, target)].get("failed", 0)}

    def failed_rounds(test):
        return sorted({r for (r, t, _), m in data.items() if t == test and m.get("failed", 0)})

    out = []
    if meta:
        out.append(f"# gatehouse vs nginx: {meta.get('date', '?')}")
        out.append("")
        out.append(f"{meta.get('machine', '?')}; {meta.get('nginx', '?')}; {meta.get('wrk', '?')} (1 thread); "
                   f"gatehouse {meta.get('gatehouse', '?')}; ROUNDS={meta.get('rounds', '?')} DUR={meta.get('dur', '?')}s; "
                   f"pinning: {meta.get('pinning', '?')}")
        out.append("")
        out.append(f"connections: {meta.get('conns', '?')}; paths: {meta.get('paths', '?')}; TLS: {meta.get('tls', '?')}")
    else:
        out.append(f"# gatehouse vs nginx ({tsv})")
    out.append("")
    out.append("| test | metric | nginx | gatehouse | gatehouse ÷ nginx (min–max) | target | result |")
    out.append("|---|---|---:|---:|---:|---|---|")

    summary = []

    def row(test, label, metric, digits, target=None, only=None, ratio=True):
        """target: ('ratio'|'abs', op, bound). Ratios: median over rounds of per-round pairs.
        only: 'first' or 'last' to use one round instead of the median over all."""
        a, b = valid(test, NGINX[test]), valid(test, GW[test])
        if only and rounds:
            pick = rounds[0] if only == "first" else rounds[-1]
            a = {r: m for r, m in a.items() if r == pick}
            b = {r: m for r, m in b.items() if r == pick}
        na, nb = med([m.get(metric, float("nan")) for m in a.values()]), med([m.get(metric, float("nan")) for m in b.values()])
        pairs = [b[r][metric] / a[r][metric] for r in rounds if r in a and r in b
                 and metric in a[r] and metric in b[r] and a[r][metric]]
        rcell = "–"
        rmed = med(pairs)
        if ratio and pairs:
            rcell = f"{rmed:.2f}×" + (f" ({min(pairs):.2f}–{max(pairs):.2f})" if len(pairs) > 1 else "")
        tcell, res = "–", ""
        if target:
            kind, op, bound = target
            v = nb if kind == "abs" else rmed
            unit = " MiB" if kind == "abs" else "×"
            tcell = f"{op} {bound:g}{unit}"
            if v != v:
                res = "**no valid measurement**"
            else:
                ok = v >= bound if op == "≥" else v <= bound
                res = "met" if ok else "**missed**"
            summary.append((f"{TITLE.get(test, test)}: {label}", tcell, res))
        fr = failed_rounds(test)
        if fr and target:
            res += f" ⚠ failed in round(s) {','.join(map(str, fr))}"
        out.append(f"| {TITLE.get(test, test) if label == first[test] else ''} | {label} | {fmt(na, digits)} | {fmt(nb, digits)} | {rcell} | {tcell} | {res} |")

    first = {}
    spec = {
        "small": [("req/s", "rps", 0, ("ratio", "≥", 1.2)),
                  ("proxy CPU µs/req", "cpu_us_req", 1, ("ratio", "≤", 0.8)),
                  ("p50 ms", "p50_ms", 2, None),
                  ("p99 ms", "p99_ms", 2, ("ratio", "≤", 1.0)),
                  ("origin CPU µs/req", "origin_us_req", 1, None)],
        "tls": [("req/s", "rps", 0, ("ratio", "≥", 1.2)),
                ("proxy CPU µs/req", "cpu_us_req", 1, None),
                ("p50 ms", "p50_ms", 2, None),
                ("p99 ms", "p99_ms", 2, ("ratio", "≤", 1.0))],
        "big": [("MB/s", "mbps", 0, ("ratio", "≥", 1.3)),
                ("proxy CPU s/GB", "cpu_s_gb", 3, None)],
        "handshake": [("handshakes/s", "rps", 0, None),
                      ("proxy CPU µs/conn", "cpu_us_req", 1, None),
                      ("p99 ms", "p99_ms", 2, None)],
        "idle": [("RSS MiB, all open (median of rounds)", "rss_mib", 1, ("abs", "≤", 64), None),
                 ("RSS MiB, all open, round 1", "rss_mib", 1, None, "first"),
                 ("RSS MiB before opening, round 1 (fresh process)", "rss_before_mib", 1, None, "first"),
                 ("KiB per connection, round 1", "kib_per_conn", 1, None, "first"),
                 ("connections to the origin added, round 1", "upstream_conns_added", 0, None, "first", False)],
    }
    if len(rounds) > 1:
        spec["idle"].insert(3, ("RSS MiB before opening, last round (earlier rounds' connections closed)",
                                "rss_before_mib", 1, None, "last"))
    for test in tests:
        if test not in spec:
            continue
        first[test] = spec[test][0][0]
        if test == "idle":
            # how many were open when RSS was read (the gateway's instance)
            opened = med([m.get("opened", float("nan")) for m in valid(test, GW[test]).values()])
            TITLE["idle"] = f"{fmt(opened, 0)} idle keep-alive connections"
        for label, metric, digits, target, *rest in spec[test]:
            row(test, label, metric, digits, target, *rest)

    # peak RSS after the load tests: the last round's reading (VmHWM is a high-water mark)
    last = max(rounds) if rounds else 0
    pk = {t: data.get((last, "peak_rss", t), {}) for t in ("nginx", "gatehouse", "nginx-tls", "gatehouse-tls")}
    if any(pk.values()):
        for n, g, label in (("nginx", "gatehouse", "HTTP instance"), ("nginx-tls", "gatehouse-tls", "TLS instance")):
            if not pk[g]:
                continue
            nv, gv = pk[n].get("hwm_mib", float("nan")), pk[g].get("hwm_mib", float("nan"))
            nmain = pk[n].get("hwm_main_mib", float("nan"))
            res = "met" if gv <= 32 else "**missed**"
            summary.append((f"peak RSS, {label}", "≤ 32 MiB", res))
            ratio = f"{gv / nv:.2f}×" if nv == nv and nv else "–"
            first_cell = "peak RSS after all loads (VmHWM)" if label == "HTTP instance" else ""
            out.append(f"| {first_cell} | MiB, {label} (nginx worker alone: {fmt(nmain, 1)}) | {fmt(nv, 1)} | {fmt(gv, 1)} | {ratio} | ≤ 32 MiB | {res} |")

    out.append("")
    # validity: errors, trail, noise indicators
    out.append("| test | target | rounds valid | requests (median) | socket errors + non-2xx (all rounds) | trail records ÷ requests | TCP accepts ÷ requests | proxy CPU % | origin CPU % | server core busy % | client core busy % | steal % |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for test in tests:
        if test == "idle":
            for target in (NGINX[test], GW[test]):
                allr = {r: data[(r, test, target)] for r in rounds if (r, test, target) in data}
                if not allr:
                    continue
                bad_conns = sum(m.get("failed", 0) + m.get("non200", 0) + m.get("closed", 0) for m in allr.values())
                out.append(f"| idle | {target} | {len(valid(test, target))}/{len(allr)} | "
                           f"{fmt(med([m.get('opened', float('nan')) for m in allr.values()]), 0)} open | "
                           f"{'**' + str(int(bad_conns)) + '**' if bad_conns else 0} failed/non-200/closed | – | – | – | – | – | – | – |")
            continue
        for target in (NGINX[test], GW[test]):
            allr = {r: data[(r, test, target)] for r in rounds if (r, test, target) in data}
            if not allr:
                continue
            ok = valid(test, target)
            errs = sum(m.get("socket_errors", 0) + m.get("non2xx", 0) for m in allr.values())
            trail = [m["audit_records"] / m["requests"] for m in allr.values() if "audit_records" in m and m.get("requests")]
            accepts = [m["tcp_accepted"] / m["requests"] for m in allr.values() if "tcp_accepted" in m and m.get("requests")]
            out.append(f"| {test} | {target} | {len(ok)}/{len(allr)} | {fmt(med([m.get('requests', float('nan')) for m in allr.values()]), 0)} | "
                       f"{'**' + str(int(errs)) + '**' if errs else 0} | {fmt(med(trail), 3) if trail else '–'} | "
                       f"{fmt(med(accepts), 3) if accepts else '–'} | "
                       f"{fmt(med([100 * m.get('proxy_cpu_s', float('nan')) / m['secs'] for m in allr.values() if m.get('secs')]), 0)} | "
                       f"{fmt(med([100 * m.get('origin_cpu_s', float('nan')) / m['secs'] for m in allr.values() if m.get('secs')]), 0)} | "
                       f"{fmt(med([m.get('server_core_busy_pct', float('nan')) for m in allr.values()]), 0)} | "
                       f"{fmt(med([m.get('client_core_busy_pct', float('nan')) for m in allr.values()]), 0)} | "
                       f"{fmt(med([m.get('server_core_steal_pct', float('nan')) for m in allr.values()]), 1)} |")
    out.append("")
    met = sum(1 for _, _, r in summary if r == "met")
    out.append(f"Targets met: {met} of {len(summary)}." + (
        " Missed: " + "; ".join(f"{n} ({t})" for n, t, r in summary if r != "met") + "." if met < len(summary) else ""))
    bad = sorted({(t, r) for (r, t, _), m in data.items() if m.get("failed", 0)})
    if bad:
        out.append("")
        out.append("**FAILED MEASUREMENTS (left out of the medians): " + ", ".join(f"{t} round {r}" for t, r in bad) + ".**")
    out.append("")
    out.append("Ratios are gatehouse ÷ nginx per round (the two ran back to back), median over rounds, "
               "with the range over rounds in brackets; the absolute columns are medians over rounds. "
               "Proxy CPU = utime+stime of the proxy's processes (all threads; nginx: master + worker) "
               "during the measurement, over the requests (connections for handshakes) wrk completed. "
               "Peak RSS = VmHWM summed over the proxy's processes after all load tests. Idle: VmRSS of "
               "separate instances (started with the others, used for nothing else; round 1 sees a fresh "
               "process, later rounds one whose earlier idle connections were closed). Trail records ÷ "
               "requests counts the gateway's audit records written during the measurement (a decision "
               "and a completion per request: about 2). TCP accepts ÷ requests: connections accepted on the "
               "machine during the measurement (all processes) per request; about 1 in the handshake test "
               "shows that every request paid for a new connection. When the client core is near 100 % the test is "
               "client-bound (typically big and handshake): compare proxy CPU per request, not req/s or MB/s.")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
