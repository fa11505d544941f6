"""Where a store lives: a local folder (a plain `pathlib.Path`) or an fsspec URL (`FsPath`).

The store package is written against the few path operations both offer (`/`, `name`, `exists`, `is_file`,
`stat().st_size`, `read_bytes`, `open`, `iterdir`, `glob`, `unlink`, `mkdir`), so reading, checking and writing
are one code path. A local store stays a `pathlib.Path`, and what makes it crash-safe is unchanged: flock locks,
fsync, temp file + rename (files.py, lock.py). A remote store (`s3://bucket/prefix`, `gs://…`, any fsspec URL;
`http(s)://…` read-only) is an `FsPath` over an fsspec filesystem, where an object store offers other
guarantees: a PUT of a whole object is atomic (it replaces temp file + rename: a reader sees the old object or
the new one), a PUT that returned is durable (nothing to fsync), there is no flock (lock.py uses a lock object
created with a conditional PUT instead). docs/integrity.md "Remote stores" says what holds where.

Credentials and endpoints come from the environment as botocore and fsspec read them (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE, …) or from `cache.storage_options`; they live in the
filesystem object only. `str(FsPath)` is the URL without any user:password part, and `redact` removes secrets
from text that leaves the process (error messages, the lock file's command line).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Union

from ..errors import StoreError

READ_ONLY_PROTOCOLS = ("http", "https")
# environment variables whose values must never be written anywhere (redact)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_secrets: set[str] = set()  # storage option values seen in this process (never written; removed by redact)


def is_url(where: str | Path) -> bool:
    return isinstance(where, str) and "://" in where and not where.startswith("file://")


def as_location(where: Union[str, Path, "FsPath"], storage_options: dict | None = None) -> Union[Path, "FsPath"]:
    """A local path -> pathlib.Path (as before); an fsspec URL -> FsPath. storage_options: extra fsspec
    options for what the environment cannot say (e.g. {"anon": True}); never written anywhere."""
    if isinstance(where, (Path, FsPath)):
        return where
    where = str(where)
    if where.startswith("file://"):
        return Path(where[len("file://"):])
    if not is_url(where):
        return Path(where)
    return FsPath.from_url(where, storage_options or {})


def is_remote(p) -> bool:
    return isinstance(p, FsPath)


def display(where) -> str:
    """A location as it may appear in messages, records and manifests: no user:password in a URL."""
    return _USERINFO.sub(lambda m: m.group("scheme"), str(where))


def redact(text: str) -> str:
    """`text` without URL user info and without the values of secret environment variables or storage options."""
    text = display(text)
    for value in [*(os.environ.get(k) for k in SECRET_ENV), *_secrets]:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _remember_secrets(options: dict) -> None:
    for v in options.values():
        if isinstance(v, dict):
            _remember_secrets(v)
        elif isinstance(v, str) and len(v) >= 8 and not v.startswith(("http://", "https://")):
            _secrets.add(v)  # keys, tokens, secrets: any long string option except an endpoint


class FsPath:
    """A path on an fsspec filesystem with the pathlib operations the store package uses."""

    def __init__(self, fs, path: str, options: dict):
        self.fs, self.path = fs, path.rstrip("/")
        self._options = options  # for zarr's own (asynchronous) filesystem over the same store

    @classmethod
    def from_url(cls, url: str, options: dict) -> "FsPath":
        import fsspec

        _remember_secrets(options)
        try:
            fs, path = fsspec.url_to_fs(url, **options)
        except ImportError as e:
            raise StoreError(f"{display(url)}: this kind of URL needs an optional package ({e}); "
                             f"pip install -e '.[remote]'") from None
        except Exception as e:
            raise StoreError(redact(f"{url}: cannot open ({type(e).__name__}: {e})")) from None
        return cls(fs, path, options)

    # -------------------------------------------------------------------------------------- naming
    @property
    def protocol(self) -> str:
        """The URL's scheme: s3, gs, http, https, …"""
        return self._url().split("://", 1)[0]

    @property
    def read_only(self) -> bool:
        return self.protocol in READ_ONLY_PROTOCOLS

    @property
    def max_requests(self) -> int:
        """Chunk reads in flight at once. Object stores take many; a plain static web server may not: Python's
        http.server listens with a backlog of 5, and a connection beyond it waits for a SYN retransmit (1 s)."""
        return 4 if self.protocol in READ_ONLY_PROTOCOLS else 16

    def _url(self) -> str:
        return self.path if "://" in self.path else self.fs.unstrip_protocol(self.path)

    def __str__(self) -> str:
        return display(self._url())

    def __repr__(self) -> str:
        return f"FsPath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FsPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, other) -> "FsPath":
        return FsPath(self.fs, f"{self.path}/{str(other).strip('/')}", self._options)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "FsPath":
        return FsPath(self.fs, self.path.rsplit("/", 1)[0], self._options)

    # ------------------------------------------------------------------------------------- reading
    # Every read first drops fsspec's cached listings of this path and its parents: zarr writes through its own
    # filesystem instance, so a listing cached here may predate objects that exist (s3fs then answers "missing").
    def _fresh(self) -> str:
        self.fs.invalidate_cache(self.path)
        return self.path

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def is_file(self) -> bool:
        self._fresh()
        try:
            return bool(self.fs.isfile(self.path))
        except FileNotFoundError:
            return False

    def is_dir(self) -> bool:
        if self.protocol in READ_ONLY_PROTOCOLS:  # http has no folders: a store's root answers with its zarr.json
            return (self / "zarr.json").is_file()
        try:
            return bool(self.fs.isdir(self._fresh()))
        except FileNotFoundError:
            return False

    def stat(self):
        return SimpleNamespace(st_size=int(self.fs.size(self._fresh())))

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self._fresh())

    def open(self, mode: str = "rb"):
        return self.fs.open(self._fresh(), mode)

    def iterdir(self):
        try:
            names = self.fs.ls(self._fresh(), detail=False)
        except FileNotFoundError:
            return iter(())
        return iter(FsPath(self.fs, n, self._options) for n in names if n.rstrip("/") != self.path)

    def glob(self, pattern: str):
        self._fresh()
        try:
            found = self.fs.glob(f"{self.path}/{pattern}")
        except (FileNotFoundError, NotImplementedError, ValueError):
            return iter(())
        return iter(FsPath(self.fs, n, self._options) for n in found)

    def read_many(self, names: list[str]) -> list[bytes | None]:
        """The files `self / name` read concurrently (one request each, all in flight): None where missing."""
        paths = [f"{self._fresh()}/{n}" for n in names]
        if not paths:
            return []
        got = self.fs.cat(paths, on_error="return")
        got = got if isinstance(got, dict) else {paths[0]: got}
        return [None if isinstance(got.get(p), BaseException) or p not in got else got[p] for p in paths]

    # ------------------------------------------------------------------------------------- writing
    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self}: {self.protocol} stores are read-only; write the store to a local folder or an object store (s3://, gs://)")

    def write_bytes(self, data: bytes) -> None:
        """One PUT of the whole object: readers see the old object or the new one, never part of one."""
        self._writable()
        self.fs.pipe_file(self.path, data)

    def create(self, data: bytes) -> bool:
        """A PUT that succeeds only if no object of this name exists (S3 If-None-Match: *); False if one does."""
        self._writable()
        try:
            self.fs.pipe_file(self.path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, TypeError, ValueError) as e:  # no exclusive create on this filesystem
            raise StoreError(f"{self}: this filesystem cannot create an object only if none exists ({type(e).__name__}), "
                             f"which the writer lock needs (S3: a conditional PUT); write the store to S3 or a local folder") from None

    def upload(self, local: Path) -> None:
        """A local file as this object (multipart for large files: the object appears only when complete)."""
        self._writable()
        self.fs.put_file(str(local), self.path)

    def unlink(self, missing_ok: bool = False) -> None:
        self._writable()
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        self._writable()
        self.fs.rm(self.path, recursive=True)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self._writable()  # object stores have no folders: a prefix exists once an object is under it

    # --------------------------------------------------------------------------------------- zarr
    def zarr_store(self, read_only: bool):
        """zarr's own store over the same URL and options (zarr needs an asynchronous filesystem)."""
        from zarr.storage import FsspecStore

        options = dict(self._options)
        if self.protocol == "s3":  # chunks are read whole, many at once: one GET each, no HEAD for its size first
            options.setdefault("max_concurrency", 1)
            # no CRC32 of every response body (botocore's default since 1.36): each block's bytes are checked
            # against the sha256 in its marker anyway, and the CRC costs both ends CPU per request
            options.setdefault("config_kwargs", {"response_checksum_validation": "when_required"})
        return FsspecStore.from_url(self._url(), storage_options=options, read_only=read_only or self.read_only)


def zarr_location(p, read_only: bool):
    """What zarr.open_group takes for a store location: the folder's path, or an FsspecStore."""
    return p.zarr_store(read_only) if isinstance(p, FsPath) else str(p)
