#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub's HTTP layout, for tests (stdlib only).

    fake_hub.py --root DIR [--log FILE] [--token T --gated ORG/REPO]...
                [--cut-after N] [--corrupt FILE] [--cdn-host HOST]

Serves every folder DIR/ORG/REPO as a model repo whose only branch is "main"
(its commit hash is derived from the files, so it changes when they do):

  GET  /api/models/ORG/REPO/revision/REV   {"id","sha","siblings":[{"rfilename"}]}
  HEAD|GET /ORG/REPO/resolve/REV/FILE      small files: 200, ETag = git blob sha1;
       LFS files (*.safetensors, *.gguf, *.bin): 302 to /cdn/ORG/REPO/<sha256>
       (on --cdn-host, when given, to test that credentials stay behind) with
       X-Linked-Etag = sha256 and X-Linked-Size
  HEAD|GET /cdn/ORG/REPO/SHA256            the LFS bytes; no token needed
Both honour "Range: bytes=START-[END]" (206, or 416 past the end) and send
X-Repo-Commit. Missing repo/revision/file: 404 with X-Error-Code.

Flags: --gated ORG/REPO requires "Authorization: Bearer <--token>" on the
api and resolve paths (401 without a token, 403 with a wrong one).
--cut-after N: the first GET of each LFS file's bytes sends the full headers
but only N body bytes, then drops the connection. --corrupt FILE: the bytes of
repo file FILE are served with one byte flipped (the headers keep the true
hash and size).

Prints {"port": N} on stdout once it listens on 127.0.0.1 (port 0 =
ephemeral). With --log, appends one JSON line per request:
{"method","path","range","auth","status"}.
"""
import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import urllib.parse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, root, repo_id):
        self.dir = os.path.join(root, repo_id)
        self.files = {}
        for dirpath, _, names in os.walk(self.dir):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, self.dir)
                self.files[rel] = path
        h = hashlib.sha1()
        for rel in sorted(self.files):
            h.update(rel.encode() + b"\0" + self.read(rel, corrupt=False) + b"\0")
        self.commit = h.hexdigest()

    def read(self, rel, corrupt=True):
        with open(self.files[rel], "rb") as f:
            data = f.read()
        if corrupt and rel == ARGS.corrupt and data:
            b = bytearray(data)
            b[len(b) // 2] ^= 0xFF
            data = bytes(b)
        return data


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cut_done = set()
    lock = threading.Lock()

    def log_message(self, fmt, *args):
        pass

    def log_request_json(self, status):
        if not ARGS.log:
            return
        line = json.dumps({"method": self.command, "path": self.path,
                           "range": self.headers.get("Range"),
                           "auth": self.headers.get("Authorization") is not None,
                           "host": self.headers.get("Host"), "status": status})
        with Handler.lock, open(ARGS.log, "a") as f:
            f.write(line + "\n")

    def reply(self, status, headers=None, body=b""):
        self.log_request_json(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        self.reply(status, {"X-Error-Code": code, "X-Error-Message": message,
                            "Content-Type": "application/json"},
                   json.dumps({"error": message}).encode())

    def repo(self, repo_id):
        if ".." in repo_id or not os.path.isdir(os.path.join(ARGS.root, repo_id)):
            return None
        return Repo(ARGS.root, repo_id)

    def authorized(self, repo_id):
        if repo_id not in ARGS.gated:
            return True
        auth = self.headers.get("Authorization")
        if auth is None:
            self.error(401, "GatedRepo", "Access to model %s is restricted" % repo_id)
            return False
        if auth != "Bearer " + (ARGS.token or ""):
            self.error(403, "GatedRepo", "Invalid credentials for %s" % repo_id)
            return False
        return True

    def serve_bytes(self, key, data, headers, cuttable=False):
        size = len(data)
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[len("bytes="):].partition("-")
            start = int(a)
            if b:
                end = min(int(b), size - 1)
            if start >= size:
                self.reply(416, dict(headers, **{"Content-Range": "bytes */%d" % size}))
                return
            status = 206
            headers = dict(headers, **{"Content-Range": "bytes %d-%d/%d" % (start, end, size)})
        body = data[start:end + 1]
        headers = dict(headers, **{"Accept-Ranges": "bytes"})
        cut = None
        if cuttable and self.command == "GET" and ARGS.cut_after is not None:
            with Handler.lock:
                if key not in Handler.cut_done:
                    Handler.cut_done.add(key)
                    cut = ARGS.cut_after
        if cut is None:
            self.reply(status, headers, body)
            return
        self.log_request_json(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def handle_any(self):
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if len(parts) >= 6 and parts[0] == "api" and parts[1] == "models" and parts[4] == "revision":
            repo_id, rev = parts[2] + "/" + parts[3], "/".join(parts[5:])
            repo = self.repo(repo_id)
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found: " + repo_id)
            if not self.authorized(repo_id):
                return
            if rev not in ("main", repo.commit):
                return self.error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            body = json.dumps({"id": repo_id, "sha": repo.commit,
                               "siblings": [{"rfilename": f} for f in sorted(repo.files)]}).encode()
            return self.reply(200, {"Content-Type": "application/json"}, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, rel = parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:])
            repo = self.repo(repo_id)
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found: " + repo_id)
            if not self.authorized(repo_id):
                return
            if rev not in ("main", repo.commit):
                return self.error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            if rel not in repo.files:
                return self.error(404, "EntryNotFound", "Entry not found: " + rel)
            true_data = repo.read(rel, corrupt=False)
            common = {"X-Repo-Commit": repo.commit}
            if rel.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(true_data).hexdigest()
                pointer = ("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
                           % (sha256, len(true_data))).encode()
                host = ARGS.cdn_host + ":" + str(self.server.server_address[1]) if ARGS.cdn_host else None
                location = "/cdn/%s/%s" % (repo_id, sha256)
                if host:
                    location = "http://" + host + location
                return self.reply(302, dict(common, **{
                    "Location": location, "ETag": '"%s"' % git_blob_sha1(pointer),
                    "X-Linked-Etag": '"%s"' % sha256, "X-Linked-Size": str(len(true_data))}))
            return self.serve_bytes((repo_id, rel), repo.read(rel),
                                    dict(common, **{"ETag": '"%s"' % git_blob_sha1(true_data)}))
        if len(parts) == 4 and parts[0] == "cdn":
            repo_id, sha256 = parts[1] + "/" + parts[2], parts[3]
            repo = self.repo(repo_id)
            if repo is not None:
                for rel in repo.files:
                    if hashlib.sha256(repo.read(rel, corrupt=False)).hexdigest() == sha256:
                        return self.serve_bytes((repo_id, rel), repo.read(rel), {}, cuttable=True)
            return self.error(404, "EntryNotFound", "No LFS object " + sha256)
        return self.error(404, "NotFound", "No route for " + path)

    def do_GET(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log")
    p.add_argument("--token")
    p.add_argument("--gated", action="append", default=[])
    p.add_argument("--cut-after", type=int)
    p.add_argument("--corrupt")
    p.add_argument("--cdn-host")
    ARGS = p.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
