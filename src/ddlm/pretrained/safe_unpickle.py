"""Reading ``torch.save`` files (Lightning ``.ckpt``, SEDD ``checkpoint.pth``, ``pytorch_model.bin``)
without running any code from them.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` (a pickle of the saved object, whose tensors
point to storages by key) and ``<name>/data/<key>`` (the raw bytes of each storage). ddlm reads the zip
itself and unpickles ``data.pkl`` with :class:`RestrictedUnpickler`, which never imports a module or
calls a function named by the file:

- tensors are rebuilt by ddlm's own code from the storage bytes (``torch._utils._rebuild_tensor_v2``
  and ``_rebuild_parameter`` are *names* mapped to ddlm functions, not imported);
- plain containers and scalars (dict, list, tuple, set, OrderedDict, defaultdict, int, float, str,
  bytes, bool, complex, ``torch.Size``, dtypes) are rebuilt from an explicit allow-list;
- every other global (configuration classes, tokenizer classes, a project's own classes, and any
  callable such as ``os.system`` or ``builtins.eval``) becomes an inert :class:`Opaque` record: the
  name, the arguments and the state the file gives for it, as plain data. Nothing is imported or
  called; :attr:`ArchiveContents.skipped` lists these names with their counts.

Code that reads such a checkpoint then takes only tensors and plain values out of it; an
:class:`Opaque` where a tensor is needed is a :class:`UnsafeCheckpointError` naming the key. There is
no fallback to ``torch.load`` with unrestricted unpickling.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ArchiveContents", "CheckpointFormatError", "Opaque", "RestrictedUnpickler", "TensorStub",
    "UnsafeCheckpointError", "materialize", "opaque_to_plain", "read_torch_archive",
]


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint ddlm can read (not a torch zip archive, corrupt, truncated)."""


class UnsafeCheckpointError(ValueError):
    """The file needs an object ddlm will not reconstruct where ddlm needs a value (e.g. a tensor
    of the state dict is an arbitrary object). Nothing from the file was run."""


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in _STORAGE_DTYPES.values()}


class Opaque:
    """An inert record of an object the file describes but ddlm did not reconstruct.

    Attributes:
        qualname: ``module.name`` of the global the file names.
        args: the arguments the file passes to it (already made inert), as a tuple.
        kwargs: keyword arguments (NEWOBJ_EX), as a dict.
        state: the state the file sets on it (BUILD), usually a dict of attributes.
        items: elements appended (APPEND/APPENDS) or set (SETITEM/SETITEMS) on it, in order.
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __init__(self, *args, **kwargs):  # the record is made in __new__ (NEWOBJ does not call __init__)
        pass

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<not reconstructed: {self.qualname}>"


def _opaque_class(qualname: str) -> type:
    return type("Opaque", (Opaque,), {"qualname": qualname, "__module__": __name__})


@dataclass(frozen=True)
class TensorStub:
    """Shape and dtype of a tensor whose bytes were not read (``read_torch_archive(load_tensors=False)``);
    :func:`materialize` reads it later (``storage``, ``offset``, ``stride``: where it lives in the archive)."""

    shape: tuple
    dtype: torch.dtype
    storage: str | None = field(default=None, compare=False)
    offset: int = field(default=0, compare=False)
    stride: tuple = field(default=(), compare=False)
    numel: int = field(default=0, compare=False)


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes: latin-1 only (no codec lookup)."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"_codecs.encode is allowed for latin-1 strings only, got encoding {encoding!r}")
    return text.encode("latin-1", errors if errors in ("strict",) else "strict")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """ddlm's own ``torch._utils._rebuild_tensor_v2``: a strided view of the storage (hooks refused)."""
    if backward_hooks:
        raise UnsafeCheckpointError("a tensor in the file carries backward hooks (callables); ddlm does not load them")
    if isinstance(storage, _StubStorage):
        return TensorStub(tuple(int(s) for s in size), storage.dtype, storage.key, int(storage_offset),
                          tuple(int(s) for s in stride), storage.numel)
    if not isinstance(storage, torch.Tensor):
        raise UnsafeCheckpointError(f"a tensor's storage is {storage!r}, expected a storage of the archive")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(storage_offset))
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointFormatError(f"a tensor of size {tuple(size)}, stride {tuple(stride)}, offset {storage_offset} "
                                    f"does not fit its storage of {storage.numel()} elements: {e}") from None


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    if backward_hooks:
        raise UnsafeCheckpointError("a parameter in the file carries backward hooks (callables); ddlm does not "
                                    "load them")
    return data


def _defaultdict(factory=None, *args):
    allowed = isinstance(factory, type) and (factory in _SAFE_TYPES or issubclass(factory, Opaque))
    if factory is not None and not allowed:
        raise UnsafeCheckpointError(f"defaultdict with factory {factory!r} is not allowed")
    return defaultdict(factory, *args)


_SAFE_TYPES = (dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray, slice)

#: (module, name) -> the object ddlm uses for it; anything else becomes an Opaque record
ALLOWED: dict[tuple[str, str], Any] = {
    **{(mod, t.__name__): t for t in _SAFE_TYPES for mod in ("builtins", "__builtin__")},
    ("__builtin__", "long"): int, ("__builtin__", "unicode"): str,
    ("collections", "OrderedDict"): OrderedDict, ("collections", "defaultdict"): _defaultdict,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in _DTYPE_NAMES.items()},
}


class _StubStorage:
    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come from :data:`ALLOWED` or are :class:`Opaque` records (see module
    docstring); ``storage(dtype, key, numel)`` supplies the tensors' storages."""

    def __init__(self, file, storage):
        super().__init__(file)
        self._storage = storage
        self.skipped: Counter = Counter()
        self._opaque: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in ALLOWED:
            return ALLOWED[key]
        qualname = f"{module}.{name}"
        self.skipped[qualname] += 1
        if qualname not in self._opaque:
            self._opaque[qualname] = _opaque_class(qualname)
        return self._opaque[qualname]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unknown persistent id {pid!r} (expected a torch storage reference)")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise UnsafeCheckpointError(f"storage of key {key!r} has type {kind!r}, not a torch storage type")
        return self._storage(kind.dtype, str(key), int(numel))


@dataclass
class ArchiveContents:
    """What :func:`read_torch_archive` found.

    Attributes:
        obj: the saved object, with tensors, plain containers and :class:`Opaque` records.
        skipped: qualified names of the globals kept as inert records, with their counts.
    """

    obj: Any
    skipped: dict[str, int] = field(default_factory=dict)


def _archive_prefix(names: list[str], path: Path) -> str:
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise CheckpointFormatError(f"{path} is a zip file but not a torch.save archive (found {len(pkl)} "
                                    "'<name>/data.pkl' entries, expected 1)")
    return pkl[0][: -len("data.pkl")]


def read_torch_archive(path, load_tensors: bool = True) -> ArchiveContents:
    """Read a ``torch.save`` zip archive without running code from it (module docstring).

    Args:
        path: the file.
        load_tensors: False reads only the pickle: tensors become :class:`TensorStub` (shape, dtype and
            where the bytes are), which :func:`materialize` reads later (e.g. only the weights of a
            checkpoint that also holds optimizer state).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError: not a torch zip archive (e.g. the pre-1.6 legacy format), a storage
            whose size does not match, a big-endian archive.
        UnsafeCheckpointError: the pickle needs something ddlm will not do (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path} is not a torch zip archive: the legacy torch.save format (PyTorch < 1.6) and raw pickles are "
            "not read by ddlm; re-save it with torch.save in a recent PyTorch, or convert it to safetensors")
    with zipfile.ZipFile(path) as z:
        prefix = _archive_prefix(z.namelist(), path)
        if f"{prefix}byteorder" in z.namelist() and z.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointFormatError(f"{path} was written on a big-endian machine; ddlm reads little-endian "
                                        "archives")
        unpickler = RestrictedUnpickler(io.BytesIO(z.read(f"{prefix}data.pkl")), _StubStorage)
        try:
            obj = unpickler.load()
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except Exception as e:  # malformed pickle streams raise many types; name the file
            raise CheckpointFormatError(f"{path}: cannot read {prefix}data.pkl with ddlm's restricted unpickler: "
                                        f"{type(e).__name__}: {e}") from None
    contents = ArchiveContents(obj, dict(sorted(unpickler.skipped.items())))
    if load_tensors:
        contents.obj = materialize(obj, path)
    return contents


def materialize(tree: Any, path) -> Any:
    """``tree`` with every :class:`TensorStub` replaced by its tensor, read from the archive at ``path``
    (dicts and lists in place; each storage read once; views of one storage share it)."""
    path = Path(path)
    with zipfile.ZipFile(path) as z:
        prefix = _archive_prefix(z.namelist(), path)
        cache: dict[str, torch.Tensor] = {}

        def storage(stub: TensorStub) -> torch.Tensor:
            if stub.storage not in cache:
                entry = f"{prefix}data/{stub.storage}"
                try:
                    info = z.getinfo(entry)
                except KeyError:
                    raise CheckpointFormatError(f"{path}: storage {stub.storage!r} is missing from the "
                                                "archive") from None
                itemsize = torch.empty((), dtype=stub.dtype).element_size()
                if info.file_size != stub.numel * itemsize:
                    raise CheckpointFormatError(f"{path}: storage {stub.storage!r} holds {info.file_size} bytes, "
                                                f"expected {stub.numel} x {itemsize} for {stub.dtype}")
                raw = bytearray(z.read(entry))
                cache[stub.storage] = torch.frombuffer(raw, dtype=stub.dtype) if stub.numel else torch.empty(
                    0, dtype=stub.dtype)
            return cache[stub.storage]

        seen: set[int] = set()  # configs hold cycles (a node's _parent): visit each container once

        def walk(x, depth=0):
            if depth > 500:
                raise CheckpointFormatError(f"{path}: objects nested more than 500 levels deep")
            if isinstance(x, TensorStub):
                if x.storage is None:
                    raise ValueError("this TensorStub does not come from a torch archive")
                return _rebuild_tensor(storage(x), x.offset, x.shape, x.stride)
            if isinstance(x, tuple):
                return tuple(walk(v, depth + 1) for v in x) if type(x) is tuple else x
            if not isinstance(x, (dict, list, Opaque)) or id(x) in seen:
                return x
            seen.add(id(x))
            if isinstance(x, dict):
                for k in list(x):
                    x[k] = walk(x[k], depth + 1)
            elif isinstance(x, list):
                x[:] = [walk(v, depth + 1) for v in x]
            else:
                x.args = tuple(walk(v, depth + 1) for v in x.args)
                x.state = walk(x.state, depth + 1)
                x.items = [walk(v, depth + 1) for v in x.items]
            return x

        return walk(tree)


def opaque_to_plain(obj: Any, depth: int = 0) -> Any:
    """Plain data of a configuration object kept as :class:`Opaque` records: an omegaconf
    ``DictConfig``/``ListConfig`` becomes a dict/list of its values (interpolations stay strings),
    a value node its value; containers are walked; other records stay as they are."""
    if depth > 200:
        raise CheckpointFormatError("configuration nested more than 200 levels deep")
    if isinstance(obj, Opaque):
        state = obj.state[0] if isinstance(obj.state, tuple) and obj.state else obj.state
        if isinstance(state, dict) and "_content" in state:
            return opaque_to_plain(state["_content"], depth + 1)
        if isinstance(state, dict) and "_val" in state:
            return opaque_to_plain(state["_val"], depth + 1)
        return obj
    if isinstance(obj, dict):
        return {k: opaque_to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [opaque_to_plain(v, depth + 1) for v in obj]
    return obj
