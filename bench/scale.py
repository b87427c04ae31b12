"""Driven by bench/scale.sh (see there): populate through the management API, measure writes,
the other replica's visibility, OpenBao's requests per replica, and an empty mirror's start."""
import http.client
import json
import random
import sys
import threading
import time

work, creds, consumers, writes, idle, admin, gw, phase = sys.argv[1:9]
creds, consumers, writes, idle = int(creds), int(consumers), int(writes), int(idle)
pem = {k: open(f"{work}/{f}").read() for k, f in
       [("cert", "client.pem"), ("key", "client.key"), ("ca", "ca.pem")]}
conns = {}


def addr(r):
    return json.load(open(f"{work}/{r}/ready.json"))["listen"]


def call(r, method, path, token, body=None, headers=None):
    key = (r, threading.get_ident())
    for attempt in range(2):
        if key not in conns:
            host, port = addr(r).rsplit(":", 1)
            conns[key] = http.client.HTTPConnection(host, int(port), timeout=30)
        c = conns[key]
        h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        h.update(headers or {})
        try:
            c.request(method, path, json.dumps(body) if body is not None else None, h)
            resp = c.getresponse()
            return resp.status, resp.read(), resp.getheader("ETag")
        except (http.client.HTTPException, OSError):
            del conns[key]
            if attempt:
                raise


def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))] * 1000


def credential(i, value="v0"):
    team = f"team-{i % 100}" if i >= 100 else "bench"
    body = {"name": f"c{i}", "team": team, "allowed_hosts": ["a.bench.example"]}
    if i % 2 and i >= 100:
        body.update(mode="mtls", client_certificate=pem["cert"], client_private_key=pem["key"],
                    root_certificate=pem["ca"])
    else:
        body.update(mode="text", value=value)
    return body


def material(r, name):
    s, data, _ = call(r, "POST", f"/v1/credentials/{name}/material", gw, {"host": "a.bench.example"})
    return json.loads(data).get("value") if s == 200 else None


def requests_by_accessor():
    acc = {r: open(f"{work}/{r}/accessor").read().strip() for r in "ab"}
    n = {r: 0 for r in "ab"}
    for line in open(f"{work}/bao-audit.log"):
        if '"type":"response"' not in line:
            continue
        for r, a in acc.items():
            if a in line:
                n[r] += 1
    return n


def rotations(count, text_names):
    """Rotations through A, each waited for on B; a reader reads both meanwhile."""
    stop, reads = threading.Event(), {"ok": 0, "failed": 0, "lat": []}

    def reader():
        while not stop.is_set():
            r, name = random.choice("ab"), random.choice(text_names)
            t = time.monotonic()
            if material(r, name) is not None:
                reads["ok"] += 1
                reads["lat"].append(time.monotonic() - t)
            else:
                reads["failed"] += 1
            time.sleep(0.01)  # about 100 reads a second: reads beside the writes, not a load test
    th = threading.Thread(target=reader)
    th.start()
    before, t0 = requests_by_accessor(), time.monotonic()
    lat_w, lat_b = [], []
    for k in range(count):
        name = random.choice(text_names)
        _, _, etag = call("a", "GET", f"/v1/teams/bench/credentials/{name}", admin)
        value = f"w{k}-{random.random()}"
        body = credential(int(name[1:]), value)
        start = time.monotonic()
        s, data, _ = call("a", "PUT", f"/v1/credentials/{name}", admin, body, {"If-Match": etag})
        assert s == 200, (s, data)
        lat_w.append(time.monotonic() - start)
        deadline = time.monotonic() + 30
        while material("b", name) != value:
            assert time.monotonic() < deadline, "B never served the write"
            time.sleep(0.005)
        lat_b.append(time.monotonic() - start)
    took = time.monotonic() - t0
    stop.set()
    th.join()
    after = requests_by_accessor()
    return lat_w, lat_b, {r: after[r] - before[r] for r in "ab"}, took, reads


def idle_rate():
    before = requests_by_accessor()
    time.sleep(idle)
    after = requests_by_accessor()
    return {r: (after[r] - before[r]) / idle for r in "ab"}


def report(label, n):
    # Rotated and read: team `bench`'s text credentials (c0..c99), the gateway's team.
    text_names = [f"c{i}" for i in range(min(n, 100))]
    time.sleep(3)  # B settles: what it has to pull of what was just made is not idle
    rates = idle_rate()
    lat_w, lat_b, reqs, took, reads = rotations(writes, text_names)
    per = {r: (reqs[r] - rates[r] * took) / writes for r in "ab"}
    print(f"| {label}: rotation through A answered (ms) | p50 {q(lat_w, .5):.1f} | p99 {q(lat_w, .99):.1f} | max {max(lat_w)*1000:.1f} |")
    print(f"| {label}: served by B after the write started (ms) | p50 {q(lat_b, .5):.0f} | p99 {q(lat_b, .99):.0f} | max {max(lat_b)*1000:.0f} |")
    print(f"| {label}: OpenBao requests per write | A {per['a']:.1f} | B {per['b']:.1f} | ({writes} writes, idle polls subtracted) |")
    print(f"| {label}: idle poll | A {rates['a']:.2f}/s | B {rates['b']:.2f}/s | |")
    print(f"| {label}: reads beside the writes | {reads['ok']} ok, {reads['failed']} failed | p50 {q(reads['lat'] or [0], .5):.1f} ms | p99 {q(reads['lat'] or [0], .99):.1f} ms |")
    sys.stdout.flush()


def populate():
    t0, made = time.monotonic(), []
    for i in range(100):
        s, data, _ = call("a", "POST", "/v1/credentials", admin, credential(i))
        assert s == 201, (s, data)
        if i == 9:
            report("10 stored", 10)
    lat = []
    for i in range(100, creds):
        t = time.monotonic()
        s, data, _ = call("a", "POST", "/v1/credentials", admin, credential(i))
        assert s == 201, (i, s, data)
        lat.append(time.monotonic() - t)
        if len(lat) % 1000 == 0:
            print(f"# {i + 1} credentials, last 1000 creates p50 {q(lat[-1000:], .5):.1f} ms p99 {q(lat[-1000:], .99):.1f} ms, {time.monotonic() - t0:.0f} s", flush=True)
    for i in range(consumers):
        s, data, _ = call("a", "POST", f"/v1/teams/team-{i % 100}/consumers", admin, {"name": f"k{i}"})
        assert s == 201, (i, s, data)
        made.append(i)
    print(f"# populated {creds} credentials and {consumers} consumers in {time.monotonic() - t0:.0f} s", flush=True)
    # B has them all before measuring.
    deadline = time.monotonic() + 120
    while material("b", "c0") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(3)
    report(f"{creds} stored", creds)


if phase == "phase1":
    populate()
elif phase == "cold":
    start = float(sys.argv[9])
    deadline = time.monotonic() + 600
    while True:
        try:
            if open(f"{work}/c/ready.json").read():
                break
        except OSError:
            pass
        time.sleep(0.05)
    last = f"c{creds - 1}"
    while True:
        s, data, _ = call("c", "GET", f"/v1/teams/team-{(creds - 1) % 100}/credentials/{last}", admin)
        if s == 200:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    print(f"| replica on an empty mirror: serves the newest of {creds} credentials | {time.time() - start:.1f} s | | |")
