"""The project's own errors: input a user can fix (settings, data, checkpoints, model names, servers).

Each subclass also derives from the builtin it specialises (``ValueError``, ``RuntimeError``, ...), so
``except ValueError`` keeps working. The scripts end on a :class:`UserError` with one line naming the
problem and the fix, exit code 2, no traceback (:func:`azgym.cli.run_script`; ``AZGYM_DEBUG=1`` shows it).
"""

from __future__ import annotations


class UserError(Exception):
    """Input the user can fix; its message names the problem and the fix."""
