"""The native core's Python API: erasure coding, content-defined chunking, CRC32C.

    from cluster.codec import ReedSolomon, Chunker, chunk_lengths, crc32c
"""
from cluster.codec.chunker import Chunker, chunk_lengths
from cluster.codec.crc import crc32c
from cluster.codec.kernels import KernelUnavailable
from cluster.codec.rs import CodecError, NotEnoughFragments, ReedSolomon

__all__ = ["Chunker", "chunk_lengths", "crc32c", "ReedSolomon", "CodecError", "NotEnoughFragments",
           "KernelUnavailable"]
