"""jobherald: watches long-running cloud jobs and tells people when they finish or fail."""

__version__ = "0.1.0"
