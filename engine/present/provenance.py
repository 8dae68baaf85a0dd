"""What every output says about where its numbers come from: SIMULATED on a simulated run, and the paper's column.

"Is this run simulated" is decided in one place, engine.run.record.is_simulated; here are
the words every output uses for it (terminal, CSV, LaTeX, HTML), and for the paper's
single-image numbers: hidden on a simulated run (they come from SAM3 on a real image, so
they say nothing about simulated numbers), and on a real run labelled as what they are,
one image clustered with one KMeans seed.
"""

from __future__ import annotations

from engine.run.record import is_simulated

SIMULATED_LINE = ("SIMULATED: these numbers come from the simulated SAM3 source (features and decoder outputs "
                  "derived from the ground truth), not from SAM3; they test the pipeline and say nothing about SAM3.")
SIMULATED_CSV = "SIMULATED"  # the value of the `source` column of every CSV of a simulated run
REAL_CSV = "sam3"
PAPER_HIDDEN = ("paper (one image, one seed): left out because this run is SIMULATED; the paper's numbers come from "
                "SAM3 on a real image and do not compare with simulated ones.")
PAPER_LEGEND = "paper (one image, one seed): flip, cos dist, effective tokens, masks"
PAPER_SEED = ("The paper's numbers are one image clustered with one KMeans seed: a single draw, where the columns "
              "beside it are medians over images.")


FEW_TOKENS = 50  # effective tokens under which a share is marked "too few tokens" (one token moves it by 2% or more)


def run_is_simulated(run: dict) -> bool:
    """run.json's answer (engine.run.record.is_simulated); an empty record (no run.json) is not simulated."""
    return bool(run) and is_simulated(run)


def csv_source(simulated: bool) -> str:
    return SIMULATED_CSV if simulated else REAL_CSV
