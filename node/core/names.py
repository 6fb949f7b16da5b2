"""The rule for names in specs and commands (DAG, task, pool, queue, connection ids).

Its own module so that every layer that checks a name (core.spec, core.state, the
task kinds in raftflow.kinds) imports one rule without importing each other. Pure.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")  # use fullmatch
ID_RULE = "1 to 250 characters from A-Z a-z 0-9 _ . - (not starting with . or -)"

# A callable named in a spec ("package.module:function", or "__dag_file__:NAME"): a python
# task's python_callable, a callback.
CALLABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
