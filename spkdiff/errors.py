"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class SpkdiffError(Exception):
    """A problem the user can fix (bad input, missing file, foreign checkpoint...)."""


class DatasetMissingError(SpkdiffError):
    """A dataset's files are not under the data root and cannot be downloaded."""


class CheckpointError(SpkdiffError):
    """A checkpoint is missing, truncated, corrupt or was not written by spkdiff."""
