"""Reading a YAML file of options (``--config``, and recipes later): bounded and one-line errors.

The file is untrusted input. It is read only if it is a small text file, parsed with
PyYAML's safe loader (no Python objects), and the result is walked with a budget
(prunecli.limits) before anything else looks at it: a "billion laughs" file of nested
aliases is refused in milliseconds instead of being expanded by the first error message
that quotes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunecli.errors import UsageError
from prunecli.limits import MAX_CONFIG_BYTES, MAX_CONFIG_VALUES, TooLarge, check_plain


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.line = line


def _loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """The safe loader, refusing a mapping that repeats a key (YAML keeps the last one silently)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _DuplicateKey(str(key)[:60], key_node.start_mark.line + 1)
                if isinstance(key, (str, int, float, bool)):
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml_mapping(path: Path, label: str) -> dict[str, Any]:
    """The mapping in ``path``; `UsageError` starting with ``label`` (e.g. ``--config x.yaml``) otherwise."""
    import yaml

    _UniqueKeyLoader = _loader()
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{label}: is a folder, not a YAML file")
    if not path.is_file():
        raise UsageError(f"{label}: no such file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UsageError(f"{label}: {size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,}")
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{label}: cannot read: {(e.strerror or str(e)).lower()}") from None
    if b"\x00" in raw:
        raise UsageError(f"{label}: not a text file (binary data)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{label}: not a text file (not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise UsageError(f"{label}: key {str(e)!r} is given twice (line {e.line}); which one was meant?") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{label}: not valid YAML{where}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    except ValueError as e:  # int() beyond Python's digit limit, and similar
        raise UsageError(f"{label}: a value YAML cannot read: {str(e).splitlines()[0][:120]}") from None
    except RecursionError:
        raise UsageError(f"{label}: nested too deeply") from None
    try:
        check_plain(data, max_values=MAX_CONFIG_VALUES)
    except TooLarge as e:
        raise UsageError(f"{label}: refused: {e} (YAML aliases?)") from None
    except TypeError as e:
        raise UsageError(f"{label}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{label}: expected a mapping of option names to values, got {type(data).__name__}")
    return data
