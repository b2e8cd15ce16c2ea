"""Reader for CTranslate2's ``model.bin`` (binary format version 6), in NumPy.

Layout, as written by ``ctranslate2/specs/model_spec.py``::

    u32 version, str spec_name, u32 revision, u32 n_vars
    n_vars x (str name, u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, bytes data)
    u32 n_aliases, n_aliases x (str alias, str target)

A ``str`` is ``u16 length`` (including a trailing NUL), then the bytes. dtype codes: 0 f32,
1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. Integers are little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from workers.engines.errors import ModelFormatError

SUPPORTED_VERSIONS = (6,)
_MAX_RANK = 8
_DTYPES: dict[int, np.dtype[np.generic]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16, widened to float32 after reading
}


@dataclass
class CT2Model:
    """The variables of a CTranslate2 model, aliases resolved."""

    spec_name: str
    revision: int
    variables: dict[str, npt.NDArray[np.generic]]

    def __getitem__(self, name: str) -> npt.NDArray[np.generic]:
        try:
            return self.variables[name]
        except KeyError:
            raise ModelFormatError(f"The model has no variable {name!r}.") from None

    def __contains__(self, name: object) -> bool:
        return name in self.variables

    def scalar(self, name: str) -> int:
        return int(self[name].reshape(-1)[0])


class _Reader:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh = fh
        self._size = size

    def _read(self, n: int) -> bytes:
        data = self._fh.read(n)
        if len(data) != n:
            raise ModelFormatError("The model file ends early: it is truncated.")
        return data

    def u8(self) -> int:
        return self._read(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self._read(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self._read(4))[0])

    def string(self) -> str:
        length = self.u16()
        raw = self._read(length)
        if not raw.endswith(b"\0"):
            raise ModelFormatError("A name in the model file is not NUL-terminated.")
        return raw[:-1].decode("utf-8")

    def array(
        self, dtype: np.dtype[np.generic], shape: tuple[int, ...], nbytes: int
    ) -> npt.NDArray[np.generic]:
        if self._fh.tell() + nbytes > self._size:
            raise ModelFormatError("A variable runs past the end of the model file.")
        count = nbytes // dtype.itemsize
        array = np.fromfile(self._fh, dtype=dtype, count=count)
        if array.size != count:
            raise ModelFormatError("The model file ends early: it is truncated.")
        return array.reshape(shape)


def read_ct2_model(path: Path) -> CT2Model:
    """Parse ``path`` into a ``CT2Model``; raise ``ModelFormatError`` on anything unexpected."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        reader = _Reader(fh, size)
        version = reader.u32()
        if version not in SUPPORTED_VERSIONS:
            raise ModelFormatError(
                f"Unsupported CTranslate2 model version {version}; expected one of "
                f"{SUPPORTED_VERSIONS}."
            )
        spec_name = reader.string()
        revision = reader.u32()
        n_vars = reader.u32()
        variables: dict[str, npt.NDArray[np.generic]] = {}
        for _ in range(n_vars):
            name = reader.string()
            rank = reader.u8()
            if rank > _MAX_RANK:
                raise ModelFormatError(f"Variable {name!r} has an implausible rank {rank}.")
            shape = tuple(reader.u32() for _ in range(rank))
            code = reader.u8()
            nbytes = reader.u32()
            dtype = _DTYPES.get(code)
            if dtype is None:
                raise ModelFormatError(f"Variable {name!r} has unknown data type code {code}.")
            if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
                raise ModelFormatError(f"Variable {name!r}: shape {shape} and size disagree.")
            array = reader.array(dtype, shape, nbytes)
            if code == 5:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
        n_aliases = reader.u32()
        for _ in range(n_aliases):
            alias = reader.string()
            target = reader.string()
            if target not in variables:
                raise ModelFormatError(f"Alias {alias!r} points at missing {target!r}.")
            variables[alias] = variables[target]
        if fh.tell() != size:
            raise ModelFormatError("The model file has trailing data after the aliases.")
    return CT2Model(spec_name=spec_name, revision=revision, variables=variables)
