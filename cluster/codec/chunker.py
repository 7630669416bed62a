"""Content-defined chunking: splits a byte stream where its content says so, not at fixed offsets.

A thin wrapper over the native gear-hash chunker (native/cdc.c, whose opening comment defines
the cut rule). Cut points depend only on the bytes, never on how the stream is split into
buffers for `Chunker.feed`, so an insertion only moves the chunks around it.
"""
from cluster._load import ffi, lib
from cluster.codec import buffers

WINDOW = 64  # bytes each hash value depends on: the smallest allowed min_size
SIZE_LIMIT = 1 << 40  # max_size must stay below this
_BATCH = 1024  # chunk lengths gathered per native call


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def check_sizes(min_size: int, avg_size: int, max_size: int, normalization: int) -> None:
    """Raise ValueError (TypeError for a non-int) unless the native core accepts these sizes."""
    for name, value in (("min_size", min_size), ("avg_size", avg_size),
                        ("max_size", max_size), ("normalization", normalization)):
        _check_int(name, value)
    if min_size < WINDOW:
        raise ValueError(f"min_size must be at least {WINDOW} (the hash window), got {min_size}")
    if avg_size & (avg_size - 1):
        raise ValueError(f"avg_size must be a power of two, got {avg_size}")
    if not min_size <= avg_size <= max_size:
        raise ValueError(f"sizes must satisfy min_size <= avg_size <= max_size, got "
                         f"{min_size}, {avg_size}, {max_size}")
    if min_size == max_size:
        raise ValueError(f"min_size must be smaller than max_size, both are {min_size}")
    if max_size >= SIZE_LIMIT:
        raise ValueError(f"max_size must be below 2**40, got {max_size}")
    if not 0 <= normalization <= 3:
        raise ValueError(f"normalization must be 0, 1, 2 or 3, got {normalization}")


class Chunker:
    """Streaming chunker: feed buffers in order, then finish() for the trailing partial chunk.

    Not thread-safe: one object holds one stream's state, so use it from one thread at a time.
    Separate objects may run in separate threads; the native scan releases the GIL.
    """

    def __init__(self, min_size: int = 256 * 1024, avg_size: int = 1024 * 1024,
                 max_size: int = 4 * 1024 * 1024, normalization: int = 2):
        check_sizes(min_size, avg_size, max_size, normalization)
        self._sizes = (min_size, avg_size, max_size, normalization)
        self._state = ffi.new("cairn_cdc *")
        self._lengths = ffi.new("uint64_t[]", _BATCH)
        self._consumed = ffi.new("size_t *")
        self._reset()

    def _reset(self) -> None:
        if lib.cairn_cdc_init(self._state, *self._sizes) != 0:
            raise ValueError(f"native chunker rejected sizes {self._sizes}")

    @property
    def min_size(self) -> int:
        return self._sizes[0]

    @property
    def avg_size(self) -> int:
        return self._sizes[1]

    @property
    def max_size(self) -> int:
        return self._sizes[2]

    @property
    def normalization(self) -> int:
        return self._sizes[3]

    @property
    def pending(self) -> int:
        """Bytes fed since the last cut: the length finish() would report now."""
        return self._state.length

    def feed(self, buffer) -> list[int]:
        """Lengths of the chunks that end inside `buffer` (the first may have begun earlier)."""
        if isinstance(buffer, str):
            raise TypeError("cannot chunk a str: encode it to bytes first")
        data, total = buffers.readable(buffer, "chunker input")
        offset, out = 0, []
        while offset < total:
            count = lib.cairn_cdc_scan(self._state, data + offset, total - offset,
                                       self._lengths, _BATCH, self._consumed)
            if count < 0 or (count == 0 and self._consumed[0] == 0):
                raise RuntimeError(f"native chunker failed (code {count}) at offset {offset}")
            out += ffi.unpack(self._lengths, count)
            offset += self._consumed[0]
        return out

    def finish(self) -> list[int]:
        """[length of the trailing partial chunk], or [] if there is none; then start afresh."""
        tail = self._state.length
        self._reset()
        return [tail] if tail else []


def chunk_lengths(data, **sizes) -> list[int]:
    """All chunk lengths of one whole buffer (they add up to its size); sizes as for Chunker."""
    chunker = Chunker(**sizes)
    return chunker.feed(data) + chunker.finish()
