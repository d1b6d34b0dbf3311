"""What clients show, computed from domain events and tool calls: pure functions, no I/O.

* :mod:`.diff`: unified diffs of what Write/Edit/MultiEdit propose (before a permission answer)
  or did (from the CLI's ``tool_use_result``); callers pass the file contents in.
* :mod:`.tools`: a typed detail per tool, one-line titles, permission summaries and labels for the
  CLI's permission suggestions.
* :mod:`.watch`: the compact, WatchCode-compatible feed for watches and other small screens.
"""
