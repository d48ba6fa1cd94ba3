"""Compiled CPU kernels, built on first use.

Two XLA FFI handlers, built into one library: the sparse product (`linopx_spmv`, in
`sparse_kernels.cc`) and the run-time check of a solve with `throw=True` (`linopx_check`, in
`checks.cc`). The library is compiled the first time either is traced for the CPU, with the
machine's C++ compiler (`$CXX`, else `c++`/`g++`/`clang++` on the path) against the FFI headers of
the installed jaxlib (`jax.ffi.include_dir()`, so the binary matches the runtime it is loaded
into), and kept in a cache directory for later processes:

- `$LINOPX_CACHE_DIR`, else `$XDG_CACHE_HOME/linopx`, else `~/.cache/linopx`;
- one file per set of sources, jaxlib version, compiler and machine (a digest in its name),
  written under a temporary name and renamed into place, so processes building at once do not
  clash.

Nothing here is needed for correctness: without a compiler, or with `LINOPX_NATIVE=0`, or if the
build fails, the sparse product stays in XLA (the same results, slower on the CPU) and the check
is a Python callback in a `cond` (the same errors, a slower compile).
`lx.native_info()` says which is in use and why. A failed build (a compiler was found but did not
produce a library) warns once; a missing compiler does not.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

_SOURCES = tuple(Path(__file__).with_name(f) for f in ("sparse_kernels.cc", "checks.cc"))
# The FFI targets, and the handler symbols in the library they are registered from.
SPMV_TARGET = "linopx_spmv"
CHECK_TARGET = "linopx_check"
_TARGETS = {SPMV_TARGET: "LinopxSpmv", CHECK_TARGET: "LinopxCheck"}
_BUILD_TIMEOUT_SECONDS = 600

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "available": False, "library": None, "reason": ""}


def _disabled_by_env() -> bool:
    return os.environ.get("LINOPX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where built kernels are kept (see the module docstring)."""
    if os.environ.get("LINOPX_CACHE_DIR"):
        return Path(os.environ["LINOPX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "linopx"


def _compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"]) or os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _library_path(compiler: str) -> Path:
    import jaxlib

    h = hashlib.sha256()
    for source in _SOURCES:
        h.update(source.read_bytes())
    for part in (jaxlib.__version__, compiler, platform.machine(), platform.system()):
        h.update(b"\0" + str(part).encode())
    return cache_dir() / f"linopx_kernels-{h.hexdigest()[:16]}.so"


def _build(compiler: str, out: Path) -> None:
    import jax.ffi

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    cmd = [
        compiler,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-w",
        f"-I{jax.ffi.include_dir()}",
        f"-I{_SOURCES[0].parent}",
        # One translation unit that includes every source: the FFI headers, whose parsing is
        # most of the build time, are parsed once.
        "-x",
        "c++",
        "-",
        "-o",
        tmp,
    ]
    unit = "".join(f'#include "{source.name}"\n' for source in _SOURCES)
    try:
        proc = subprocess.run(
            cmd,
            input=unit,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"`{' '.join(cmd[:2])} ...` exited with {proc.returncode}: {last}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> None:
    import jax

    if _disabled_by_env():
        _state["reason"] = "disabled by LINOPX_NATIVE=0"
        return
    compiler = _compiler()
    if compiler is None:
        _state["reason"] = "no C++ compiler found (install one, or set CXX)"
        return
    try:
        path = _library_path(compiler)
        if not path.exists():
            _build(compiler, path)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
    except Exception as e:  # noqa: BLE001 - any failure means: stay in XLA, and say why
        _state["reason"] = f"the build or load failed: {type(e).__name__}: {e}"
        warnings.warn(
            f"linopx could not build its native kernels ({_state['reason']}). Sparse "
            "products run in XLA instead, and `throw=True` checks are Python callbacks: the "
            "same results, slower on the CPU. Set "
            "LINOPX_NATIVE=0 to skip the build; `lx.native_info()` reports the state.",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    _state["available"] = True
    _state["library"] = str(path)
    _state["reason"] = "built and loaded"


def available() -> bool:
    """Whether the native kernels are loaded (building them on the first call)."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _load()
                finally:
                    _state["tried"] = True
    return _state["available"]


def native_info() -> dict[str, Any]:
    """The state of linopx's native CPU kernels (building them if not tried yet).

    **Returns:** a dict with `available` (bool), `library` (the path of the loaded shared
    library, or None), `reason` (why they are or are not in use) and `cache_dir`.
    """
    available()
    return {**{k: v for k, v in _state.items() if k != "tried"}, "cache_dir": str(cache_dir())}
