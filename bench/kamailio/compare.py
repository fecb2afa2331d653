#!/usr/bin/python3
"""p2psip's SIP front-ends against Kamailio, side by side on loopback (bench/kamailio/run.sh).

Both systems get the same SIPp scenarios (node/tests/sip/*.xml):
  - p2psip: `p2psip devnet --sip` (5 peers, Chord, Digest authentication of REGISTER on);
    alice registers through the first peer's front-end, the calls go through the fourth's,
    so every call's set-up crosses the overlay (a Fetch of her registration, then SIP over
    the application connection to her registrar's node);
  - Kamailio 5.6: one process as registrar (usrloc in memory, Digest via
    pv_www_authenticate) and record-routing proxy, 4 children.
The callee is a SIPp UAS answering 180 then 200; the caller's calls come from another
domain and are not challenged in either system. Figures:
  - set-up time (INVITE to 200 OK, SIPp's response-time trace) at LATENCY_RATE calls/s:
    median, p99;
  - for each rate of RATES, STEP_SECONDS of calls; the highest rate with under 1% failed
    calls (and the failed share at each rate).
"""
import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
P2PSIP = os.path.join(ROOT, "target", "release", "p2psip")
SCEN = os.path.join(ROOT, "node", "tests", "sip")
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
PASSWORD = "alice-secret"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(v, p):
    return v[round((len(v) - 1) * p)] if v else float("nan")


KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=4
listen=udp:127.0.0.1:{port}
alias="p2psip"
mpath="{modules}"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("usrloc", "db_mode", 0)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("p2psip", "{password}", "0")) {{
            www_challenge("p2psip", "0"); exit;
        }}
        save("location"); exit;
    }}
    record_route();
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"""


class System:
    """One side: its processes, where to register alice and where to call her."""

    def __init__(self, name, register_at, call_at, procs, work):
        self.name, self.register_at, self.call_at = name, register_at, call_at
        self.procs, self.work = procs, work
        self.pids = []

    def stop(self):
        for pid in self.pids:
            try:
                os.kill(pid, 15)
            except OSError:
                pass
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def start_p2psip(work):
    users = os.path.join(work, "sip-users")
    subprocess.run([P2PSIP, "sip", "add-user", users, "alice", "--realm", "p2psip"],
                   env={**os.environ, "P2PSIP_PASSWORD": PASSWORD}, check=True,
                   stdout=subprocess.DEVNULL)
    base = free_port()
    while any(not port_free(base + i) for i in range(5)):
        base = free_port()
    log = open(os.path.join(work, "devnet.log"), "w")
    p = subprocess.Popen([P2PSIP, "devnet", "--sip", str(base), "--sip-users", users,
                          "--users", "0", "--metrics", "127.0.0.1:0"],
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        with open(os.path.join(work, "devnet.log")) as f:
            if "running" in f.read():
                break
        time.sleep(0.2)
    else:
        sys.exit("devnet did not start; see " + log.name)
    return System("p2psip (5 peers, across the overlay)", f"127.0.0.1:{base}",
                  f"127.0.0.1:{base + 3}", [p], work)


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_kamailio(work):
    port = free_port()
    cfg = os.path.join(work, "kamailio.cfg")
    with open(cfg, "w") as f:
        f.write(KAMAILIO_CFG.format(port=port, modules=MODULES, password=PASSWORD))
    log = open(os.path.join(work, "kamailio.log"), "w")
    # -m / -M: shared and private memory (MB); the defaults (64 / 8) run out of
    # transactions past a few hundred calls a second.
    p = subprocess.Popen(["kamailio", "-f", cfg, "-DD", "-E", "-m", "1024", "-M", "32"], stdout=log, stderr=subprocess.STDOUT)
    time.sleep(2)
    if p.poll() is not None:
        sys.exit("kamailio did not start; see " + log.name)
    return System("Kamailio 5.6 (registrar + proxy)", f"127.0.0.1:{port}",
                  f"127.0.0.1:{port}", [p], work)


def sipp(args, cwd, timeout):
    return subprocess.run(["sipp"] + args, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=timeout)


def register_alice(system):
    """A SIPp UAS as alice's phone, registered (with her password); returns it."""
    uas_port = free_port()
    # -bg: SIPp forks to the background and prints its PID, kept to stop it at the end.
    uas = subprocess.run(["sipp", "-sf", os.path.join(SCEN, "uas.xml"), "-s", "alice",
                          "-i", "127.0.0.1", "-p", str(uas_port), "-bg"],
                         cwd=system.work, capture_output=True, text=True, timeout=10)
    pid = uas.stdout.split("PID=[")[-1].split("]")[0]
    if pid.isdigit():
        system.pids.append(int(pid))
    r = sipp([system.register_at, "-sf", os.path.join(SCEN, "register.xml"), "-s", "alice",
              "-ap", PASSWORD, "-key", "uas_port", str(uas_port), "-key", "expires", "3600",
              "-m", "1", "-i", "127.0.0.1", "-p", str(free_port())], system.work, 30)
    if r.returncode != 0:
        sys.exit(f"{system.name}: alice's REGISTER failed")


def calls(system, count, rate, rtt):
    """COUNT calls at RATE per second; (completed, failed, set-up times in ms)."""
    d = tempfile.mkdtemp(dir=system.work)
    args = [system.call_at, "-sf", os.path.join(SCEN, "uac.xml"), "-s", "alice",
            "-m", str(count), "-r", str(rate), "-i", "127.0.0.1", "-p", str(free_port()),
            "-trace_stat", "-fd", "1", "-timeout", str(int(count / rate) + 30), "-timeout_error",
            "-recv_timeout", "5000", "-l", str(max(rate * 8, 100))]
    if rtt:
        args += ["-trace_rtt", "-rtt_freq", "1"]
    if os.environ.get("BENCH_TRACE_ERR"):
        args += ["-trace_err"]
    sipp(args, d, count / rate + 60)
    ok = failed = 0
    why = {}
    for stat in glob.glob(os.path.join(d, "uac_*_.csv")):
        with open(stat) as f:
            lines = [l.rstrip("\n").split(";") for l in f if l.strip()]
        head, last = lines[0], lines[-1]
        ok = int(last[head.index("SuccessfulCall(C)")])
        failed = int(last[head.index("FailedCall(C)")])
        why = {k: int(last[head.index(k + "(C)")]) for k in
               ("FailedMaxUDPRetrans", "FailedUnexpectedMessage", "FailedTimeoutOnRecv",
                "FailedCallRejected", "Retransmissions") if k + "(C)" in head}
        if failed:
            print(f"    failed calls at {rate}/s: " + ", ".join(f"{k} {v}" for k, v in why.items() if v),
                  flush=True)
    times = []
    for t in glob.glob(os.path.join(d, "uac_*_rtt.csv")):
        with open(t) as f:
            for line in list(f)[1:]:
                parts = line.split(";")
                if len(parts) > 1:
                    try:
                        times.append(float(parts[1]))
                    except ValueError:
                        pass
    for e in glob.glob(os.path.join(d, "uac_*_errors.log")):
        shutil.copy(e, os.path.join(system.work, f"errors-{rate}.log"))
    shutil.rmtree(d, ignore_errors=True)
    missing = count - ok - failed
    calls.unexpected = why.get("FailedUnexpectedMessage", 0) if failed else 0
    return ok, failed + max(missing, 0), sorted(times)


def measure(system, a):
    register_alice(system)
    calls(system, 20, 10, False)  # warm-up: the first call pays the application connection
    ok, failed, t = calls(system, a.latency_calls, a.latency_rate, True)
    out = {"latency_ok": ok, "latency_failed": failed, "median_ms": pct(t, 0.5),
           "p99_ms": pct(t, 0.99), "steps": []}
    strict_ok, lenient_ok = True, True
    best = best_lenient = 0
    for rate in a.rates:
        n = rate * a.step_seconds
        ok, failed, _ = calls(system, n, rate, False)
        share = failed / n
        # SIPp aborts a call on a response out of the scenario's order (a 180 after the
        # 200, which a proxy with several workers may pass on): counted apart too.
        lenient = (failed - calls.unexpected) / n
        out["steps"].append({"rate": rate, "calls": n, "ok": ok, "failed": failed,
                             "unexpected_message": calls.unexpected})
        print(f"  {system.name}: {rate}/s: {ok}/{n} completed, {100 * share:.2f}% failed",
              flush=True)
        strict_ok = strict_ok and share < 0.01
        lenient_ok = lenient_ok and lenient < 0.01
        if strict_ok:
            best = rate
        if lenient_ok:
            best_lenient = rate
        else:
            break
    out["max_rate"] = best
    out["max_rate_lenient"] = best_lenient
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="250,500,1000,2000,4000")
    ap.add_argument("--step-seconds", type=int, default=5)
    ap.add_argument("--latency-calls", type=int, default=1000)
    ap.add_argument("--latency-rate", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--only", choices=["p2psip", "kamailio"], help="run one side only")
    ap.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    a = ap.parse_args()
    a.rates = [int(x) for x in a.rates.split(",")]
    results = {}
    for name, start in (("p2psip", start_p2psip), ("kamailio", start_kamailio)):
        if a.only and a.only != name:
            continue
        work = tempfile.mkdtemp(prefix=f"bench-{name}-")
        s = start(work)
        try:
            print(f"== {s.name}", flush=True)
            results[name] = measure(s, a)
        finally:
            s.stop()
            if a.keep:
                print(f"  kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    if a.only:
        print(json.dumps(results, indent=2))
        return
    ours, theirs = results["p2psip"], results["kamailio"]
    ratio = lambda x, y: f"{x / y:.2f}" if y else "-"
    print()
    print("| figure | p2psip | Kamailio | ratio p2psip/Kamailio |")
    print("|---|---:|---:|---:|")
    print(f"| set-up median at {a.latency_rate}/s (ms) | {ours['median_ms']:.0f} | {theirs['median_ms']:.0f} | {ratio(ours['median_ms'], theirs['median_ms'])} |")
    print(f"| set-up p99 at {a.latency_rate}/s (ms) | {ours['p99_ms']:.0f} | {theirs['p99_ms']:.0f} | {ratio(ours['p99_ms'], theirs['p99_ms'])} |")
    print(f"| calls completed at {a.latency_rate}/s | {ours['latency_ok']}/{a.latency_calls} | {theirs['latency_ok']}/{a.latency_calls} | |")
    print(f"| highest rate with < 1% failed (calls/s, steps {','.join(map(str, a.rates))}) | {ours['max_rate']} | {theirs['max_rate']} | {ratio(ours['max_rate'], theirs['max_rate'])} |")
    print(f"| the same, calls aborted on an out-of-order response counted as completed | {ours['max_rate_lenient']} | {theirs['max_rate_lenient']} | {ratio(ours['max_rate_lenient'], theirs['max_rate_lenient'])} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
