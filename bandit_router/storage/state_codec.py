"""Policy state <-> bytes: the ``.npz`` format of ``np.savez``, never pickled.

>>> state = {"A": np.eye(2), "count": np.array(3), "arms": np.array(["a", "b"])}
>>> decoded = decode_state(encode_state(state))
>>> all(np.array_equal(decoded[k], state[k]) and decoded[k].dtype == state[k].dtype for k in state)
True
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from bandit_router.storage.errors import StateCodecError

# A fixed member timestamp makes equal states encode to equal bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def encode_state(state: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of ``state`` (one member per key, in order), readable by ``np.load``.

    Written member by member as ``np.savez`` does, rather than by calling it, so that keys such
    as ``file`` cannot collide with its parameters and no numpy version can fall back to pickle.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in state.items():
            _check_entry(key, array)
            member = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
            with archive.open(member, mode="w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, array, allow_pickle=False)
    return buffer.getvalue()


def decode_state(data: bytes) -> dict[str, np.ndarray]:
    """The state `encode_state` wrote: same keys, order, dtypes, shapes and values."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise StateCodecError(f"stored policy state is not an .npz archive: {error}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise StateCodecError("stored policy state is a single array, not an .npz archive")
    with loaded:
        try:
            return {key: loaded[key] for key in loaded.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise StateCodecError(f"stored policy state is unreadable: {error}") from None


def _check_entry(key: object, array: object) -> None:
    if not isinstance(key, str) or not key:
        raise StateCodecError(f"policy state keys must be non-empty strings, got {key!r}")
    if not isinstance(array, np.ndarray):
        raise StateCodecError(
            f"policy state entry {key!r} must be a numpy array, got {type(array).__name__}"
        )
    if array.dtype.hasobject:
        raise StateCodecError(
            f"policy state entry {key!r} has dtype {array.dtype}, which needs pickle; "
            "store numbers or fixed-width strings (np.str_) instead"
        )
