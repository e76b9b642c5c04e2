"""Build hook: the data path's modules are compiled to C extensions with mypyc.

The package is pure Python and runs as such; compiled, the modules below run the same code
with native attribute access and calls, which cuts their CPU per command by 30-45%
(``bench/corepath.py``; BENCHMARKS.md). mypyc is mypy's own compiler: the code only has to be
type-correct, which ``mypy src`` checks anyway.

``GLUSTER_ISCSI_PURE=1`` skips compiling (also the one hand-written C module, the
completion queue of libgfapi's asynchronous calls, ``backstore/gfapi/_aio.c``). Each extension is optional: without a C compiler or
the Python headers the build warns and the package stays pure Python.

Only modules whose objects live on the per-command path are compiled (the list is
``gluster_iscsi.DATA_PATH_MODULES``): compiling the rest (login, management, CLI) would add
build time and gain nothing measurable.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup


def _data_path_modules() -> list[str]:
    """``gluster_iscsi.DATA_PATH_MODULES``, read without importing the package."""
    import ast

    tree = ast.parse(open("src/gluster_iscsi/__init__.py").read())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id == "DATA_PATH_MODULES":
                names = ast.literal_eval(node.value)
                return [f"src/gluster_iscsi/{n.replace('.', '/')}.py" for n in names]
    raise RuntimeError("DATA_PATH_MODULES not found in src/gluster_iscsi/__init__.py")


HOT_MODULES = _data_path_modules()


def remove_old_builds() -> None:
    """An editable install builds in place: a stale extension would shadow its edited .py."""
    for path in glob.glob("src/gluster_iscsi/**/*.so", recursive=True) + glob.glob("src/*__mypyc*.so"):
        os.unlink(path)


def c_modules() -> list:
    """Hand-written C: the completion queue of libgfapi's asynchronous calls
    (``backstore/gfapi/_aio.c``; without it gfapi calls run on worker threads)."""
    from setuptools import Extension

    return [Extension("gluster_iscsi.backstore.gfapi._aio", ["src/gluster_iscsi/backstore/gfapi/_aio.c"],
                      extra_compile_args=["-O2"], optional=True)]


def ext_modules() -> list:
    remove_old_builds()
    if os.environ.get("GLUSTER_ISCSI_PURE") == "1":
        return []
    c_exts = c_modules()
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("setup.py: mypyc not available, building pure Python")
        return c_exts
    try:
        exts = mypycify(HOT_MODULES, opt_level="3")
    except (Exception, SystemExit) as e:  # mypyc refused a module: say so, stay pure Python
        print(f"setup.py: WARNING: mypyc failed ({e!r}); building pure Python")
        return c_exts
    for ext in exts:
        ext.optional = True  # no compiler: warn, and the .py modules are used
    return exts + c_exts


setup(ext_modules=ext_modules())
