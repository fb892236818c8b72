#!/usr/bin/env python3
"""Load and soak run against a real modelpress server (loopback only, bounded in count and time).

Starts the given binary on 127.0.0.1 with a fresh data dir, uploads the digits teacher and
dataset, then runs CLIENTS threads that together submit JOBS mixed jobs (quantize of several
schemes, evaluate, sensitivity, prune, a few short train/distill runs, ~10 % bad params that must
be refused with 4xx, ~10 % cancelled right after submission) while also uploading, downloading
(sha256 checked against the row), predicting and reading SSE streams.

Asserts: no 5xx anywhere, no lost job (every accepted job ends terminal), every output
artifact's sha256 equals its row, and reports p50/p99 of GET /v1/jobs/{id} under load plus the
server's RSS and open-file-descriptor slopes after warm-up (sampled once a second).
Standard library only.

usage: soak.py BINARY [--jobs N] [--clients N] [--timeout SECONDS] [--min-seconds S]
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


class Soak:
    def __init__(self, port, deadline):
        self.port = port
        self.deadline = deadline
        self.min_end = 0.0
        self.lock = threading.Lock()
        self.errors = []  # (what, status, body)
        self.status_counts = {}
        self.get_job_ms = []
        self.accepted = []  # job ids
        self.refused_bad = 0
        self.cancels = 0
        self.downloads_checked = 0
        self.predicts = 0
        self.sse_reads = 0
        self.uploads = 0
        self.submitted = 0

    def req(self, method, path, body=None, headers=None, stream=False, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        with self.lock:
            self.status_counts[resp.status] = self.status_counts.get(resp.status, 0) + 1
        if stream:
            return conn, resp
        data = resp.read()
        conn.close()
        if resp.status >= 500:
            with self.lock:
                self.errors.append((f"{method} {path}", resp.status, data[:300]))
        return resp.status, data

    def json(self, method, path, obj=None):
        body = json.dumps(obj).encode() if obj is not None else None
        hdr = {"Content-Type": "application/json"} if obj is not None else {}
        status, data = self.req(method, path, body, hdr)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def upload(self, path, route, query):
        with open(path, "rb") as f:
            data = f.read()
        status, body = self.req("POST", f"{route}?{query}", data, {"Content-Type": "application/octet-stream"})
        if status != 201:
            raise SystemExit(f"upload {path} -> {status} {body[:300]!r}")
        return json.loads(body)


def _upload_multipart(self, weights_path, spec):
    boundary = "modelpress-soak-boundary"
    with open(weights_path, "rb") as f:
        weights = f.read()
    parts = [
        b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="name"\r\n\r\nteacher\r\n',
        b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'
        + spec.encode() + b"\r\n",
        b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="weights"; filename="w.safetensors"'
        b"\r\nContent-Type: application/octet-stream\r\n\r\n" + weights + b"\r\n",
        b"--" + boundary.encode() + b"--\r\n",
    ]
    status, body = self.req("POST", "/v1/models", b"".join(parts),
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if status != 201:
        raise SystemExit(f"multipart upload -> {status} {body[:300]!r}")
    return json.loads(body)


Soak.upload_multipart = _upload_multipart


def job_bodies(model, data):
    """(body, expected_ok) pairs: the mix of work a pipeline sends."""
    good = [
        (8, {"kind": "quantize", "model_id": model, "params": {"scheme": "int8"}}),
        (4, {"kind": "quantize", "model_id": model, "params": {"scheme": "f16"}}),
        (3, {"kind": "quantize", "model_id": model, "params": {"scheme": "q4_k", "eval_dataset_id": data}}),
        (3, {"kind": "quantize", "model_id": model, "params": {"scheme": "int4", "group_size": 32}}),
        (3, {"kind": "evaluate", "model_id": model, "params": {"dataset_id": data}}),
        (2, {"kind": "sensitivity", "model_id": model, "params": {"scheme": "q2_k", "eval_dataset_id": data}}),
        (3, {"kind": "prune", "model_id": model, "params": {"sparsity": 0.5}}),
        (1, {"kind": "train", "model_id": model, "params": {"dataset_id": data, "epochs": 1}}),
        (1, {"kind": "distill", "model_id": model,
             "params": {"dataset_id": data, "epochs": 2, "student": {"from_teacher": {"width": 0.25}}}}),
    ]
    bad = [
        {"kind": "quantize", "model_id": model, "params": {"scheme": "int3"}},
        {"kind": "nope", "model_id": model, "params": {}},
        {"kind": "quantize", "model_id": "00000000-0000-0000-0000-000000000000", "params": {"scheme": "int8"}},
        {"kind": "train", "model_id": model,
         "params": {"dataset_id": data, "epochs": 2, "schedule": "cosine", "warmup_epochs": 5}},
        {"kind": "prune", "model_id": model, "params": {"sparsity": 1.5}},
    ]
    weights = [w for w, _ in good]
    return lambda rng: (rng.choices([b for _, b in good], weights)[0], True) if rng.random() > 0.1 else (
        rng.choice(bad), False)


def sha_of_download(s, model_id):
    conn, resp = s.req("GET", f"/v1/models/{model_id}/download", stream=True)
    h = hashlib.sha256()
    while True:
        chunk = resp.read(65536)
        if not chunk:
            break
        h.update(chunk)
    conn.close()
    return resp.status, h.hexdigest()


def client(s, idx, n_jobs_share, model, data, predict_row, pick):
    rng = random.Random(idx)
    my_jobs = 0
    while time.time() < s.deadline:
        if my_jobs < n_jobs_share:
            body, ok = pick(rng)
            status, job = s.json("POST", "/v1/jobs", body)
            with s.lock:
                s.submitted += 1
            my_jobs += 1
            if status == 202:
                if not ok:
                    with s.lock:
                        s.errors.append(("bad params accepted", status, json.dumps(body)[:300]))
                with s.lock:
                    s.accepted.append(job["id"])
                if rng.random() < 0.1:
                    st, _ = s.json("POST", f"/v1/jobs/{job['id']}/cancel")
                    with s.lock:
                        s.cancels += 1
            elif status == 429:
                time.sleep(0.5)  # queue full / rate limit: the documented back-off
                my_jobs -= 1
            elif 400 <= status < 500 and not ok:
                with s.lock:
                    s.refused_bad += 1
            elif status < 500:
                with s.lock:
                    s.errors.append(("good job refused", status, json.dumps(job)[:300]))
        # Some read traffic between submissions.
        action = rng.random()
        with s.lock:
            ids = list(s.accepted[-50:])
        if ids and action < 0.5:
            t0 = time.perf_counter()
            s.req("GET", f"/v1/jobs/{rng.choice(ids)}")
            with s.lock:
                s.get_job_ms.append((time.perf_counter() - t0) * 1000)
        elif action < 0.65:
            st, _ = s.json("POST", f"/v1/models/{model}/predict", {"inputs": [predict_row]})
            with s.lock:
                s.predicts += 1
        elif action < 0.75 and ids:
            conn, resp = s.req("GET", f"/v1/jobs/{rng.choice(ids)}/events", stream=True, timeout=2)
            try:
                resp.read(512)
            except (socket.timeout, TimeoutError):
                pass
            conn.close()
            with s.lock:
                s.sse_reads += 1
        elif action < 0.80:
            st, row = s.json("GET", f"/v1/models/{model}")
            st2, sha = sha_of_download(s, model)
            if st == 200 and st2 == 200 and row["sha256"] != sha:
                with s.lock:
                    s.errors.append(("download sha256 mismatch", 200, model))
            with s.lock:
                s.downloads_checked += 1
        elif action < 0.82:
            s.upload(os.path.join(FIX, "teacher_digits.safetensors"), "/v1/models", f"name=soak-{idx}")
            with s.lock:
                s.uploads += 1
        if my_jobs >= n_jobs_share and time.time() > s.min_end:
            return


def sample(pid, out, stop):
    t0 = time.time()
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            out.append((time.time() - t0, rss, fds))
        except (OSError, StopIteration):
            pass
        stop.wait(1.0)


def slope(points):
    n = len(points)
    if n < 3:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points) or 1.0
    return sum((x - mx) * (y - my) for x, y in points) / den


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=1800, help="whole run, seconds")
    ap.add_argument("--min-seconds", type=int, default=120, help="keep the read traffic going at least this long")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="modelpress-soak.", dir=os.environ.get("TMPDIR", "/tmp"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    log = open(os.path.join(work, "server.log"), "w")
    env = dict(os.environ, RUST_LOG="warn")
    server = subprocess.Popen(
        [a.binary, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "data"),
         "--max-queued-jobs", str(a.jobs + 100)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    started = time.time()
    ok = False
    try:
        s = Soak(port, started + a.timeout)
        for _ in range(200):
            try:
                if s.req("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        with open(os.path.join(ROOT, "examples", "digits-mlp.spec.json")) as f:
            spec = f.read()
        model = s.upload_multipart(os.path.join(FIX, "teacher_digits.safetensors"), spec)["id"]
        data = s.upload(os.path.join(FIX, "digits.safetensors"), "/v1/datasets", "name=digits")["id"]
        predict_row = [0.0] * 64
        pick = job_bodies(model, data)

        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample, args=(server.pid, samples, stop), daemon=True)
        sampler.start()
        s.min_end = time.time() + a.min_seconds
        share = (a.jobs + a.clients - 1) // a.clients
        threads = [threading.Thread(target=client, args=(s, i, share, model, data, predict_row, pick))
                   for i in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submit_done = time.time()

        # Every accepted job must end; bounded wait.
        pending = set(s.accepted)
        final = {}
        while pending and time.time() < s.deadline:
            for jid in list(pending):
                st, job = s.json("GET", f"/v1/jobs/{jid}")
                if st != 200:
                    s.errors.append(("lost job", st, jid))
                    pending.discard(jid)
                elif job["status"] in ("succeeded", "failed", "cancelled"):
                    final[jid] = job
                    pending.discard(jid)
            if pending:
                time.sleep(1)
        stop.set()
        sampler.join()
        for jid in pending:
            s.errors.append(("job not finished before the deadline", 0, jid))

        outcomes = {}
        for job in final.values():
            outcomes[job["status"]] = outcomes.get(job["status"], 0) + 1
            if job["status"] == "failed":
                code = (job.get("error") or {}).get("code")
                if code in ("internal", None):
                    s.errors.append(("job failed internally", 0, json.dumps(job.get("error"))[:300]))
        # Every output artifact matches its row.
        checked = 0
        for job in final.values():
            out = job.get("output_model_id")
            if job["status"] == "succeeded" and out:
                st, row = s.json("GET", f"/v1/models/{out}")
                st2, sha = sha_of_download(s, out)
                if st != 200 or st2 != 200 or row["sha256"] != sha:
                    s.errors.append(("artifact sha256 mismatch", st2, out))
                checked += 1

        warm = [p for p in samples if p[0] > (samples[-1][0] * 0.3 if samples else 0)]
        rss_slope = slope([(t, r) for t, r, _ in warm])  # KiB per second
        fd_slope = slope([(t, f) for t, _, f in warm])
        report = {
            "jobs_submitted": s.submitted,
            "jobs_accepted": len(s.accepted),
            "bad_params_refused_4xx": s.refused_bad,
            "cancel_requests": s.cancels,
            "outcomes": outcomes,
            "artifacts_sha256_checked": checked,
            "downloads_checked": s.downloads_checked,
            "predicts": s.predicts,
            "sse_reads": s.sse_reads,
            "uploads": s.uploads,
            "http_status_counts": {str(k): v for k, v in sorted(s.status_counts.items())},
            "get_job_ms": {"n": len(s.get_job_ms), "p50": round(pct(s.get_job_ms, 50), 2),
                           "p99": round(pct(s.get_job_ms, 99), 2)},
            "rss_kib": {"first": samples[0][1] if samples else None, "last": samples[-1][1] if samples else None,
                        "max": max((r for _, r, _ in samples), default=None),
                        "slope_after_warmup_kib_per_s": round(rss_slope, 2)},
            "open_fds": {"first": samples[0][2] if samples else None, "last": samples[-1][2] if samples else None,
                         "slope_after_warmup_per_s": round(fd_slope, 4)},
            # (seconds, RSS KiB, fds) at ten points of the run, to see where growth stops.
            "samples": [samples[i] for i in range(0, len(samples), max(1, len(samples) // 10))],
            "submit_phase_s": round(submit_done - started, 1),
            "total_s": round(time.time() - started, 1),
            "clients": a.clients,
            "errors": len(s.errors),
        }
        print(json.dumps(report, indent=2))
        for e in s.errors[:20]:
            print("!!", e, file=sys.stderr)
        fivexx = sum(v for k, v in s.status_counts.items() if k >= 500)
        ok = not s.errors and fivexx == 0 and not pending
        print("soak:", "PASSED" if ok else "FAILED", file=sys.stderr)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"server log and data kept in {work}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
