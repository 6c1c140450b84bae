"""The one error type of the data layer.

`DatasetError` is raised for anything wrong with the files on disk (a missing root, split list, image or label;
a label PNG of the wrong kind; label values out of range; an eval image larger than the padded size). It
subclasses ValueError so callers that already catch bad-input errors keep working, and its message always names
the offending path and, for layout problems, prints the expected directory tree.
"""
from __future__ import annotations

# The void label. The data layer never imports jax-side code (semeda_jax.validation imports jax), so it keeps
# its own copy of the constant; tests check that both agree.
IGNORE_LABEL = 255


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or malformed. The message names the file and what was expected."""
