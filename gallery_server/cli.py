"""Sub-commands of the gallery server: ``serve`` and ``gallery`` (admin helper).

``hetsearch index`` (embedding a gallery with the gallery model) lives with
the gallery model code; it writes through ``store.open_offline`` or the
client's ``upsert``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import threading

from hetsearch.errors import DataError

SERVE_EPILOG = """\
examples:
  hetsearch serve --data-dir gallery-data --port 50051
  hetsearch serve --data-dir gallery-data --port 0 --port-file server.port --metrics-port 9100
  hetsearch serve --data-dir gallery-data --processes 2      # read-only, one process per core
  hetsearch serve --data-dir gallery-data --host 0.0.0.0 --token-file tokens.txt \\
      --tls-cert server.crt --tls-key server.key
  hetsearch serve --backend milvus --milvus-uri http://127.0.0.1:19530 --milvus-token-file milvus.token

backends: faiss (default) keeps each gallery in this process, with a write-ahead log and snapshots in
--data-dir; milvus keeps each gallery in a Milvus collection (pip install 'hetsearch[milvus]'). The gRPC API,
the embedding-space guard and the status codes are the same; see README, "Serving on Milvus".

token file: `read=TOKEN` and `admin=TOKEN` lines (or two bare lines: read, then admin).
The admin token may do everything, the read token searches, lists and describes.
A host other than loopback needs a token file unless --insecure is given.
SIGTERM / SIGINT: health goes NOT_SERVING, in-flight calls drain (--grace), logs are flushed.
"""

GALLERY_EPILOG = """\
examples:
  hetsearch gallery list --server localhost:50051
  hetsearch gallery create shoes --space sp1-d128-n-0123456789abcdef0123 --index HNSW32 --server localhost:50051
  hetsearch gallery describe shoes --server localhost:50051
  hetsearch gallery snapshot shoes --compact --server localhost:50051
  hetsearch gallery drop shoes --server localhost:50051 --token-file tokens.txt

The token comes from --token-file (its admin token, else its read token) or $HETSEARCH_TOKEN.
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("serve", help="run the gallery gRPC server", formatter_class=fmt, epilog=SERVE_EPILOG,
                       description="Serve nearest-neighbour lookups over the galleries in a data directory.")
    p.add_argument("--data-dir", help="faiss backend: data directory (created if missing)")
    p.add_argument("--backend", choices=["faiss", "milvus"], default="faiss",
                   help="where galleries live: faiss in this process (default) or Milvus collections")
    p.add_argument("--milvus-uri", help="milvus backend: http://HOST:19530 (or a path for Milvus Lite's embedded "
                                        "engine)")
    p.add_argument("--milvus-db", default="", help="milvus backend: database to keep the galleries in (default: "
                                                  "Milvus's default database)")
    p.add_argument("--milvus-token-file", help="milvus backend: file holding the Milvus token (user:password or an "
                                               "API key) on one line")
    p.add_argument("--milvus-timeout", type=float, default=10.0,
                   help="milvus backend: seconds one Milvus call may take (default 10; a request's own deadline "
                        "wins when shorter)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port (0 picks a free one; default 50051)")
    p.add_argument("--port-file", help="write the bound port to this file once serving")
    p.add_argument("--token-file", help="file with the read and admin bearer tokens")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback host without tokens")
    p.add_argument("--threads", type=int, default=None,
                   help="faiss OpenMP threads (default 1, measured: see benchmarks/results/server.md)")
    p.add_argument("--workers", type=int, default=16, help="gRPC worker threads per process (default 16)")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port (SO_REUSEPORT) over a read-only copy of the galleries: "
                        "more queries/s on several cores, writes refused with FAILED_PRECONDITION (default 1: "
                        "one process, writes allowed; see benchmarks/results/server.md)")
    p.add_argument("--max-message-mb", type=float, default=64, help="max request/response size (default 64 MiB)")
    p.add_argument("--snapshot-every-mb", type=float, default=1024,
                   help="snapshot a gallery once its write-ahead log exceeds this (0: only on request)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds to drain in-flight calls on shutdown")
    p.set_defaults(func=cmd_serve)

    g = sub.add_parser("gallery", help="create, list, describe, drop or snapshot galleries on a server",
                       formatter_class=fmt, epilog=GALLERY_EPILOG,
                       description="Administer the galleries of a running gallery server.")
    g.add_argument("action", choices=["create", "list", "describe", "drop", "snapshot"])
    g.add_argument("name", nargs="?", help="gallery name (all galleries for snapshot when omitted)")
    g.add_argument("--server", default="localhost:50051", help="HOST:PORT (default localhost:50051)")
    g.add_argument("--token-file", help="token file (as for serve)")
    g.add_argument("--tls-ca", help="CA certificate to verify the server (enables TLS)")
    g.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    g.add_argument("--space", help="create: the embedding space id")
    g.add_argument("--index", default="Flat", help="create: faiss index_factory string (default Flat)")
    g.add_argument("--metric", default="cosine", choices=["cosine", "ip", "l2"], help="create: metric")
    g.add_argument("--ef-search", type=int, default=0, help="create: default HNSW efSearch")
    g.add_argument("--nprobe", type=int, default=0, help="create: default IVF nprobe")
    g.add_argument("--compact", action="store_true", help="snapshot: drop deleted vectors first")
    g.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE ('-': print JSON instead of "
                                                 "the table), like every other --json")
    g.set_defaults(func=cmd_gallery)


def cmd_serve(args) -> int:
    # Before faiss (and OpenMP) load, so that every thread starts with this default.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads or 1))
    from .auth import Tokens, load_token_file
    from .server import DEFAULT_OMP_THREADS, GalleryServer, ServerConfig

    tokens = load_token_file(args.token_file) if args.token_file else Tokens()
    if not is_loopback(args.host) and not tokens.enabled and not args.insecure:
        raise DataError(f"refusing to listen on non-loopback host {args.host!r} without a --token-file; "
                        "pass --insecure to do it anyway")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise DataError("TLS needs both --tls-cert and --tls-key")
    if not 0 <= args.port <= 65535:
        raise DataError(f"--port must be 0..65535, got {args.port}")
    milvus_token = None
    if args.milvus_token_file:
        from .milvus_store import load_token_file as load_milvus_token

        milvus_token = load_milvus_token(args.milvus_token_file)
    config = ServerConfig(
        data_dir=args.data_dir, backend=args.backend, milvus_uri=args.milvus_uri or "", milvus_token=milvus_token,
        milvus_db=args.milvus_db, milvus_timeout_s=args.milvus_timeout, host=args.host, port=args.port,
        tokens=tokens, tls_cert=args.tls_cert, tls_key=args.tls_key, metrics_port=args.metrics_port,
        omp_threads=args.threads or DEFAULT_OMP_THREADS, workers=args.workers,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024), grace_s=args.grace,
        auto_snapshot_bytes=int(args.snapshot_every_mb * 1024 * 1024), processes=args.processes)
    stop = threading.Event()

    def on_signal(signum, frame):
        logging.getLogger("hetsearch.gallery_server").info("event=signal signal=%s", signal.Signals(signum).name)
        stop.set()

    def serving(port: int) -> None:
        if args.port_file:
            tmp = f"{args.port_file}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{port}\n")
            os.replace(tmp, args.port_file)
        more = f" ({args.processes} processes, read-only)" if args.processes > 1 else ""
        print(f"hetsearch serve: listening on {args.host}:{port}{more}", file=sys.stderr, flush=True)

    supervisor = None
    if args.processes != 1:
        from .processes import Supervisor

        supervisor = Supervisor(config, stop)  # refuses settings several processes cannot honour
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if supervisor is not None:
        return supervisor.run(serving)
    server = GalleryServer(config)
    try:
        port = server.start(load=False)
        server.load()
        serving(port)
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


def _client(args):
    from hetsearch.sdk.client import GalleryClient

    from .auth import client_token

    tls = args.tls_ca or (True if args.tls else None)
    return GalleryClient(args.server, token=client_token(args.token_file), tls=tls)


def cmd_gallery(args) -> int:
    from hetsearch.report import format_table, write_json

    with _client(args) as client:
        if args.action == "list":
            rows = [g.as_dict() for g in client.list_galleries()]
        elif args.action == "snapshot":
            rows = client.snapshot(args.name, compact=args.compact)
        else:
            if not args.name:
                raise DataError(f"gallery {args.action} needs a gallery name")
            if args.action == "create":
                if not args.space:
                    raise DataError("gallery create needs --space SPACE_ID")
                rows = [client.create_gallery(args.name, args.space, index_factory=args.index, metric=args.metric,
                                              ef_search=args.ef_search, nprobe=args.nprobe).as_dict()]
            elif args.action == "describe":
                rows = [client.describe(args.name).as_dict()]
            else:
                client.drop(args.name)
                rows = [{"name": args.name, "dropped": True}]
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    else:
        if args.json:
            write_json(args.json, rows)
        cols = None
        if rows and "state" in rows[0]:
            cols = ["name", "state", "vector_count", "deleted_count", "index_factory", "metric", "space_id"]
        print(format_table(rows, cols))
    return 0
