"""``hetsearch index --engine ray``: embed a gallery on Ray Data and write it through the gallery server.

The images (loaded by the same loaders as the in-process engine) become a Ray dataset of ``id``, ``meta`` and
``image`` rows in blocks of ``batch_size``; an actor pool (``map_batches`` with a callable class and
``ActorPoolStrategy``) embeds them, each actor loading the gallery model once; the driver takes the embedded
batches as they stream out and upserts them through the gallery server's gRPC API (``indexer._ServerWriter``,
the in-process engine's server writer: auth, the space guard and the write-ahead log apply). Upserts replace by
id, so a re-run after a crash completes the gallery without duplicates.

Without an address Ray starts locally (``ray.init(num_cpus=workers)``) and shuts down at the end; with one
(``auto``, ``host:port`` or ``ray://host:port``) the run connects to that cluster and disconnects at the end.
A process that has already called ``ray.init`` keeps its own session.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from hetsearch.errors import HetsearchError, MissingDependency, ModelError

log = logging.getLogger("hetsearch.index")


def import_ray():
    """``ray`` with Ray Data, or a MissingDependency naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of the ray[data] extra
    except ImportError as exc:
        raise MissingDependency(exc.name or "ray", "ray", "--engine ray (Ray Data)") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the address in the message, when nothing listens at a ``host:port`` Ray address
    (``ray.init`` would otherwise retry for a long time)."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise HetsearchError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise HetsearchError(f"no Ray cluster reachable at {address} ({exc.strerror or exc}): start one with "
                             f"`ray start --head` or pass the address of its head node") from None


@contextlib.contextmanager
def ray_session(address: str | None, workers: int, **init_kwargs):
    """Yield a description of the Ray session the run uses: a local one it starts (and shuts down), a cluster
    at ``address`` (connected, then disconnected), or the one this process already holds (left as it is)."""
    ray = import_ray()
    if address:
        if address != "auto":
            _check_reachable(address)
        if ray.is_initialized():
            raise HetsearchError(f"Ray is already initialized in this process; cannot also connect to {address}")
        try:
            ray.init(address=address, logging_level=logging.WARNING, **init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise HetsearchError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus < workers:
                log.warning("the Ray cluster at %s has %g CPUs now and each of the %d workers needs one: they wait "
                            "for the autoscaler (or for other jobs to finish)", address, cpus, workers)
            yield {"ray": f"cluster {address}"}
        finally:
            ray.shutdown()
    elif ray.is_initialized():
        yield {"ray": "this process's session"}
    else:
        _start_local(ray, workers, init_kwargs)
        try:
            yield {"ray": f"local, {workers} CPUs"}
        finally:
            ray.shutdown()


LOCAL_START_ATTEMPTS = 3


def _start_local(ray, workers: int, init_kwargs: dict, attempts: int = LOCAL_START_ATTEMPTS) -> None:
    """Start a local Ray, trying again (with a WARNING) when it does not come up in time: Ray waits a fixed 30 s
    for its raylet to register, which a busy machine can miss. The last failure is a HetsearchError."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, **init_kwargs)
            return
        except Exception as exc:  # Ray raises bare Exceptions when its processes do not come up in time
            ray.shutdown()  # whatever did start
            if attempt == attempts:
                raise HetsearchError(f"a local Ray did not start ({attempts} attempts): {exc} (on a busy machine "
                                     f"its start-up waits can run out: RAY_gcs_server_port_wait_time_s lengthens "
                                     f"the GCS one; or join a running cluster with --ray-address)") from exc
            log.warning("a local Ray did not start (attempt %d of %d): %s; starting it again", attempt, attempts,
                        exc)


def _model_files(ck) -> dict[str, bytes]:
    """The files an actor needs to load the checkpoint (not the folder's gallery-target cache)."""
    from hetsearch.cmpnas.checkpoint import CKPT_NAME

    folder = Path(ck.path)
    names = [CKPT_NAME]
    spec = ck.spec
    if spec.get("family") == "external" and spec.get("source_kind") != "factory":
        names.append(spec["external_file"])
    return {n: (folder / n).read_bytes() for n in names}


class GalleryEmbedder:
    """Ray Data callable class: loads the gallery model once per actor, embeds ``image`` batches."""

    def __init__(self, files: dict[str, bytes], space_id: str, threads: int = 1):
        import torch

        from hetsearch.cmpnas.checkpoint import load_checkpoint

        torch.set_num_threads(max(1, int(threads)))
        folder = tempfile.mkdtemp(prefix="hetsearch-gallery-")
        try:
            for name, raw in files.items():
                Path(folder, name).write_bytes(raw)
            ck = load_checkpoint(folder, expect_kind="gallery")  # verifies the weights against the space id
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if ck.space_id != space_id:
            raise ModelError(f"the actor's gallery model is in space {ck.space_id!r}, the run's in {space_id!r}")
        self.model = ck.model
        self.shape = (ck.model.input_size[0], ck.model.input_size[1], ck.model.in_channels)

    def __call__(self, batch: dict) -> dict:
        from hetsearch.cmpnas.data import convert_images
        from hetsearch.cmpnas.embed import embed

        images = batch["image"]
        if images.dtype == object:  # images of different sizes arrive as an array of arrays
            images = list(images)
        pixels = convert_images(images, *self.shape)
        emb = embed(self.model, pixels, batch_size=max(1, len(pixels)))
        return {"id": batch["id"], "meta": batch["meta"], "embedding": emb}


def image_dataset(ray, data, ids: np.ndarray, meta: list[str], block_rows: int):
    """The images as a Ray dataset of ``id``, ``meta`` and ``image`` (H×W×C uint8; a variable-shaped tensor column
    when sizes differ), in Arrow blocks of ``block_rows`` rows."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    tables = []
    for start in range(0, len(data), block_rows):
        end = min(len(data), start + block_rows)
        images = data.images[start:end] if isinstance(data.images, np.ndarray) else \
            [np.asarray(im) for im in data.images[start:end]]
        tables.append(pa.table({"id": ids[start:end], "meta": meta[start:end],
                                "image": ArrowTensorArray.from_numpy(images)}))
    return ray.data.from_arrow(tables)


def index_gallery_ray(gallery_ckpt, data, *, server: str, name: str = "default", index_factory: str | None = None,
                      token: str | None = None, tls=None, batch_size: int = 1000, workers: int = 2,
                      ray_address: str | None = None, threads: int = 1, progress: bool = True,
                      replace: bool = False, ids=None, metadata=None, ray_init: dict | None = None) -> dict:
    """Embed ``data`` (an ImageSet) on Ray with ``workers`` actors (``threads`` torch threads each) and upsert it
    into gallery ``name`` on ``server`` in batches of ``batch_size``. ``ray_init``: extra ``ray.init`` arguments."""
    from tqdm.auto import tqdm

    from hetsearch.cmpnas.checkpoint import Checkpoint, load_checkpoint

    from .indexer import _ServerWriter, ids_and_metadata

    if not server:
        raise HetsearchError("--engine ray writes through a running gallery server: give --server ADDR "
                             "(an offline --out data directory is for the in-process engine)")
    if workers < 1 or batch_size < 1:
        raise HetsearchError(f"--workers and --batch-size must be at least 1 (got {workers} and {batch_size})")
    ray = import_ray()
    ck = gallery_ckpt if isinstance(gallery_ckpt, Checkpoint) else load_checkpoint(gallery_ckpt, expect_kind="gallery")
    if ck.path is None:
        raise ModelError("--engine ray ships the gallery checkpoint's files to its workers: load it from a folder")
    files = _model_files(ck)
    ids_all, meta = ids_and_metadata(data, ids, metadata)
    n = len(data)
    writer = _ServerWriter(server, name, ck.space_id, index_factory, token, tls, replace)  # before Ray: fail fast
    done, first_write = 0, None
    try:
        t_ray = time.time()
        with ray_session(ray_address, workers, **(ray_init or {})) as session:
            ray_start = time.time() - t_ray
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the bar below counts rows written, not rows embedded
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
            t0 = time.time()
            embedded = image_dataset(ray, data, ids_all, meta, batch_size).map_batches(
                GalleryEmbedder, fn_constructor_kwargs={"files": files, "space_id": ck.space_id, "threads": threads},
                batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                batch_format="numpy")
            bar = tqdm(total=n, desc=f"indexing {name} on Ray ({workers} workers)", unit="img", disable=not progress)
            for batch in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
                writer.upsert(np.asarray(batch["id"], np.int64), batch["embedding"], [str(m) for m in batch["meta"]])
                if not done:
                    first_write = time.time() - t0  # actors started, model loaded, first batch embedded and written
                done += len(batch["id"])
                bar.update(len(batch["id"]))
            bar.close()
            writer.finish()
            secs = time.time() - t0
    finally:
        writer.close()
    if done != n:
        raise HetsearchError(f"Ray returned {done} embeddings for {n} images; the gallery may be incomplete "
                             f"(re-run the same command: writes replace by id)")
    return {"gallery": name, "space_id": ck.space_id, "engine": "ray", "workers": workers, "vectors": done,
            "seconds": round(secs, 2), "images_per_second": round(done / max(secs, 1e-9), 1),
            "ray_start_seconds": round(ray_start, 2), "first_write_seconds": round(first_write or 0.0, 2),
            "ray": session["ray"], "index_factory": writer.factory, "target": server}
