"""``hetsearch query`` — embed images on this device with an exported query model and ask the gallery server."""

from __future__ import annotations

import argparse
import os

EPILOG = """\
examples:
  hetsearch query --bundle bundles/mbv3-small --server localhost:50051 shoe.png bag.jpg
  hetsearch query --bundle bundles/mbv3-small --backend litert --k 10 --server localhost:50051 img.png
  hetsearch query --bundle bundles/mbv3-small --server gallery.example:443 --tls --token-file t.txt img.png --json hits.json

The query model's space_id (from the bundle's manifest) goes with every search; the server refuses a
bundle from another embedding space (FAILED_PRECONDITION).
"""


def cmd_query(args) -> int:
    from hetsearch.report import format_table, write_json

    from .client import GalleryClient
    from .model import QueryModel

    from hetsearch.gallery_server.auth import client_token

    token = client_token(args.token_file, prefer="read")
    model = QueryModel.load(args.bundle, backend=args.backend, precision=args.precision, threads=args.threads,
                            allow_failed=args.allow_failed)
    tls = args.tls_ca or (True if args.tls else None)
    client = GalleryClient(args.server, token=token, tls=tls, timeout=args.timeout, gallery=args.gallery)
    try:
        hits = client.search(model.embed(list(args.images)), k=args.k, space_id=model.space_id)
    finally:
        client.close()
    rows, out = [], []
    for path, hs in zip(args.images, hits):
        out.append({"image": path, "hits": [{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hs]})
        for rank, h in enumerate(hs, 1):
            rows.append({"image": os.path.basename(path) if rank == 1 else "", "rank": rank, "id": h.id,
                         "score": round(float(h.score), 4), "metadata": h.metadata})
    print(f"query model {model.manifest.get('model_id')} ({model.backend}, {os.path.basename(str(model.path))}), "
          f"space {model.space_id}")
    print(format_table(rows, digits=4))
    if args.json:
        write_json(args.json, out)
    return 0


def register(sub) -> None:
    p = sub.add_parser("query", help="embed images with an exported query model and search the gallery server",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Run an exported query model on this device and print the gallery's top-k.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, …)")
    p.add_argument("--bundle", required=True, help="exported bundle directory (or one model file in it)")
    p.add_argument("--server", required=True, help="gallery server address, e.g. localhost:50051")
    p.add_argument("--gallery", default="default", help="gallery name (default: default)")
    p.add_argument("--k", type=int, default=5, help="hits per image (default 5)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "litert", "coreml"))
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8"))
    p.add_argument("--allow-failed", action="store_true",
                   help="run a file whose checks failed at export (refused otherwise; a warning is printed)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--token-file", help="file with the read token (read=TOKEN)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--tls-ca", help="TLS with this CA certificate")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", help="write the hits as JSON")
    p.set_defaults(func=cmd_query)
