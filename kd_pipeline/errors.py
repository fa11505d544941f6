"""Error types. A `KDError` is the user's to fix (bad config, store or data): the CLI prints its one-line
message and exits 2. Anything else is a bug or an environment failure: exit 1."""


class KDError(Exception):
    """Bad input: config, store, data. The message is one line that names the key, file, array or row."""


class ConfigError(KDError):
    pass


class StoreError(KDError):
    pass


class NoStoreError(StoreError):
    """A path that holds no store at all (no zarr.json): callers that know why the user pointed there say more."""


class DataError(KDError):
    pass
