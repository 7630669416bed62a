"""Zero-copy views of Python buffers for the native core.

Anything with the buffer protocol works (bytes, bytearray, memoryview, mmap, numpy arrays) as
long as it is C-contiguous; its length is counted in bytes whatever its item type. The returned
cdata pointer borrows the object's memory: keep the object alive while C uses it.
"""
import ctypes

from cluster._load import ffi


def _view(obj, what: str) -> memoryview:
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object (bytes, bytearray, memoryview, numpy array), "
                        f"not {type(obj).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous; copy it first (for numpy: np.ascontiguousarray)")
    return view


def byte_view(obj, what: str = "buffer") -> memoryview:
    """A flat memoryview of unsigned bytes over obj, without copying."""
    view = _view(obj, what)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def readable(obj, what: str = "buffer"):
    """(uint8_t pointer, length in bytes) over obj, without copying."""
    view = _view(obj, what)
    return ffi.from_buffer("uint8_t[]", view), view.nbytes


def writable(obj, what: str = "output buffer"):
    """(uint8_t pointer, length in bytes) over a writable obj, without copying."""
    view = _view(obj, what)
    if view.readonly:
        raise TypeError(f"{what} must be writable (bytearray, numpy array...), not read-only {type(obj).__name__}")
    return ffi.from_buffer("uint8_t[]", view, require_writable=True), view.nbytes


# ---- buffers that are written whole before they are read

UNZEROED_MIN_BYTES = 4 << 20  # below this, bytearray(n)'s zero fill costs little

_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize  # with NULL: allocated, not zeroed
_new_bytearray.restype, _new_bytearray.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t)


def unzeroed_bytearray(size: int) -> bytearray:
    """A bytearray of `size` bytes that is not zero-filled: it holds whatever the allocator had,
    so it is only for a buffer the caller writes whole before anything reads it (a get's result,
    which is returned only once every byte is in place and verified). bytearray(n) zero-fills,
    touching every page before the bytes that go there are even fetched (for 256 MiB, see the
    README's one-line measurement)."""
    return bytearray(size) if size < UNZEROED_MIN_BYTES else _new_bytearray(None, size)
