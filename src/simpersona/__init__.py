"""SimPersona: discrete buyer personas from raw clickstreams, and agents that shop like them.

Nothing happens at import time: stages are imported by the CLI when their command runs.
"""

__version__ = "0.1.0"
