#!/usr/bin/python3
"""What the periodic re-push costs a fleet that holds data (issue 25).

For each binary given (default target/release/p2psip): 5 `p2psip node` processes on
loopback, each with a data directory (durable commits), `timers.replication_interval_s`
at 15 s instead of 300 so that a minute holds four full re-pushes; a client stores 3,000
values (the `p2psip client bench` latency phase, then one second of its mixed load); 5 s
later the peers' CPU time over 60 s, from /proc/PID/stat. Run the binaries one after
the other in one sitting, e.g. a build of the commit before a change copied aside:

    /usr/bin/python3 bench/idle/repush.py /tmp/p2psip-before target/release/p2psip
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS, VALUES, WINDOW_S = 5, 3000, 60
CLK = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def run(binary):
    work = tempfile.mkdtemp(prefix="p2psip-repush-")
    cfg = os.path.join(work, "p2psip.toml")
    with open(cfg, "w") as f:
        f.write('overlay = "repush"\n[timers]\nreplication_interval_s = 15\n'
                '[log]\nlevel = "warn"\n')
    base = random.randint(20000, 60000 - PEERS)
    procs = []
    try:
        for i in range(PEERS):
            cmd = [binary, "node", "--config", cfg, "--listen", f"127.0.0.1:{base + i}",
                   "--data-dir", os.path.join(work, f"d{i}")]
            if i > 0:
                cmd += ["--bootstrap", f"127.0.0.1:{base}"]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(os.path.join(work, f"n{i}.log"), "w")))
        out = subprocess.run(
            [binary, "client", "--peer", f"127.0.0.1:{base + PEERS - 1}", "--overlay",
             "repush", "--timeout", "5s", "bench", "--count", str(VALUES), "--duration",
             "1s", "--window", "16"], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            sys.exit(f"{binary}: client bench failed: {out.stderr.strip()[-1000:]}")
        r = json.loads(out.stdout)
        time.sleep(5)
        before = [ticks(p.pid) for p in procs]
        t = time.monotonic()
        time.sleep(WINDOW_S)
        dt = time.monotonic() - t
        after = [ticks(p.pid) for p in procs]
        cpu = [100.0 * (a - b) / CLK / dt for a, b in zip(after, before)]
        print(f"{binary}: {r['put']['failed']} of {VALUES} stores failed; CPU per peer over "
              f"{WINDOW_S} s (four re-pushes): {sum(cpu) / len(cpu):.2f} % of a core",
              flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    for binary in sys.argv[1:] or [os.path.join(ROOT, "target", "release", "p2psip")]:
        run(binary)


if __name__ == "__main__":
    main()
