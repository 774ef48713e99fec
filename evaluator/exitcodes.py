"""The evaluator's exit codes (`python -m evaluator.score`), torch-free: the host reads them.

The one place they are written; evaluator.score exits with them, sandbox.experiment and
sandbox.bare tell a scored, a rejected and a failed evaluation apart by them.
"""

from __future__ import annotations

EXIT_OK = 0  # scored: score.json has status ok
EXIT_SETUP = 2  # the data or the evaluator's setup failed, not the run: redo it
EXIT_REJECTED = 3  # the model was refused: score.json has status rejected and a fixed reason
EXIT_INTERNAL = 4  # the evaluator itself failed
