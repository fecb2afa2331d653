#!/usr/bin/python3
"""What starting a whole fleet at once costs (the OpenDHT bench's "time until ready").

N `p2psip node` processes configured as bench/opendht starts them (8 successors, 7
replicas), all started at once on loopback and bootstrapped to the first; the sum of
their CPU time (/proc/PID/stat) every 0.5 s for 8 s. Then one more peer joins the fleet,
quiet by then, and its own CPU time 4 s later is printed: the cost of one join alone.

    /usr/bin/python3 bench/idle/mass_start.py [N]        # N = 100 by default
"""
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
P2PSIP = os.path.join(ROOT, "target", "release", "p2psip")
CLK = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def node(cfg, port, base, log):
    cmd = [P2PSIP, "node", "--config", cfg, "--listen", f"127.0.0.1:{port}"]
    if port != base:
        cmd += ["--bootstrap", f"127.0.0.1:{base}"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    work = tempfile.mkdtemp(prefix="p2psip-mass-start-")
    cfg = os.path.join(work, "p2psip.toml")
    with open(cfg, "w") as f:
        f.write('overlay = "bench.opendht"\n[chord]\nsuccessors = 8\nreplicas = 7\n'
                '[log]\nlevel = "info"\n')
    base = random.randint(20000, 60000 - n - 1)
    procs = []
    try:
        t0 = time.monotonic()
        for i in range(n):
            procs.append(node(cfg, base + i, base, os.path.join(work, f"n{i}.log")))
        print(f"{n} peers started in {time.monotonic() - t0:.2f} s (logs in {work})")
        for _ in range(16):
            time.sleep(0.5)
            total = sum(ticks(p.pid) for p in procs) / CLK
            print(f"t = {time.monotonic() - t0:4.1f} s: {total:.2f} CPU-seconds in all")
        late = node(cfg, base + n, base, os.path.join(work, "late.log"))
        procs.append(late)
        time.sleep(4)
        print(f"one more peer joining the quiet fleet: {ticks(late.pid) * 1000 / CLK:.0f} ms "
              f"of CPU in its first 4 s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
