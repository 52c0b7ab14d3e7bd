"""Build the native hot path: every ``ext/*.pyx`` becomes an extension module of ``engine``.

The kernels link the system xxHash library (Debian: ``libxxhash-dev``). Its headers and
library are looked up before anything is compiled so that a missing package ends the build
with one line that names it, instead of a page of compiler errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
MISSING_XXHASH = (
    "cinderblock: xxHash development files not found (xxhash.h / libxxhash). "
    "Install them with: apt-get install libxxhash-dev"
)


def _pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(
            ["pkg-config", *args, "libxxhash"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


def xxhash_paths() -> tuple[list[str], list[str]]:
    """Return (include_dirs, library_dirs) for xxHash, or exit with a one-line hint."""
    prefix = os.environ.get("XXHASH_PREFIX")
    include_dirs = [f[2:] for f in _pkg_config("--cflags-only-I")]
    library_dirs = [f[2:] for f in _pkg_config("--libs-only-L")]
    if prefix:
        include_dirs.insert(0, os.path.join(prefix, "include"))
        library_dirs.insert(0, os.path.join(prefix, "lib"))
    multiarch = subprocess.run(
        ["gcc", "-print-multiarch"], capture_output=True, text=True
    ).stdout.strip()
    search_inc = include_dirs + ["/usr/local/include", "/usr/include"]
    search_lib = library_dirs + [
        "/usr/local/lib",
        f"/usr/lib/{multiarch}" if multiarch else "/usr/lib",
        "/usr/lib",
        "/usr/lib64",
    ]
    has_header = any(Path(d, "xxhash.h").is_file() for d in search_inc)
    has_lib = any(
        Path(d, name).exists() for d in search_lib for name in ("libxxhash.so", "libxxhash.a")
    )
    if not (has_header and has_lib):
        sys.exit(MISSING_XXHASH)
    return include_dirs, library_dirs


def extensions() -> list[Extension]:
    import numpy
    from Cython.Build import cythonize

    include_dirs, library_dirs = xxhash_paths()
    modules = [
        Extension(
            f"engine.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=["ext", numpy.get_include(), *include_dirs],
            library_dirs=library_dirs,
            libraries=["xxhash"],
            extra_compile_args=["-O3"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for pyx in sorted((HERE / "ext").glob("*.pyx"))
    ]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())
