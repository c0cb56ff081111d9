"""``hetsearch index`` — embed a gallery with the gallery model into a data directory or a running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

EPILOG = """\
examples:
  hetsearch index --gallery runs/gallery --data fashion-mnist --split test --out gallery-data
  hetsearch index --gallery runs/gallery --data my_catalog/ --name shoes --index HNSW32 --out gallery-data
  hetsearch index --gallery runs/gallery --data fashion-mnist --server localhost:50051 --token-file tokens.txt
  hetsearch index --gallery runs/gallery --data my_catalog/ --server localhost:50051 --engine ray --workers 4
  hetsearch index --gallery runs/gallery --data my_catalog/ --server gallery:50051 --engine ray --ray-address auto

--engine ray (pip install 'hetsearch[ray]') embeds on Ray Data with an actor pool of --workers (each loads the
gallery model once) and writes through the gallery server (--server). Without --ray-address it starts a local
Ray with --workers CPUs and stops it at the end; with one it joins that cluster. Writes replace by id, so
re-running a crashed or partial run completes the gallery without duplicates.

Ids are the images' positions in the data (0..N-1), also when --max-samples or --exclude leave some out;
metadata is the file name (ImageFolder) or the class.
With --out the data directory must not be in use by a running server (use --server then).
"""


def _positions(text: str, n: int) -> np.ndarray:
    """'3,17,42' or '@file' (one position per line) into validated positions in 0..n-1."""
    from hetsearch.errors import DataError

    raw = text
    if text.startswith("@"):
        try:
            raw = Path(text[1:]).read_text()
        except OSError as exc:
            raise DataError(f"--exclude {text}: cannot read it ({exc.strerror or exc})") from None
    try:
        vals = np.array([int(t) for t in raw.replace(",", " ").split()], dtype=np.int64)
    except ValueError:
        raise DataError(f"--exclude: expected image positions (integers), comma-separated or one per line in "
                        f"@FILE; got {raw[:80]!r}") from None
    bad = vals[(vals < 0) | (vals >= n)]
    if len(bad):
        raise DataError(f"--exclude: position {int(bad[0])} is outside the data (0..{n - 1})")
    return np.unique(vals)


def cmd_index(args) -> int:
    from hetsearch.cmpnas.data import load_data, stratified_sample
    from hetsearch.errors import HetsearchError
    from hetsearch.report import format_table, write_json

    from .indexer import index_gallery

    data = load_data(args.data, args.split, args.data_dir)
    keep = np.arange(len(data))
    if args.exclude:
        out = _positions(args.exclude, len(data))
        keep = np.setdiff1d(keep, out)
        print(f"leaving {len(out)} image(s) out of the gallery (--exclude)", file=sys.stderr)
    if args.max_samples:
        keep = keep[stratified_sample(data.labels[keep], args.max_samples, 0)]
    # ids (and metadata) stay the images' positions in the data, whatever is left out
    meta = [data.metadata(int(i)) for i in keep]
    if len(keep) < len(data):
        data = data.subset(keep, f"{len(keep)} of {len(data)}")
    from .auth import client_token

    token = client_token(args.token_file)
    tls = args.tls_ca or (True if args.tls else None)
    if args.engine == "ray":
        from .ray_index import index_gallery_ray

        if args.out:
            raise HetsearchError("--engine ray writes through a running gallery server: give --server ADDR instead "
                                 "of --out (serve the data directory with `hetsearch serve --data-dir "
                                 f"{args.out}`), or leave out --engine ray to write it offline")
        if not args.server:
            raise HetsearchError("--engine ray needs --server ADDR (a running gallery server)")
        res = index_gallery_ray(args.gallery, data, server=args.server, name=args.name, index_factory=args.index,
                                token=token, tls=tls, batch_size=args.batch_size, workers=args.workers or 2,
                                ray_address=args.ray_address, threads=args.threads or 1, progress=not args.quiet,
                                replace=args.replace, ids=keep, metadata=meta)
    else:
        if args.workers is not None or args.ray_address:
            raise HetsearchError("--workers and --ray-address apply to --engine ray")
        if not args.out and not args.server:
            raise HetsearchError("give --out DATA_DIR (offline) or --server ADDR (a running server)")
        if args.threads:
            from hetsearch.cmpnas.train import set_threads

            set_threads(args.threads)
        res = index_gallery(args.gallery, data, out=args.out, server=args.server, name=args.name,
                            index_factory=args.index, token=token, tls=tls, batch_size=args.batch_size,
                            progress=not args.quiet, replace=args.replace, ids=keep, metadata=meta)
    print(format_table([res], digits=1))
    if args.json:
        write_json(args.json, res)
    return 0


def register(sub) -> None:
    p = sub.add_parser("index", help="embed gallery images with the gallery model into a gallery",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Embed gallery images with the gallery model, in batches, into a gallery.")
    p.add_argument("--gallery", required=True, help="gallery model checkpoint directory")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an ImageFolder directory or an .npz")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST's files are")
    p.add_argument("--split", default="test", choices=("train", "test"), help="Fashion-MNIST split (default test)")
    p.add_argument("--max-samples", type=int, default=None, help="index a class-balanced subset")
    p.add_argument("--exclude", default=None, metavar="IDS|@FILE",
                   help="image positions to leave out of the gallery (e.g. query images held out for a search "
                        "test): comma-separated, or @FILE with one per line")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--out", help="data directory to write into (no server running on it)")
    target.add_argument("--server", help="address of a running gallery server, e.g. localhost:50051")
    p.add_argument("--name", default="default", help="gallery name (default: default)")
    p.add_argument("--index", default=None,
                   help="faiss index_factory string for a new gallery: Flat (default), HNSW32, IVF256,Flat …; an "
                        "existing gallery keeps its own (another one is an error unless --replace)")
    p.add_argument("--replace", action="store_true", help="drop an existing gallery of that name first")
    p.add_argument("--token-file", help="token file (with --server)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates (with --server)")
    p.add_argument("--tls-ca", help="TLS with this CA certificate (with --server)")
    p.add_argument("--batch-size", type=int, default=1000, help="images per embedding batch and per write")
    p.add_argument("--engine", choices=("in-process", "ray"), default="in-process",
                   help="in-process (default) or ray: embed on Ray Data, write through --server")
    p.add_argument("--workers", type=int, default=None, help="Ray actors embedding in parallel (default 2)")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="join this Ray cluster (default: start a local Ray with --workers CPUs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads: of this process (in-process; default all cores or $HETSEARCH_THREADS) or "
                        "of each Ray actor (default 1)")
    p.add_argument("--json", help="write a summary as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_index)
