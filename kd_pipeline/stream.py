"""What the training stages draw, for both kinds: store blocks for the student, dataset samples for hard labels.

Student (`student_batches`): each pass permutes the store's training blocks (blocks holding only evaluation
rows are never read); rank r of a torchrun group takes every world-th of that order. `window` blocks are
read at a time, every chunk of the window in flight at once, `read_ahead` windows ahead of the consumer in
worker threads (2; 4 for a remote store, where each chunk is a request) (whole chunks, checked with
`CacheStore.check_block`), together with
the samples that start in them (samples.parquet, by row group); those samples are shuffled together and cut
into batches of `batch_size` samples; left-overs carry into the next window, so every sample is seen once per
pass and batches are full. The shuffle runs in one more background thread, window after window (so the
permutations are drawn in the same order whatever the threads' timing): each window is gathered once in its
shuffled order, and a batch is then a slice of it. A batch's targets come from the window's arrays (read once per block). Its inputs
come from the store too for a sequence (the tokens), or, for classification, from the dataset by sample id:
the batch's (split, sample id) go to a DataLoader whose workers fetch them (`data.num_workers`), while the
targets wait in a queue in the same order.

Hard labels (`shuffled_batches`): a fresh seeded permutation of the split per epoch, rank r taking every
world-th sample, fetched by the same DataLoader path.

Both are functions of the seed alone, so a resumed run skips `skip` batches and continues exactly where the
checkpoint was (no batch is fetched for the skipped ones).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from .data import SplitSamples, batch_loader, batches_of
from .distributed import Dist
from .kinds import pad_batch
from .losses import teacher_terms, temperature_index
from .store import CacheStore
from .store.format import INPUT_ARRAYS
from .store.ids import decode_ids
from .store.location import is_remote
from .store.values import decode_values
from .targets import targets_from_arrays
from .views import replay

UNIT_KEYS = ("split", "sample_id", "label", "start", "num_rows")  # per sample of a window; start = its first row in the window


class BlockStream:
    """The student's draw order over a store: windows of shuffled blocks -> batches of samples (numpy)."""

    def __init__(self, store: CacheStore, batch_size: int, window: int = 4, seed: int = 0, rank: int = 0,
                 world: int = 1, check: bool = True, evaluation: bool = False, read_ahead: int | None = None,
                 features: list[str] | None = None, inputs: SplitSamples | None = None, kl_tau: float | None = None):
        """features: the feature arrays to read (None: all; the student reads those its loss uses). inputs:
        in-memory samples (`in_memory`) whose inputs are gathered once per window in the reader thread, as
        units["x"], instead of per batch through a DataLoader. kl_tau: the temperature of the student's KL, whose
        teacher terms (losses.teacher_terms) are computed once per block of a top-k store."""
        self.store, self.batch_size, self.window, self.check = store, batch_size, window, check
        self.inputs = inputs
        self.kl_tau = kl_tau if store.manifest.targets == "topk" else None
        # the arrays read (and checked): every one but the features nobody reads
        self.names = [n for n in store.arrays if features is None or not n.startswith("features/") or n.split("/", 1)[1] in features]
        self.read_ahead = read_ahead or (4 if is_remote(store.path) else 2)  # windows read ahead, concurrently
        self.rank, self.world = rank, world
        m = store.manifest
        self.eval_code = m.dataset.splits.index(m.dataset.eval_split) if m.dataset.eval_split else -1
        # training: blocks where some training sample starts. evaluation (store_eval.py): those of the eval split
        self.evaluation = evaluation
        self.blocks = np.flatnonzero(store.samples.eval_blocks if evaluation else store.samples.train_blocks)
        # Two generators: the reader thread draws block orders, the consumer sample orders. One shared generator
        # would make the batch sequence depend on thread timing; two keep it a function of the seed (resume).
        self.block_rng, self.row_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    def _windows(self) -> Iterator[list[int]]:
        while True:
            mine = self.block_rng.permutation(self.blocks)[self.rank :: self.world].tolist()
            for i in range(0, len(mine), self.window):
                yield mine[i : i + self.window]

    def _read(self, blocks: list[int]) -> tuple[dict, dict]:
        """-> (rows: array name -> (n, ...) for the rows the window's samples cover, features float32, units:
        UNIT_KEYS -> (u,))."""
        parts, units = self._read_parts(blocks)
        return (_float32(_cat(parts)) if parts else {}), units

    def _read_parts(self, blocks: list[int]) -> tuple[list[dict], dict]:
        """`_read`, its rows left as one part per block (joined once, with the previous window's left-overs, in
        `_shuffled`) and features in their stored dtype (converted after the shuffle: half the bytes moved)."""
        C = self.store.manifest.chunk_rows
        cache: dict[int, dict[str, np.ndarray]] = {}

        def hold(bb: int, a: dict[str, np.ndarray]) -> None:
            if self.check:
                self.store.check_block(bb, a)
            m = self.store.manifest
            # decoded once per block, here in the reader thread: the batches only gather rows
            a["ids"] = decode_ids(a, m).astype(np.int64, copy=False)
            a["values"] = decode_values(a, m.values_scheme)
            for k in ("topk_indices", "topk_logits", "value_scale"):
                a.pop(k, None)
            if self.kl_tau is not None:
                ti = temperature_index(tuple(m.temperatures), self.kl_tau)
                kl = teacher_terms(torch.from_numpy(a["values"]), torch.from_numpy(a["lse"][:, ti : ti + 1]), self.kl_tau)
                a["kl_p"], a["kl_plogp"] = (v.numpy() for v in kl)
            cache[bb] = a

        def block(bb: int) -> dict[str, np.ndarray]:
            if bb not in cache:
                hold(bb, self.store.read_blocks([bb], self.names)[bb])
            return cache[bb]

        for bb, arrays in self.store.read_blocks(list(blocks), self.names).items():  # the window's chunks all in flight together
            hold(bb, arrays)
        rows, units, n = [], [], 0
        for b in blocks:
            start, stop = self.store.block_rows(b)
            s = self.store.samples.block(start, stop)
            keep = (s["split"] == self.eval_code) if self.evaluation else (s["split"] != self.eval_code)
            s = {k: v[keep] for k, v in s.items()}
            if not len(s["row"]):
                continue
            r0, r1 = int(s["row"][0]), int(s["row"][-1] + s["num_rows"][-1])
            span = range(r0 // C, (r1 - 1) // C + 1)  # a sample may run into the next block(s)
            arrays = block(span[0]) if len(span) == 1 else {k: np.concatenate([block(bb)[k] for bb in span]) for k in block(span[0])}
            rows.append({k: v[r0 - span[0] * C : r1 - span[0] * C] for k, v in arrays.items()})
            units.append({"split": s["split"], "sample_id": s["sample_id"], "label": s["label"],
                          "start": s["row"] - r0 + n, "num_rows": s["num_rows"]})
            n += r1 - r0
        if not rows:
            return [], {k: np.zeros(0, np.int64) for k in UNIT_KEYS}
        units = _cat(units)
        if self.inputs is not None:  # the window's inputs in one gather per split, off the training thread
            units["x"] = self.inputs.__getitems__((units["split"], units["sample_id"]))["x"].numpy()
        return rows, units

    def _shuffled(self) -> Iterator[tuple[dict, dict, int]]:
        """Windows in order, each with the previous one's left-over samples, shuffled and gathered once:
        (rows, units, full) whose first `full` samples are the window's batches, each `batch_size` consecutive
        samples (and their rows, consecutive too). Runs in one thread: the permutations are drawn in order."""
        carry = None  # the previous window's left-over samples (rows in stored dtypes)
        for parts, units in read_ahead(self._read_parts, self._windows(), self.read_ahead):
            if carry is not None:
                parts, units = _merge(carry, parts, units)
            rows = _cat(parts) if parts else {}  # the window's one copy before the shuffle
            n = len(units["split"])
            rows, units = _subset(rows, units, self.row_rng.permutation(n))  # one gather per array per window
            full = n // self.batch_size * self.batch_size
            yield _float32(rows), units, full
            carry = _slice(rows, units, full, n) if full < n else None

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        """Infinite: (rows, units) of `batch_size` samples; rows hold exactly the samples' rows, in order (views
        into the shuffled window: a batch costs a slice per array)."""
        if not len(self.blocks):
            return
        for rows, units, full in in_thread(self._shuffled()):
            for i in range(0, full, self.batch_size):
                yield _slice(rows, units, i, i + self.batch_size)


def _cat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _row_index(units: dict, sel: np.ndarray) -> np.ndarray:
    start, n = units["start"][sel], units["num_rows"][sel]
    if (n == 1).all():
        return start
    return np.concatenate([np.arange(a, a + k) for a, k in zip(start.tolist(), n.tolist())])


def _subset(rows: dict, units: dict, sel: np.ndarray) -> tuple[dict, dict]:
    """The samples `sel` of a window, in that order, with their rows gathered (one gather per array)."""
    idx = _row_index(units, sel)
    u = {k: v[sel] for k, v in units.items()}
    u["start"] = np.concatenate([[0], np.cumsum(u["num_rows"])[:-1]]).astype(np.int64)
    return {k: v[idx] for k, v in rows.items()}, u


def _slice(rows: dict, units: dict, i: int, j: int) -> tuple[dict, dict]:
    """Samples i..j of a window whose samples' rows are consecutive and in order (after `_subset`): views."""
    u = {k: v[i:j] for k, v in units.items()}
    r0 = int(u["start"][0])
    r1 = int(u["start"][-1] + u["num_rows"][-1])
    u["start"] = u["start"] - r0
    return {k: v[r0:r1] for k, v in rows.items()}, u


def _merge(carry: tuple[dict, dict], parts: list[dict], units: dict) -> tuple[list[dict], dict]:
    """Left-over samples (rows, units) put before a window's (row parts, units): units' starts shifted."""
    if not units["split"].size:
        return [carry[0]], carry[1]
    n = int(carry[1]["start"][-1] + carry[1]["num_rows"][-1])  # rows of the carry
    return [carry[0], *parts], {k: np.concatenate([carry[1][k], units[k] + (n if k == "start" else 0)]) for k in units}


def _float32(rows: dict) -> dict:
    """Features as float32 (what Targets carry; torch converts float16 ~4x faster than numpy)."""
    return {k: torch.from_numpy(v).float().numpy() if k.startswith("features/") and v.dtype != np.float32 else v for k, v in rows.items()}


def _student_batch(rows: dict, units: dict, store: CacheStore, kl_tau: float | None = None) -> dict:
    """Targets (and, for a sequence, inputs and labels) of one planned batch."""
    m = store.manifest
    batch = {"targets": targets_from_arrays({k: v for k, v in rows.items() if k not in INPUT_ARRAYS}, m, kl_tau),
             "split": units["split"], "sample_id": units["sample_id"]}
    if "view_seed" in rows:  # augmented views: the rows' seeds replay their inputs (kd_pipeline/views.py)
        batch["view_seed"], batch["num_rows"] = rows["view_seed"], units["num_rows"]
    if "tokens" in rows:
        n = units["num_rows"]
        mask = np.arange(int(n.max()))[None, :] < n[:, None]
        padded = {}
        for name, key in (("tokens", "ids"), ("char_end", "chars"), ("loss_mask", "loss")):
            if name in rows:
                padded[key] = np.zeros(mask.shape, np.int64)
                padded[key][mask] = rows[name]
        batch.update(pad_batch(padded.pop("ids"), n, padded))
    else:
        batch["y"] = torch.from_numpy(units["label"].astype(np.int64))
    if "x" in units:  # inputs gathered with the window (BlockStream `inputs`)
        batch["x"] = torch.from_numpy(units["x"])
    return batch


def student_batches(store: CacheStore, samples: SplitSamples | None, batch_size: int, window: int, seed: int,
                    dist: Dist = Dist(), num_workers: int = 0, skip: int = 0, pin_memory: bool = False,
                    views=None, features: list[str] | None = None, kl_tau: float | None = None) -> Iterator[dict]:
    """Endless training batches for the student: `targets` (Targets over the batch's rows, in row order), `x`,
    `y` (and `mask` for sequences). samples: the dataset the store's sample ids index (None for a sequence
    store, whose inputs are in it; for a student with its own tokenizer, its tokens of each stored sample, and
    the store's inputs come as t_x, t_mask, t_chars[, t_loss_mask]). batch_size: samples per batch on this rank.
    views: the transform that replays a store's augmented views (kd_pipeline.views.check_views): x and y then hold
    one row per view. features: the cached features the batches carry (None: all). kl_tau: the student's
    temperature, at which the teacher's side of the KL is computed once per block (losses.teacher_terms) and
    carried by the targets."""
    window_rows = window * store.manifest.chunk_rows
    window_inputs = samples if num_workers == 0 and samples is not None and in_memory(samples, window_rows) else None
    stream = BlockStream(store, batch_size, window, seed, dist.rank, dist.world, features=features, inputs=window_inputs, kl_tau=kl_tau)
    plan = (_student_batch(r, u, store, stream.kl_tau) for r, u in stream)
    for _ in range(skip):
        next(plan)
    fetch = None if window_inputs is not None else samples
    for b in with_inputs(plan, fetch, store.manifest.kind, num_workers, pin_memory, worker_start(store)):
        yield b if views is None else replay(b, views)


WINDOW_INPUT_BYTES = 64 << 20  # at most this many bytes of inputs per window gathered in the reader thread


def in_memory(samples: SplitSamples, rows: int) -> bool:
    """Whether every split is an array dataset held in memory (ArrayDataset, TensorDataset) whose inputs for
    `rows` samples take at most WINDOW_INPUT_BYTES: they are then gathered per window without a DataLoader
    (larger inputs, e.g. images, keep the DataLoader's per-batch fetch: a few windows are in flight at once)."""
    from .data.arrays import _arrays

    datasets = getattr(samples, "datasets", None)  # any other object with __getitems__ goes through a DataLoader
    arrays = [_arrays(d) for d in datasets] if datasets is not None else [None]
    if any(a is None for a in arrays):
        return False
    return all(rows * a[0][:1].numel() * a[0].element_size() <= WINDOW_INPUT_BYTES for a in arrays)


def worker_start(store: CacheStore) -> str | None:
    """DataLoader workers must not be forked from a process that holds an s3fs/aiohttp client (not fork-safe;
    the workers only read the dataset, but a fork copies the client's locks mid-use): forkserver then."""
    return "forkserver" if is_remote(store.path) else None


def with_inputs(plan: Iterator[dict], samples: SplitSamples | None, kind: str, num_workers: int = 0, pin_memory: bool = False,
                start_method: str | None = None) -> Iterator[dict]:
    """Batches planned from a store, with their inputs: a sequence store's are in it already and small in-memory
    inputs are gathered with the window (samples None then); a classification batch's `x` is fetched from the
    dataset by (split, sample id), and a cross-tokenizer student's own tokens of each stored sample likewise, in a
    DataLoader running ahead of the consumer."""
    if samples is None:
        yield from plan
        return
    waiting: deque = deque()

    def keys():  # runs in the main process, ahead of the workers: each batch's targets wait in `waiting`
        for b in plan:
            waiting.append(b)
            yield b["split"], b["sample_id"]

    for fetched in batches_of(batch_loader(samples, keys(), num_workers, pin_memory, start_method)):
        b = waiting.popleft()
        assert np.array_equal(fetched["sample_id"], b["sample_id"])  # DataLoader keeps the sampler's order
        if kind == "sequence":  # a student with its own tokens (cross-tokenizer): the store's are t_*
            b = {"targets": b["targets"], **{f"t_{k}": v for k, v in b.items() if torch.is_tensor(v)}, **fetched}
        else:
            b["x"] = fetched["x"]
        yield b


def shuffled_batches(samples: SplitSamples, split: int | list[int], batch_size: int, seed: int, dist: Dist = Dist(),
                     num_workers: int = 0, skip: int = 0, pin_memory: bool = False) -> Iterator[dict]:
    """Endless batches of `batch_size` samples (per rank) of one split, or of several drawn together (online
    and mutual learning: the training splits the store would hold): a seeded permutation of all their samples
    per epoch, rank r taking every world-th sample; the last incomplete batch of an epoch is dropped."""
    splits = [split] if isinstance(split, int) else list(split)
    sizes = np.array([len(samples.datasets[t]) for t in splits], np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # flat index of each split's sample 0
    n = int(first[-1])
    rng = np.random.default_rng(seed)

    def keys():
        done = 0
        while True:
            mine = rng.permutation(n)[dist.rank :: dist.world]
            for i in range(0, len(mine) - batch_size + 1, batch_size):
                if done >= skip:
                    flat = mine[i : i + batch_size].astype(np.int64)
                    t = np.searchsorted(first, flat, side="right") - 1
                    yield np.asarray(splits, np.int64)[t], flat - first[t]
                done += 1

    if n // dist.world < batch_size:
        from .errors import DataError

        names = ", ".join(repr(samples.names[t]) for t in splits)
        raise DataError(f"data: split {names} has {n} samples, fewer than one batch of {batch_size} per process")
    yield from batches_of(batch_loader(samples, keys(), num_workers, pin_memory))


def in_thread(items: Iterator, depth: int = 1) -> Iterator:
    """Iterates `items` in a background thread, up to `depth` results ahead of the consumer, in order; an
    exception surfaces when its place is reached; closing (or dropping) the consumer stops the thread (within
    0.1 s, or once the item it is computing is done; it then closes `items`) and waits for it."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        try:
            for x in items:
                if not put((x, None)):
                    break
            else:
                put((end, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((end, e))
        finally:
            items.close()

    thread = threading.Thread(target=run, name="kd-stream", daemon=True)
    thread.start()
    try:
        while True:
            x, e = q.get()
            if e is not None:
                raise e
            if x is end:
                return
            yield x
    finally:
        stop.set()
        # and wait for it: a thread still inside a torch or numpy call when the interpreter exits aborts the
        # process ("terminate called without an active exception", exit -6) after the stage has finished
        if thread is not threading.current_thread():
            thread.join(timeout=60)


def read_ahead(fn, items: Iterator, depth: int) -> Iterator:
    """fn(item) for the next `depth` items in flight in worker threads, results yielded in the items' order
    (so what is yielded does not depend on thread timing); an exception surfaces when its item is reached;
    closing the consumer cancels what is not started yet."""
    pool = ThreadPoolExecutor(max_workers=depth)
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False)
