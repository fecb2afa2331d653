#!/usr/bin/python3
"""p2psip against OpenDHT, side by side on loopback, in one run (bench/opendht/run.sh).

For each fleet size N: N `p2psip node` processes and N `dhtnode` processes, each
bootstrapped to the first of its fleet. For each fleet one client, attached to the last
peer started, measures:
  - ready: time from starting the first peer until a round of 20 values put through the
    client all come back on get;
  - put and get latency, one request at a time (median, p99) over COUNT values;
  - put+get operations per second with WINDOW requests in flight for DURATION;
  - RSS per peer after the load, and CPU per peer while idle (10 s after 5 s of rest).
The p2psip client is `p2psip client bench` (Rust); the OpenDHT client is a DhtRunner of
python3-opendht in this process. Values are VALUE_SIZE bytes. Prints a table with the
ratio ours/theirs for every figure, and with --write-docs puts it into docs/benchmarks.md.
"""
import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

try:
    import opendht
except ImportError:
    sys.exit("python3-opendht is missing: apt-get install dhtnode python3-opendht "
             "(and run this with Debian's /usr/bin/python3)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
P2PSIP = os.path.join(ROOT, "target", "release", "p2psip")
CLK = os.sysconf("SC_CLK_TCK")


def free_base(n):
    """A base port whose n consecutive UDP ports are free on loopback now (a second run,
    or anything else on the machine, gets other ports)."""
    for _ in range(100):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free UDP ports found")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[round((len(sorted_values) - 1) * p)]


def idle_and_memory(procs, rest, window):
    """Mean and max RSS (MiB) of the peers, then their mean CPU (% of one core) over
    `window` seconds after `rest` seconds without requests."""
    rss = [rss_kib(p.pid) / 1024 for p in procs]
    time.sleep(rest)
    before = [cpu_ticks(p.pid) for p in procs]
    t = time.monotonic()
    time.sleep(window)
    dt = time.monotonic() - t
    after = [cpu_ticks(p.pid) for p in procs]
    cpu = [100.0 * (a - b) / CLK / dt for a, b in zip(after, before)]
    return {"rss_mib": sum(rss) / len(rss), "rss_max_mib": max(rss),
            "cpu_idle_pct": sum(cpu) / len(cpu)}


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_ours(n, base_port, args, work):
    cfg = os.path.join(work, "p2psip.toml")
    with open(cfg, "w") as f:
        # OpenDHT keeps each value on the 8 nodes closest to its key: 8 copies here too.
        f.write('overlay = "bench.opendht"\n[chord]\nsuccessors = 8\nreplicas = 7\n'
                '[log]\nlevel = "info"\n')
        if args.extra:
            f.write(args.extra.replace("\\n", "\n") + "\n")
    with open(cfg) as f:
        cfg_text = f.read()
    first = f"127.0.0.1:{base_port}"
    procs = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            cmd = [P2PSIP, "node", "--config", cfg, "--listen", f"127.0.0.1:{base_port + i}"]
            if i > 0:
                cmd += ["--bootstrap", first]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(os.path.join(work, f"n{i}.log"), "w")))
        started = time.monotonic() - t0
        # The client must sign (or not) as the peers do.
        unsigned = ["--unsigned-messages"] if "sign_messages = false" in cfg_text else []
        out = subprocess.run(
            [P2PSIP, "client", "--peer", f"127.0.0.1:{base_port + n - 1}",
             "--overlay", "bench.opendht", "--timeout", "2s", *unsigned,
             "--log-level", "warn,p2psip_node::bench=info", "bench",
             "--count", str(args.count), "--value-size", str(args.value_size),
             "--duration", f"{args.duration}s", "--window", str(args.window),
             "--check-peer", first],
            capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"p2psip client bench failed: {out.stderr.strip()[-2000:]}")
        r = json.loads(out.stdout)
        waits = [l for l in out.stderr.splitlines() if "not ready" in l]
        if waits:
            print(f"  p2psip ready after {r['ready_rounds']} rounds; {len(waits)} probe "
                  f"failures, first: {waits[0][-160:]}", file=sys.stderr, flush=True)
        missed = r["found_elsewhere"].get("not_found") or {}
        if missed:
            print(f"  p2psip: values not found through the first peer: {missed}",
                  file=sys.stderr, flush=True)
        res = {
            "ready_s": started + r["ready_ms"] / 1000,
            "put_p50": r["put"]["p50_ms"], "put_p99": r["put"]["p99_ms"],
            "put_failed": r["put"]["failed"],
            "get_p50": r["get"]["latency"]["p50_ms"], "get_p99": r["get"]["latency"]["p99_ms"],
            "found": r["get"]["found"],
            "ops": r["throughput"]["ops_per_s"], "ops_failed": r["throughput"]["failed"],
            "found_elsewhere": r["found_elsewhere"]["found"],
        }
        res.update(idle_and_memory(procs, args.rest, args.idle))
        return res
    finally:
        stop(procs)


def payload(key, size):
    v = (key + "|").encode()
    fill = opendht.InfoHash.get(key).toString()
    while len(v) < size:
        v += fill
    return v[:size]


class DhtClient:
    def __init__(self, bootstrap_port):
        self.r = opendht.DhtRunner()
        self.r.run(port=0)
        self.r.bootstrap("127.0.0.1", str(bootstrap_port))

    def put(self, key, size):
        return bool(self.r.put(opendht.InfoHash.get(key), opendht.Value(payload(key, size))))

    def get(self, key, size):
        want = payload(key, size)
        return any(v.data == want for v in self.r.get(opendht.InfoHash.get(key)))



def throughput(client, keys, args):
    """`window` operations in flight, alternating puts of new keys and gets of `keys`."""
    lock = threading.Condition()
    state = {"in_flight": 0, "ok": 0, "bad": 0}
    t0 = time.monotonic()
    i = 0

    def finished(ok):
        with lock:
            state["in_flight"] -= 1
            state["ok" if ok else "bad"] += 1
            lock.notify()

    while time.monotonic() - t0 < args.duration:
        with lock:
            while state["in_flight"] >= args.window:
                lock.wait(1.0)
            state["in_flight"] += 1
        if i % 2 == 0:
            k = f"load-{i}-{t0}"
            client.r.put(opendht.InfoHash.get(k), opendht.Value(payload(k, args.value_size)),
                         lambda ok, nodes=None: finished(ok))
        else:
            k = keys[(i * 7919) % len(keys)]
            want = payload(k, args.value_size)
            found = []

            def on_value(v, want=want, found=found):
                if v.data == want:
                    found.append(1)
                return True

            client.r.get(opendht.InfoHash.get(k), on_value,
                         lambda ok, nodes=None, found=found: finished(bool(found)))
        i += 1
    secs = time.monotonic() - t0
    with lock:
        end = time.monotonic() + 30
        while state["in_flight"] > 0 and time.monotonic() < end:
            lock.wait(1.0)
    return state["ok"] / secs, state["bad"]


def run_opendht(n, base_port, args, work):
    """In a child process: the DhtRunner's threads (which a shutdown can leave blocked on
    pending callbacks) end with it."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def body():
        try:
            child.send(("ok", run_opendht_here(n, base_port, args, work)))
        except Exception as e:  # reported by the parent
            child.send(("error", repr(e)))
        child.close()
        os._exit(0)

    p = ctx.Process(target=body)
    p.start()
    if not parent.poll(900):
        p.kill()
        raise RuntimeError("OpenDHT run did not finish within 900 s")
    status, value = parent.recv()
    p.join(10)
    if status != "ok":
        raise RuntimeError(f"OpenDHT run failed: {value}")
    return value


def run_opendht_here(n, base_port, args, work):
    procs = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            cmd = ["dhtnode", "-p", str(base_port + i)]
            if i > 0:
                cmd += ["-b", f"127.0.0.1:{base_port}"]
            # dhtnode reads console commands on stdin: an open pipe, never written.
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(os.path.join(work, f"d{i}.log"), "w")))
        client = DhtClient(base_port + n - 1)
        deadline = time.monotonic() + 120
        rnd = 0
        while True:
            rnd += 1
            keys = [f"probe-{rnd}-{i}-{t0}" for i in range(20)]
            ok = all([client.put(k, args.value_size) for k in keys])
            ok = all([client.get(k, args.value_size) for k in keys]) and ok
            if ok:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("OpenDHT fleet not ready within 120 s")
            time.sleep(0.1)
        ready = time.monotonic() - t0
        keys = [f"bench-{i}-{t0}" for i in range(args.count)]
        put_ms, put_failed = [], 0
        for k in keys:
            t = time.monotonic()
            if client.put(k, args.value_size):
                put_ms.append((time.monotonic() - t) * 1000)
            else:
                put_failed += 1
        get_ms, found = [], 0
        for k in keys:
            t = time.monotonic()
            hit = client.get(k, args.value_size)
            get_ms.append((time.monotonic() - t) * 1000)
            found += hit
        ops, ops_failed = throughput(client, keys, args)
        # The first values again, through a second client bootstrapped to the first peer.
        other = DhtClient(base_port)
        elsewhere = sum(other.get(k, args.value_size) for k in keys[:100])
        put_ms.sort()
        get_ms.sort()
        res = {"ready_s": ready, "put_p50": pct(put_ms, 0.5), "put_p99": pct(put_ms, 0.99),
               "put_failed": put_failed, "get_p50": pct(get_ms, 0.5),
               "get_p99": pct(get_ms, 0.99), "found": found, "ops": ops,
               "ops_failed": ops_failed, "found_elsewhere": elsewhere}
        res.update(idle_and_memory(procs, args.rest, args.idle))
        return res
    finally:
        stop(procs)


ROWS = [
    ("ready_s", "time until the fleet answers every get (s)", "{:.2f}", "lower"),
    ("put_p50", "put latency median (ms)", "{:.2f}", "lower"),
    ("put_p99", "put latency p99 (ms)", "{:.2f}", "lower"),
    ("get_p50", "get latency median (ms)", "{:.2f}", "lower"),
    ("get_p99", "get latency p99 (ms)", "{:.2f}", "lower"),
    ("found", "values found intact (of COUNT)", "{:.0f}", "higher"),
    ("found_elsewhere", "of them, first 100 found through the first peer", "{:.0f}", "higher"),
    ("ops", "put+get per second, one client", "{:.0f}", "higher"),
    ("rss_mib", "RSS per peer (MiB)", "{:.1f}", "lower"),
    ("cpu_idle_pct", "CPU per idle peer (% of a core)", "{:.2f}", "lower"),
]


def table(results, count):
    lines = ["| N | figure | p2psip | OpenDHT | ours/theirs | better is |",
             "|---:|---|---:|---:|---:|---|"]
    for n, (ours, theirs) in results:
        for key, label, fmt, better in ROWS:
            a, b = ours[key], theirs[key]
            ratio = f"{a / b:.2f}" if b else "n/a"
            lines.append(f"| {n} | {label.replace('COUNT', str(count))} | {fmt.format(a)} | "
                         f"{fmt.format(b)} | {ratio} | {better} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="20,50", help="fleet sizes, comma-separated")
    ap.add_argument("--count", type=int, default=1000, help="values for the latency phase")
    ap.add_argument("--value-size", type=int, default=200, help="bytes per value")
    ap.add_argument("--duration", type=int, default=10, help="throughput phase, seconds")
    ap.add_argument("--window", type=int, default=64, help="requests in flight")
    ap.add_argument("--rest", type=float, default=5, help="seconds of rest before idle CPU")
    ap.add_argument("--idle", type=float, default=10, help="seconds of idle CPU sampling")
    ap.add_argument("--only", choices=["both", "p2psip", "opendht"], default="both",
                    help="run one side only (for trying settings; no table then)")
    ap.add_argument("--extra", metavar="TOML", default="",
                    help="appended to the p2psip peers' config (\\n separates lines), "
                         "e.g. '[timers]\\nkeep_alive_ms = 15000'")
    ap.add_argument("--write-docs", metavar="FILE",
                    help="replace the table between the opendht markers in FILE")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = ap.parse_args()
    if not os.path.exists(P2PSIP):
        sys.exit(f"{P2PSIP} is missing: cargo build --release -p p2psip-node")
    results = []
    work = tempfile.mkdtemp(prefix="p2psip-vs-opendht-")
    print(f"peer logs in {work}", file=sys.stderr, flush=True)
    for n in [int(x) for x in args.nodes.split(",")]:
        ours = theirs = None
        if args.only != "opendht":
            print(f"N = {n}: p2psip ...", file=sys.stderr, flush=True)
            ours = run_ours(n, free_base(n), args, work)
            print(f"  {json.dumps(ours)}", file=sys.stderr, flush=True)
        if args.only != "p2psip":
            print(f"N = {n}: OpenDHT ...", file=sys.stderr, flush=True)
            theirs = run_opendht(n, free_base(n), args, work)
            print(f"  {json.dumps(theirs)}", file=sys.stderr, flush=True)
        results.append((n, (ours, theirs)))
    if args.only != "both":
        return
    text = table(results, args.count)
    print(text, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"n": n, "p2psip": o, "opendht": t} for n, (o, t) in results], f,
                      indent=1)
    if args.write_docs:
        with open(args.write_docs) as f:
            doc = f.read()
        begin, end = "<!-- opendht:begin -->", "<!-- opendht:end -->"
        if begin not in doc or end not in doc:
            sys.exit(f"{args.write_docs} has no {begin} ... {end} markers")
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        stamp = time.strftime("%Y-%m-%d")
        with open(args.write_docs, "w") as f:
            f.write(f"{head}{begin}\n({stamp}, `bash bench/opendht/run.sh "
                    f"--nodes {args.nodes} --count {args.count} --duration {args.duration} "
                    f"--window {args.window}`)\n\n{text}\n{end}{tail}")


if __name__ == "__main__":
    main()
