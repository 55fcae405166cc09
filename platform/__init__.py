"""The study platform, which also *is* Python's standard-library ``platform`` module.

Our package name shadows the stdlib module that torch, ray and mlflow call
(``platform.system()``, ``platform.python_version()`` ...). So that every library keeps
working when this package is the one imported, we execute the stdlib ``platform.py``
source inside this package's namespace and then restore the package's own identity.
Never add a submodule named after a stdlib ``platform`` attribute (``version``,
``system``, ``node``, ``machine``, ``release``, ``uname``, ``platform``, ...).
"""

import os as _os
import sysconfig as _sysconfig


def _load_stdlib_platform(namespace: dict) -> None:
    """Run the stdlib platform.py source in ``namespace``, keeping our package identity."""
    path = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")
    keep = {k: namespace[k] for k in ("__name__", "__path__", "__spec__", "__loader__",
                                      "__file__", "__package__", "__doc__") if k in namespace}
    with open(path, encoding="utf-8") as fh:
        code = compile(fh.read(), path, "exec")
    exec(code, namespace)  # noqa: S102 - trusted stdlib source
    namespace.update(keep)
    namespace["_STDLIB_PLATFORM_FILE"] = path


_load_stdlib_platform(globals())
del _load_stdlib_platform
